"""Evaluate a backend on a labelled file: accuracy, macro-averaged recall, confusion matrix.

Usage::

    python -m minitwitter.sentiment.evaluate FILE --backend vader|ollama|auto [--format tsv|jsonl]
        [--model M] [--host URL] [--limit N] [--output PREDICTIONS.jsonl]

``FILE`` is one of two explicit formats (``--format``, else from the suffix: ``.tsv``, or
``.jsonl``/``.ndjson``):

* **TSV**: a header row ``text<TAB>label``, then one ``text<TAB>label`` per line (the label is
  after the last tab, so a text may hold tabs);
* **JSONL**: one ``{"text": ..., "label": ...}`` object per line.

Every line after the header is an item: nothing is taken for a comment (a tweet may start with
``#``), and lines end only at ``\\n`` (``\\r\\n`` too), so U+2028, U+0085, form feeds or a lone
``\\r`` inside a text stay in it. A blank or malformed line is an error naming its line, never
skipped. Labels are ``positive``/``neutral``/``negative`` or TweetEval's numbers (``0``
negative, ``1`` neutral, ``2`` positive). The project's own small sample (written for the tests)
is ``minitwitter/sentiment/data/sample.tsv``.

On the public TweetEval sentiment benchmark (https://github.com/cardiffnlp/tweeteval,
``datasets/sentiment/test_text.txt`` and ``test_labels.txt``, 12,284 tweets)::

    T=tweeteval/datasets/sentiment
    (printf 'text\\tlabel\\n'; paste $T/test_text.txt $T/test_labels.txt) > tweeteval.tsv
    python -m minitwitter.sentiment.evaluate tweeteval.tsv --backend ollama --model qwen2.5:1.5b

TweetEval's official sentiment metric is macro-averaged recall. The run prints items per second;
``--output`` writes one JSON line per item (text, gold, predicted, score, error). An item the
backend could not classify counts as wrong and its reason is reported; the exit status is then
1, and 2 when the backend is unavailable before the run (Ollama not answering or without the
model) or the file is malformed. An evaluation writes nothing to the application's stores: the
backend is called directly, without the Redis verdict cache.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import load_config
from . import current_backend
from .base import LABELS, BackendError, Verdict
from .ollama_backend import OllamaBackend

NUMERIC_LABELS = {"0": "negative", "1": "neutral", "2": "positive"}
TSV_HEADER = "text\tlabel"
FORMATS = {".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
CHUNK = 64
#: Exit statuses: some items could not be classified / the backend or the file is unusable.
ITEMS_FAILED, UNUSABLE = 1, 2


class InputError(ValueError):
    """The file is not in the format it claims (the message names the line)."""


@dataclass
class Report:
    accuracy: float
    macro_recall: float
    recall: dict[str, float]
    confusion: dict[str, dict[str, int]]  # gold -> predicted ("error" when none) -> count


def _label(raw: Any, where: str) -> str:
    label = NUMERIC_LABELS.get(str(raw).strip(), str(raw).strip().lower())
    if label not in LABELS:
        raise InputError(f"{where}: unknown label {raw!r} (positive, neutral, negative, 0, 1 or 2)")
    return label


def _lines(path: Path) -> list[str]:
    """The file's lines, split at ``\\n`` only (``str.splitlines`` also splits at U+2028, U+0085,
    form feeds and lone carriage returns, which tweets contain); a final newline ends the last."""
    text = path.read_bytes().decode("utf-8")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def read_samples(path: Path, fmt: str | None = None) -> list[tuple[str, str]]:
    """(text, label) pairs of a TSV (with its header) or JSONL file; InputError on a bad line."""
    fmt = fmt or FORMATS.get(path.suffix.lower())
    if fmt not in ("tsv", "jsonl"):
        raise InputError(f"{path}: say --format tsv or --format jsonl (the suffix does not tell)")
    lines = _lines(path)
    samples: list[tuple[str, str]] = []
    if fmt == "tsv":
        if not lines or lines[0] != TSV_HEADER:
            raise InputError(f"{path}:1: expected the header row text<TAB>label")
        for number, line in enumerate(lines[1:], 2):
            text, sep, label = line.rpartition("\t")
            if not sep or not text.strip():
                raise InputError(f"{path}:{number}: expected text<TAB>label")
            samples.append((text, _label(label, f"{path}:{number}")))
        return samples
    for number, line in enumerate(lines, 1):
        try:
            item = json.loads(line)
        except ValueError:
            raise InputError(f"{path}:{number}: not a JSON object") from None
        if not isinstance(item, dict) or not isinstance(item.get("text"), str) or not item["text"].strip():
            raise InputError(f"{path}:{number}: expected {{\"text\": ..., \"label\": ...}}")
        samples.append((item["text"], _label(item.get("label"), f"{path}:{number}")))
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


def _per_item(samples: Sequence[tuple[str, str]], outcomes: Sequence[Verdict | BackendError]) -> str:
    """One JSON line per item, in the file's order."""
    rows = []
    for number, ((text, gold), outcome) in enumerate(zip(samples, outcomes, strict=True), 1):
        row: dict[str, Any] = {"item": number, "text": text, "gold": gold}
        if isinstance(outcome, Verdict):
            row.update(predicted=outcome.label, score=outcome.score, error=None)
        else:
            row.update(predicted=None, score=None, error=outcome.reason)
        rows.append(json.dumps(row, ensure_ascii=False))
    return "".join(row + "\n" for row in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("file", type=Path)
    parser.add_argument("--format", choices=["tsv", "jsonl"], help="input format (default: from the suffix)")
    parser.add_argument("--backend", choices=["vader", "ollama", "auto"], default="vader")
    parser.add_argument("--model", help="Ollama model (default OLLAMA_MODEL)")
    parser.add_argument("--host", help="Ollama host (default OLLAMA_HOST)")
    parser.add_argument("--limit", type=int, help="evaluate only the first N items")
    parser.add_argument("--output", type=Path, help="write one JSON line per item here ('-': stdout)")
    args = parser.parse_args(argv)
    try:
        samples = read_samples(args.file, args.format)[: args.limit]
    except (InputError, OSError, UnicodeDecodeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return UNUSABLE
    cfg = load_config()
    cfg = cfg.with_overrides(sentiment_backend=args.backend, ollama_model=args.model or cfg.ollama_model,
                             ollama_host=args.host or cfg.ollama_host)
    backend = current_backend(cfg)
    if isinstance(backend, OllamaBackend) and not backend.has_model():
        print(f"error: the backend is unavailable: Ollama at {cfg.ollama_host} does not answer or does"
              f" not have the model {cfg.ollama_model} (ollama pull {cfg.ollama_model})", file=sys.stderr)
        return UNUSABLE
    if args.backend == "auto" and backend.name != "ollama":
        print(f"note: Ollama at {cfg.ollama_host} with {cfg.ollama_model} is unavailable: auto uses "
              f"{backend.name}", file=sys.stderr)
    outcomes: list[Verdict | BackendError] = []
    started = time.perf_counter()
    texts = [t for t, _ in samples]
    for i in range(0, len(texts), CHUNK):
        # The backend itself, not sentiment.classify: no verdict cache read or written.
        outcomes += backend.classify(texts[i:i + CHUNK])
    seconds = time.perf_counter() - started
    failures = Counter(o.reason for o in outcomes if isinstance(o, BackendError))
    predicted = [o.label if isinstance(o, Verdict) else "error" for o in outcomes]
    print(f"backend: {backend.name} ({backend.model})  items: {len(samples)}  errors: {sum(failures.values())}"
          f"  seconds: {seconds:.2f}  items/s: {len(samples) / seconds if seconds else 0.0:.1f}")
    print(render(score([label for _, label in samples], predicted)))
    if args.output is not None:
        lines = _per_item(samples, outcomes)
        if str(args.output) == "-":
            sys.stdout.write(lines)
        else:
            args.output.write_text(lines, encoding="utf-8")
    for reason, count in failures.most_common():
        print(f"error: {count} item(s) not classified: {reason}", file=sys.stderr)
    return ITEMS_FAILED if failures else 0


if __name__ == "__main__":
    sys.exit(main())
