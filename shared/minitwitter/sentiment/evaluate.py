"""Evaluate a backend on a labelled file: accuracy, macro-averaged recall, confusion matrix.

Usage::

    python -m minitwitter.sentiment.evaluate FILE --backend vader|ollama|auto [--model M]
        [--host URL] [--limit N]

``FILE`` has one ``text<TAB>label`` per line; labels are ``positive``/``neutral``/``negative``
or TweetEval's numbers (``0`` negative, ``1`` neutral, ``2`` positive). Blank lines, ``#``
comments and a ``text<TAB>label`` header are skipped. The project's own small sample is
``minitwitter/sentiment/data/sample.tsv``.

On the public TweetEval sentiment benchmark (https://github.com/cardiffnlp/tweeteval,
``datasets/sentiment/test_text.txt`` and ``test_labels.txt``, 12,284 tweets)::

    paste datasets/sentiment/test_text.txt datasets/sentiment/test_labels.txt > tweeteval.tsv
    python -m minitwitter.sentiment.evaluate tweeteval.tsv --backend ollama --model qwen2.5:1.5b

TweetEval's official sentiment metric is macro-averaged recall. An item the backend could not
classify counts as wrong (it is reported, never turned into a label).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ..config import load_config, set_config
from . import classify, current_backend
from .base import LABELS, BackendError

NUMERIC_LABELS = {"0": "negative", "1": "neutral", "2": "positive"}
CHUNK = 64


@dataclass
class Report:
    accuracy: float
    macro_recall: float
    recall: dict[str, float]
    confusion: dict[str, dict[str, int]]  # gold -> predicted ("error" when none) -> count


def read_samples(path: Path) -> list[tuple[str, str]]:
    """(text, label) pairs of a ``text<TAB>label`` file; raises ValueError on a bad line."""
    samples = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.startswith("#") or line.strip().lower() == "text\tlabel":
            continue
        text, sep, label = line.rpartition("\t")
        label = NUMERIC_LABELS.get(label.strip(), label.strip().lower())
        if not sep or not text.strip() or label not in LABELS:
            raise ValueError(f"{path}:{number}: expected text<TAB>label with a known label")
        samples.append((text, label))
    return samples


def score(gold: list[str], predicted: list[str]) -> Report:
    """Accuracy, per-class and macro recall and the confusion matrix."""
    confusion = {g: {p: 0 for p in (*LABELS, "error")} for g in LABELS}
    for g, p in zip(gold, predicted, strict=True):
        confusion[g][p if p in LABELS else "error"] += 1
    recall = {g: (confusion[g][g] / total if (total := sum(confusion[g].values())) else 0.0)
              for g in LABELS}
    present = [g for g in LABELS if sum(confusion[g].values())]
    correct = sum(confusion[g][g] for g in LABELS)
    return Report(accuracy=correct / len(gold) if gold else 0.0,
                  macro_recall=sum(recall[g] for g in present) / len(present) if present else 0.0,
                  recall=recall, confusion=confusion)


def render(report: Report) -> str:
    """The report as printed."""
    lines = [f"accuracy: {report.accuracy:.3f}", f"macro recall: {report.macro_recall:.3f}",
             "recall: " + "  ".join(f"{g} {report.recall[g]:.3f}" for g in LABELS),
             "confusion matrix (rows = gold, columns = predicted):",
             f"{'':>10}" + "".join(f"{p:>10}" for p in (*LABELS, "error"))]
    for g in LABELS:
        lines.append(f"{g:>10}" + "".join(f"{report.confusion[g][p]:>10}" for p in (*LABELS, "error")))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("file", type=Path)
    parser.add_argument("--backend", choices=["vader", "ollama", "auto"], default="vader")
    parser.add_argument("--model", help="Ollama model (default OLLAMA_MODEL)")
    parser.add_argument("--host", help="Ollama host (default OLLAMA_HOST)")
    parser.add_argument("--limit", type=int, help="evaluate only the first N items")
    args = parser.parse_args(argv)
    samples = read_samples(args.file)[: args.limit]
    cfg = load_config()
    cfg = cfg.with_overrides(sentiment_backend=args.backend, ollama_model=args.model or cfg.ollama_model,
                             ollama_host=args.host or cfg.ollama_host)
    set_config(cfg)
    backend = current_backend(cfg)
    predicted: list[str] = []
    errors = 0
    started = time.perf_counter()
    texts = [t for t, _ in samples]
    for i in range(0, len(texts), CHUNK):
        for outcome in classify(backend, texts[i:i + CHUNK]):
            if isinstance(outcome, BackendError):
                errors += 1
                predicted.append("error")
            else:
                predicted.append(outcome.label)
    seconds = time.perf_counter() - started
    print(f"backend: {backend.name} ({backend.model})  items: {len(samples)}  errors: {errors}"
          f"  seconds: {seconds:.2f}")
    print(render(score([label for _, label in samples], predicted)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
