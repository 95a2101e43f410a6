"""Prometheus metrics, correct across worker processes.

When ``PROMETHEUS_MULTIPROC_DIR`` is set (``make run`` and the images set it), every process
writes its samples there and :func:`render` aggregates them, so a scrape of any gateway worker
sees the whole instance. Names follow Prometheus conventions: base units, ``_total`` counters,
bounded label values (function names come from stack.yml, never from the URL).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

# --- OpenFaaS gateway metrics (names and labels as the CE gateway exports them) -------------
GATEWAY_INVOCATIONS = Counter(
    "gateway_function_invocation", "Function invocations by status code", ["function_name", "code"]
)
GATEWAY_SECONDS = Histogram(
    "gateway_functions_seconds", "Function invocation time", ["function_name", "code"],
    buckets=LATENCY_BUCKETS,
)
GATEWAY_STARTED = Counter(
    "gateway_function_invocation_started", "Function invocations started", ["function_name"]
)
# gateway_service_count is produced at scrape time by the gateway's collector.

# --- Function metrics ----------------------------------------------------------------------
FUNCTION_REQUESTS = Counter(
    "minitwitter_function_requests", "Requests handled by a function", ["function", "method", "status"]
)
FUNCTION_SECONDS = Histogram(
    "minitwitter_function_request_duration_seconds", "Time spent in a function handler",
    ["function"], buckets=LATENCY_BUCKETS,
)
RATE_LIMITED = Counter(
    "minitwitter_rate_limit_rejections", "Requests rejected by a rate limit", ["scope"]
)
CACHE_REQUESTS = Counter(
    "minitwitter_cache_requests", "Cache lookups by cache and result (hit/miss)", ["cache", "result"]
)
DEPENDENCY_ERRORS = Counter(
    "minitwitter_dependency_errors", "Failures talking to PostgreSQL or Redis", ["dependency"]
)
ASYNC_INVOCATIONS = Counter(
    "minitwitter_async_invocations", "Async invocations run by the queue-worker", ["function", "outcome"]
)
POSTS_CREATED = Counter("minitwitter_posts_created", "Posts created")

# --- Jobs, sentiment and callbacks ---------------------------------------------------------
JOBS = Counter("minitwitter_jobs", "Background jobs by kind and outcome", ["job", "outcome"])
JOB_SECONDS = Histogram(
    "minitwitter_job_duration_seconds", "Background job run time", ["job"], buckets=LATENCY_BUCKETS
)
SENTIMENT_ITEMS = Counter(
    "minitwitter_sentiment_items", "Items classified, by backend, label and outcome",
    ["backend", "label", "outcome"],
)
SENTIMENT_SECONDS = Histogram(
    "minitwitter_sentiment_classification_duration_seconds", "Backend classification time per batch",
    ["backend"], buckets=LATENCY_BUCKETS,
)
SENTIMENT_BATCH = Histogram(
    "minitwitter_sentiment_batch_size", "Items per classification batch", ["backend"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
SENTIMENT_CACHE = Counter(
    "minitwitter_sentiment_cache_requests", "Verdict cache lookups", ["result"]
)
LLM_TOKENS = Counter("minitwitter_llm_tokens", "Tokens counted by Ollama", ["model", "kind"])
SENTIMENT_BACKEND_UP = Gauge(
    "minitwitter_sentiment_backend_active", "1 for the backend the worker currently uses",
    ["backend"], multiprocess_mode="livemax",
)
CALLBACKS = Counter(
    "minitwitter_callback_deliveries", "Callback delivery attempts by kind and outcome", ["kind", "outcome"]
)

# --- Logs ------------------------------------------------------------------------------------
LOG_RECORDS = Counter("minitwitter_log_records", "Log records by fate (stored/dropped)", ["outcome"])

_extra_collectors: list[Collector] = []


class CallbackCollector(Collector):
    """Adapts a function returning metric families into a scrape-time collector."""

    def __init__(self, produce: Callable[[], Iterable[Metric]]) -> None:
        self._produce = produce

    def collect(self) -> Iterable[Metric]:
        return self._produce()


def add_scrape_collector(produce: Callable[[], Iterable[Metric]]) -> None:
    """Register a function evaluated on every scrape (queue depth, replica counts...)."""
    _extra_collectors.append(CallbackCollector(produce))


def multiprocess_enabled() -> bool:
    """True when samples are shared through ``PROMETHEUS_MULTIPROC_DIR``."""
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


def render() -> tuple[bytes, str]:
    """The Prometheus text exposition of this instance (all its processes)."""
    if multiprocess_enabled():
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
    else:
        registry = CollectorRegistry()
        for collector in list(REGISTRY._collector_to_names):  # noqa: SLF001 - re-expose defaults
            registry.register(collector)
    for collector in _extra_collectors:
        registry.register(collector)
    return generate_latest(registry), CONTENT_TYPE_LATEST


def mark_process_dead(pid: int) -> None:
    """Called by gunicorn when a worker exits, so its live gauges disappear."""
    if multiprocess_enabled():
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)
