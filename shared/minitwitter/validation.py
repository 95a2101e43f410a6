"""Validating JSON request bodies: known fields only, typed, bounded, every error collected.

Usage::

    from minitwitter.validation import Str, fields

    data = fields(body, {
        "username": Str(min=3, max=30, pattern=USERNAME_RE, lower=True),
        "password": Str(min=8, max=128, strip=False),
        "display_name": Str(max=50, required=False),
    })

``fields`` returns a new dict holding only the fields present in ``body`` (after normalisation:
stripping, lower-casing) and raises :class:`errors.ValidationFailed` whose ``details`` map each
offending field to a list of messages, e.g. ``{"username": ["is too short (minimum 3)"],
"color": ["is not a known field"]}``. Lengths count Unicode code points (``len(str)``), which is
how PostgreSQL's ``char_length`` counts them too.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from . import errors

UNKNOWN_FIELD = "is not a known field"
REQUIRED = "is required"


@dataclass(frozen=True)
class Field:
    """Base rule: whether the field must be present and whether ``null`` is accepted."""

    required: bool = True
    nullable: bool = False

    def check(self, value: Any) -> tuple[Any, list[str]]:
        """Return the normalised value and the list of problems (empty when valid)."""
        raise NotImplementedError


@dataclass(frozen=True)
class Str(Field):
    """A string of ``min``..``max`` code points (after ``strip``), optionally matching ``pattern``.

    ``strip`` trims surrounding whitespace before the length check (not for passwords);
    ``lower`` lower-cases before the pattern check (usernames are case-insensitive).
    """

    min: int = 0
    max: int | None = None
    pattern: str | None = None
    pattern_message: str = "has an invalid format"
    strip: bool = True
    lower: bool = False

    def check(self, value: Any) -> tuple[Any, list[str]]:
        if not isinstance(value, str):
            return value, ["must be a string"]
        if "\x00" in value:
            return value, ["must not contain NUL characters"]
        if self.strip:
            value = value.strip()
        if self.lower:
            value = value.lower()
        problems: list[str] = []
        if len(value) < self.min:
            problems.append("must not be blank" if self.min == 1 and not value
                            else f"is too short (minimum {self.min} characters)")
        if self.max is not None and len(value) > self.max:
            problems.append(f"is too long (maximum {self.max} characters)")
        if self.pattern and not problems and not re.fullmatch(self.pattern, value):
            problems.append(self.pattern_message)
        return value, problems


@dataclass(frozen=True)
class Int(Field):
    """An integer (JSON booleans are refused) within ``min``..``max``."""

    min: int | None = None
    max: int | None = None

    def check(self, value: Any) -> tuple[Any, list[str]]:
        if isinstance(value, bool) or not isinstance(value, int):
            return value, ["must be an integer"]
        if self.min is not None and value < self.min:
            return value, [f"must be at least {self.min}"]
        if self.max is not None and value > self.max:
            return value, [f"must be at most {self.max}"]
        return value, []


@dataclass(frozen=True)
class Bool(Field):
    """A JSON boolean."""

    def check(self, value: Any) -> tuple[Any, list[str]]:
        return value, ([] if isinstance(value, bool) else ["must be a boolean"])


def fields(body: Mapping[str, Any], schema: Mapping[str, Field], *,
           allow_unknown: bool = False) -> dict[str, Any]:
    """Validate ``body`` against ``schema``; the normalised, present fields, or ValidationFailed."""
    problems: dict[str, list[str]] = {}
    clean: dict[str, Any] = {}
    if not allow_unknown:
        for name in body:
            if name not in schema:
                problems[str(name)] = [UNKNOWN_FIELD]
    for name, rule in schema.items():
        if name not in body:
            if rule.required:
                problems[name] = [REQUIRED]
            continue
        value = body[name]
        if value is None:
            if rule.nullable:
                clean[name] = None
            else:
                problems[name] = ["must not be null"]
            continue
        value, messages = rule.check(value)
        if messages:
            problems[name] = messages
        else:
            clean[name] = value
    if problems:
        raise errors.ValidationFailed(details=problems)
    return clean


def require_some(data: Mapping[str, Any], names: tuple[str, ...]) -> None:
    """422 unless at least one of ``names`` is present (for PATCH bodies)."""
    if not any(name in data for name in names):
        raise errors.ValidationFailed(
            "nothing to change", {"body": [f"must contain at least one of: {', '.join(names)}"]})
