"""How values look in API JSON: ids are strings, timestamps RFC 3339 UTC with ``Z``.

``iso(ts)`` → ``"2026-11-30T00:36:19.123Z"`` (millisecond precision, as Mastodon writes them),
``ident(42)`` → ``"42"``; both pass ``None`` through. ``parse_id`` turns a path or cursor segment
back into a positive integer (None when it is not one), so handlers never ``int()`` user input.
"""

from __future__ import annotations

from datetime import UTC, datetime

#: bigserial's upper bound; larger numbers cannot name a row and must not reach PostgreSQL.
MAX_ID = 2**63 - 1


def iso(ts: datetime | None) -> str | None:
    """RFC 3339 UTC timestamp with millisecond precision and ``Z`` (naive datetimes are UTC)."""
    if ts is None:
        return None
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    ts = ts.astimezone(UTC)
    return ts.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}Z"


def ident(value: int | str | None) -> str | None:
    """An id as the API shows it: a decimal string."""
    return None if value is None else str(value)


def parse_id(value: str | None) -> int | None:
    """A positive 64-bit id from text (ASCII digits only), or None."""
    if not value or not value.isascii() or not value.isdigit() or len(value) > 19:
        return None
    number = int(value)
    return number if 0 < number <= MAX_ID else None
