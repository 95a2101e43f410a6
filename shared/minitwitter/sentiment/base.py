"""The one small interface every sentiment backend implements, and its result and error types.

A backend turns texts into one outcome per text, in order: a :class:`Verdict`, or, when it could
not classify that text, a :class:`BackendError` (it never invents a label), whose ``retryable`` flag tells
the caller whether trying again later can help (timeouts, connection errors, 5xx) or not (a
missing model). Scores are polarity values clamped to ``[-1, 1]`` (negative below zero).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

LABELS = ("positive", "neutral", "negative")


@dataclass(frozen=True)
class Verdict:
    """One classification: label, polarity score and who produced it."""

    label: str
    score: float
    backend: str
    model: str

    def as_json(self) -> dict[str, object]:
        """The API's sentiment object for a finished verdict."""
        return {"status": "done", "label": self.label, "score": self.score, "model": self.model}


class BackendError(Exception):
    """A backend could not classify; ``retryable`` says whether a later attempt may succeed."""

    def __init__(self, reason: str, *, retryable: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable


class ModelMissing(BackendError):
    """The configured model is not available on the server (not retried)."""

    def __init__(self, model: str) -> None:
        super().__init__(f"model {model} is not available", retryable=False)


class Backend(Protocol):
    """What the worker and ``analyze-sentiment`` need from a backend."""

    name: str
    model: str
    #: Items classified together in one call when the worker batches (1 = one per request).
    batch_size: int
    #: True when verdicts are worth caching in Redis (an LLM call costs far more than a lookup).
    cacheable: bool

    def classify(self, texts: list[str]) -> list[Verdict | BackendError]:
        """One outcome per text, in order: its verdict or the error that prevented it."""
        ...


def clamp_score(value: object) -> float:
    """A finite float in [-1, 1]; raises ValueError for anything else.

    JSON-schema ``minimum``/``maximum`` are not enforced by Ollama for decimals, so the range is
    enforced here.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError("score must be a number")  # noqa: TRY004 - a validation failure, not a type bug
    score = float(value)
    if not math.isfinite(score):
        raise ValueError("score must be finite")
    return max(-1.0, min(1.0, score))
