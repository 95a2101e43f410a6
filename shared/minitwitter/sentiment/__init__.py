"""Sentiment analysis: backend selection, the verdict cache and synchronous classification.

``SENTIMENT_BACKEND`` picks the backend: ``vader`` (embedded, offline), ``ollama`` (a local LLM)
or ``auto`` (the default): Ollama when it answers ``/api/tags`` and lists ``OLLAMA_MODEL``,
otherwise VADER. ``auto`` checks at start and again every ``OLLAMA_CHECK_INTERVAL`` seconds (and
immediately after Ollama fails), logs every switch and exposes the active backend as the
``minitwitter_sentiment_backend_active`` gauge. Every verdict records the backend and model that
produced it. Verdicts of cacheable backends (Ollama) are cached in Redis under a hash of
backend, model, prompt version and text.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from typing import Any

from .. import cache, errors, metrics
from ..config import Config, get_config
from .base import LABELS, Backend, BackendError, ModelMissing, Verdict
from .ollama_backend import PROMPT_VERSION, OllamaBackend
from .vader import VaderBackend

__all__ = ["LABELS", "Backend", "BackendError", "ModelMissing", "Verdict", "analyze", "classify",
           "current_backend", "fallback_backend", "report_failure"]

log = logging.getLogger(__name__)

VERDICT_TTL_SECONDS = 7 * 24 * 3600
MAX_TEXTS = 32

_lock = threading.Lock()
_state: dict[str, object] = {"key": None, "ollama": None, "vader": None, "choice": None, "checked": 0.0}


def _backends(cfg: Config) -> tuple[OllamaBackend, VaderBackend]:
    key = (cfg.ollama_host, cfg.ollama_model, cfg.ollama_timeout, cfg.ollama_keep_alive,
           cfg.ollama_batch_size, cfg.ollama_parallel, cfg.vader_batch_size)
    with _lock:
        if _state["key"] != key:
            _state.update(key=key, choice=None, checked=0.0, vader=VaderBackend(cfg.vader_batch_size),
                          ollama=OllamaBackend(cfg.ollama_host, cfg.ollama_model,
                                               timeout=cfg.ollama_timeout,
                                               keep_alive=cfg.ollama_keep_alive,
                                               batch_size=cfg.ollama_batch_size,
                                               parallel=cfg.ollama_parallel))
        return _state["ollama"], _state["vader"]  # type: ignore[return-value]


def _announce(backend: Backend) -> None:
    previous = _state.get("choice")
    _state["choice"] = backend.name
    _state["checked"] = time.monotonic()
    for name in ("ollama", "vader"):
        metrics.SENTIMENT_BACKEND_UP.labels(name).set(1 if name == backend.name else 0)
    if previous != backend.name:
        log.log(logging.WARNING if previous else logging.INFO, "sentiment backend selected",
                    extra={"backend": backend.name, "model": backend.model, "previous": previous})


def current_backend(config: Config | None = None, *, recheck: bool = False) -> Backend:
    """The backend to use now (``auto`` re-checks Ollama's ``/api/tags`` periodically)."""
    cfg = config or get_config()
    ollama_backend: Backend
    vader_backend: Backend
    ollama_backend, vader_backend = _backends(cfg)
    if cfg.sentiment_backend == "vader":
        chosen: Backend = vader_backend
    elif cfg.sentiment_backend == "ollama":
        chosen = ollama_backend
    else:
        stale = time.monotonic() - float(_state["checked"]) >= cfg.ollama_check_interval  # type: ignore[arg-type]
        if _state["choice"] is None or stale or recheck:
            chosen = ollama_backend if ollama_backend.has_model() else vader_backend
        else:
            chosen = ollama_backend if _state["choice"] == "ollama" else vader_backend
    if _state["choice"] != chosen.name or cfg.sentiment_backend != "auto":
        _announce(chosen)
    return chosen


def report_failure(config: Config | None = None) -> Backend:
    """After Ollama failed: re-check now and return the backend to use instead."""
    return current_backend(config, recheck=True)


def fallback_backend(config: Config | None = None) -> Backend | None:
    """VADER when ``SENTIMENT_FALLBACK=vader``, else None (failures stay failures)."""
    cfg = config or get_config()
    return _backends(cfg)[1] if cfg.sentiment_fallback == "vader" else None


def verdict_key(backend: Backend, text: str) -> str:
    """Redis key of a cached verdict: hash of backend, model, prompt version and text."""
    digest = hashlib.sha256(f"{backend.name}\x1f{backend.model}\x1f{PROMPT_VERSION}\x1f{text}"
                            .encode()).hexdigest()
    return f"sentiment:verdict:{digest}"


def classify(backend: Backend, texts: list[str]) -> list[Verdict | BackendError]:
    """Classify through ``backend``, using and filling the verdict cache when it is worth it."""
    if not texts:
        return []
    results: list[Verdict | BackendError | None] = [None] * len(texts)
    keys: list[str] = []
    if backend.cacheable:
        keys = [verdict_key(backend, t) for t in texts]
        missing: list[Any] = [None] * len(keys)
        cached: list[Any] = cache.soft(lambda r: list(r.mget(keys)), missing)
        for i, raw in enumerate(cached):
            if raw:
                label, score = json.loads(raw)
                results[i] = Verdict(label, float(score), backend.name, backend.model)
        hits = sum(1 for r in results if r is not None)
        if hits:
            metrics.SENTIMENT_CACHE.labels("hit").inc(hits)
        if len(texts) - hits:
            metrics.SENTIMENT_CACHE.labels("miss").inc(len(texts) - hits)
    todo = [i for i, r in enumerate(results) if r is None]
    if todo:
        started = time.perf_counter()
        fresh = backend.classify([texts[i] for i in todo])
        metrics.SENTIMENT_SECONDS.labels(backend.name).observe(time.perf_counter() - started)
        metrics.SENTIMENT_BATCH.labels(backend.name).observe(len(todo))
        to_store: dict[str, str] = {}
        for i, outcome in zip(todo, fresh, strict=True):
            results[i] = outcome
            if backend.cacheable and isinstance(outcome, Verdict):
                to_store[keys[i]] = json.dumps([outcome.label, outcome.score])
        if to_store:
            def store(r: object) -> None:
                pipe = r.pipeline(transaction=False)  # type: ignore[attr-defined]
                for key, value in to_store.items():
                    pipe.set(key, value, ex=VERDICT_TTL_SECONDS)
                pipe.execute()
            cache.soft(store, None)
    return [r for r in results if r is not None]


def analyze(texts: list[str], config: Config | None = None) -> list[Verdict]:
    """Classify texts synchronously; raises DependencyUnavailable when no backend can.

    In ``auto`` mode an Ollama failure triggers an immediate re-check and VADER takes over; with
    ``SENTIMENT_FALLBACK=vader`` VADER answers for the items Ollama could not classify.
    """
    cfg = config or get_config()
    backend = current_backend(cfg)
    outcomes = classify(backend, texts)
    failed = [i for i, o in enumerate(outcomes) if isinstance(o, BackendError)]
    if failed and backend.name == "ollama":
        alternative = report_failure(cfg) if cfg.sentiment_backend == "auto" else None
        if alternative is None or alternative.name == "ollama":
            alternative = fallback_backend(cfg)
        if alternative is not None and alternative.name != "ollama":
            redo = classify(alternative, [texts[i] for i in failed])
            for i, outcome in zip(failed, redo, strict=True):
                outcomes[i] = outcome
    verdicts: list[Verdict] = []
    for outcome in outcomes:
        if isinstance(outcome, BackendError):
            raise errors.DependencyUnavailable("sentiment analysis is unavailable",
                                               {"reason": outcome.reason})
        verdicts.append(outcome)
    return verdicts


MAX_TEXT_CHARS = 5000


def parse_texts(body: dict[str, object]) -> tuple[list[str], bool]:
    """``{"text": ...}`` or ``{"texts": [...]}`` → (texts, single); raises ValidationFailed."""
    unknown = sorted(set(body) - {"text", "texts"})
    if unknown:
        raise errors.ValidationFailed(details={name: ["unknown field"] for name in unknown})
    if ("text" in body) == ("texts" in body):
        raise errors.ValidationFailed(details={"text": ["give either text or texts"]})
    single = "text" in body
    field = "text" if single else "texts"
    raw = [body["text"]] if single else body["texts"]
    if not isinstance(raw, list) or not 1 <= len(raw) <= MAX_TEXTS:
        raise errors.ValidationFailed(details={field: [f"must be a list of 1 to {MAX_TEXTS} texts"]})
    problems = [f"item {n}: must be a non-empty string of at most {MAX_TEXT_CHARS} characters"
                for n, t in enumerate(raw)
                if not isinstance(t, str) or not t.strip() or len(t) > MAX_TEXT_CHARS]
    if problems:
        if single:
            problems = [f"must be a non-empty string of at most {MAX_TEXT_CHARS} characters"]
        raise errors.ValidationFailed(details={field: problems})
    return [str(t) for t in raw], single
