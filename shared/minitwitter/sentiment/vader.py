"""VADER: the embedded, offline backend (a lexicon and rules tuned for social-media text).

Thresholds are the ones the VADER authors document for the ``compound`` score:
``compound >= 0.05`` is positive, ``compound <= -0.05`` is negative, anything between is neutral.
The stored score is the compound value itself (already in ``[-1, 1]``).
"""

from __future__ import annotations

import threading
from importlib.metadata import version

from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from .base import BackendError, Verdict

POSITIVE_THRESHOLD = 0.05
NEGATIVE_THRESHOLD = -0.05
MODEL = f"vader-{version('vaderSentiment')}"

_lock = threading.Lock()
_analyzer: SentimentIntensityAnalyzer | None = None


def analyzer() -> SentimentIntensityAnalyzer:
    """The process-wide analyzer (loading the lexicon takes ~100 ms, so it is done once)."""
    global _analyzer
    if _analyzer is None:
        with _lock:
            if _analyzer is None:
                _analyzer = SentimentIntensityAnalyzer()
    return _analyzer


def label_for(compound: float) -> str:
    """The label for a VADER compound score, by the documented thresholds."""
    if compound >= POSITIVE_THRESHOLD:
        return "positive"
    if compound <= NEGATIVE_THRESHOLD:
        return "negative"
    return "neutral"


class VaderBackend:
    """Classifies any number of texts in one call; never fails for a string input."""

    name = "vader"
    model = MODEL
    cacheable = False  # classifying is cheaper than a Redis round trip

    def __init__(self, batch_size: int = 256) -> None:
        self.batch_size = max(1, batch_size)

    def classify(self, texts: list[str]) -> list[Verdict | BackendError]:
        """One verdict per text (VADER cannot fail on a string)."""
        scorer = analyzer()
        out: list[Verdict | BackendError] = []
        for text in texts:
            compound = float(scorer.polarity_scores(text)["compound"])
            out.append(Verdict(label_for(compound), compound, self.name, self.model))
        return out
