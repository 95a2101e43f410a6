"""Prometheus metrics, correct across worker processes.

When ``PROMETHEUS_MULTIPROC_DIR`` is set (``make run`` and the images set it), every process
writes its samples there and :func:`render` aggregates them, so a scrape of any gateway worker
sees the whole instance. Names follow Prometheus conventions: base units, ``_total`` counters,
bounded label values (function names come from stack.yml, never from the URL).
"""

from __future__ import annotations

import atexit
import itertools
import operator
import os
import threading
import time
from bisect import bisect_left
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import suppress
from pathlib import Path
from typing import Any, TypeVar

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

#: Seconds between a process's batched updates (:func:`child`) reaching its samples.
FLUSH_INTERVAL = 0.1
T = TypeVar("T")


def drain(items: deque[T], limit: int | None = None) -> list[T]:
    """Pop up to ``limit`` (default: all) items from the left, safe against concurrent appends
    (the log sink's buffers, the metrics' pending updates)."""
    taken: list[T] = []
    with suppress(IndexError):
        while limit is None or len(taken) < limit:
            taken.append(items.popleft())
    return taken


class Tallies:
    """Unit increments of samples, counted without a lock: each sample has an
    :func:`itertools.count`, and ``next()`` on it is one C call, atomic under the GIL, whichever
    thread makes it.

    :meth:`take` reads every count with one ``next()`` of its own and returns the difference
    from what it read last (its own ``next()`` counted out), so nothing is lost or counted twice
    while request threads go on counting. It walks the counts with ``map`` and
    :func:`itertools.compress` (C loops): ~950 samples (fifteen functions' histograms) cost it
    ~0.05 ms with nothing counted.
    """

    def __init__(self) -> None:
        self._values: list[Any] = []
        self._counts: list[Iterator[int]] = []
        self._seen: list[int] = []
        self._lock = threading.Lock()  # one taker at a time, whichever _Updates applies them
        # No fork while a take holds the lock; a child gets a lock of its own, which its own
        # forks must take in turn (hence methods that look the lock up, not its bound methods).
        os.register_at_fork(before=self._lock_for_fork, after_in_parent=self._unlock_after_fork,
                            after_in_child=self._forget_parent)

    def add(self, value: Any) -> Callable[[], int]:
        """A new tally of ``value``'s unit increments; call what it returns to count one."""
        count = itertools.count()
        with self._lock:
            self._values.append(value)
            self._counts.append(count)
            self._seen.append(0)
        return count.__next__

    def take(self) -> list[tuple[Any, int]]:
        """``(value, increments)`` of every sample counted since the last take."""
        with self._lock:
            now = list(map(next, self._counts))
            taken = list(map(operator.sub, now, self._seen))
            self._seen = list(map(operator.add, now, itertools.repeat(1)))
            return [(self._values[i], taken[i]) for i in itertools.compress(range(len(taken)), taken)]

    def _lock_for_fork(self) -> None:
        self._lock.acquire()

    def _unlock_after_fork(self) -> None:
        self._lock.release()

    def _forget_parent(self) -> None:
        # A forked child's counts hold the parent's unapplied increments: the parent applies them.
        self._lock = threading.Lock()
        self._seen = list(map(operator.add, map(next, self._counts), itertools.repeat(1)))


#: The unit increments of every counter child and histogram bucket in this process.
_tallies = Tallies()


class _Updates:
    """Increments waiting to be applied to prometheus_client's sample values, per process.

    In multi-process mode every ``inc`` of a sample takes a lock, checks the pid and writes the
    mmap'ed file; a request made eight of them (the gateway's and the function's counters and
    histograms, a cache hit), ~8 % of a cached get-user's instructions. Here the request path
    only counts: a unit increment (a counter's ``inc()``, a histogram's bucket) is one
    ``next()`` on the sample's count (:class:`Tallies`), any other amount (a histogram's sum, a gauge, an
    ``inc(n)``) is appended as ``(value, amount)`` to a deque. A background thread takes what
    accumulated every :data:`FLUSH_INTERVAL` and writes each touched sample once.
    :func:`render` applies what is pending first, and so does the process's exit, so a scrape
    sees the scraping process's own requests at once and another process's within
    :data:`FLUSH_INTERVAL`.

    Why tallies: the applier holds the GIL while it sums, and every request line waits for it
    meanwhile. With every increment in the deque, a cached read added five entries, and one
    server process's tenth of a second at full load (~700 reads) held it ~0.3 ms; with
    tallies, one entry per read (its histogram's sum) is left in the deque and the same apply
    holds it ~0.12 ms, ~0.05 ms of that to read ~950 tallies, which an idle tick now pays too
    (docs/benchmarks.md, change 56).
    """

    def __init__(self, *, background: bool = True) -> None:
        self.pending: deque[tuple[Any, float]] = deque()
        self._lock = threading.Lock()  # one applier at a time (the thread, a scrape, exit)
        self._thread: threading.Thread | None = None
        self._background = background  # False: applied only by apply() (tests)
        # No fork while an apply holds prometheus_client's lock: the child would inherit it held.
        os.register_at_fork(before=self._lock_for_fork, after_in_parent=self._unlock_after_fork,
                            after_in_child=self._forget_parent)
        #: True until the background thread runs (or for good, without one): the request
        #: path's cue to call :meth:`start`.
        self.idle = background

    def add(self, value: Any, amount: float) -> None:
        self.pending.append((value, amount))
        if self.idle:
            self.start()

    def start(self) -> None:
        """Start the background thread, once per process."""
        with self._lock:
            if self._thread is None and self._background:
                self._thread = threading.Thread(target=self._run, name="metrics-flush", daemon=True)
                self._thread.start()
                self.idle = False

    def _run(self) -> None:
        while True:
            time.sleep(FLUSH_INTERVAL)
            self.apply()

    def _lock_for_fork(self) -> None:
        self._lock.acquire()

    def _unlock_after_fork(self) -> None:
        self._lock.release()

    def _forget_parent(self) -> None:
        # A forked child starts with a copy of the parent's pending updates: the parent applies them.
        self.pending.clear()
        self._lock = threading.Lock()
        self._thread = None
        self.idle = self._background

    def apply(self) -> None:
        """Write every pending increment to its sample, one write per sample touched; a sample
        whose write fails keeps its sum pending for the next apply."""
        with self._lock:
            sums: dict[Any, float] = {}
            for value, count in _tallies.take():
                sums[value] = float(count)
            for value, amount in drain(self.pending):
                sums[value] = sums.get(value, 0.0) + amount
            failed: list[tuple[Any, float]] = []
            for value, amount in sums.items():
                try:
                    value.inc(amount)
                except Exception:  # noqa: BLE001 - a full disk, say: retried, never lost silently
                    failed.append((value, amount))
            self.pending.extend(failed)


_updates = _Updates()
atexit.register(_updates.apply)


class BatchedChild:
    """A labelled counter, gauge or histogram whose updates go through :class:`_Updates`.

    The same arithmetic as prometheus_client's ``Counter.inc`` and ``Histogram.observe`` (a
    histogram adds to its sum and to the first bucket whose bound is at or above the value;
    cumulative counts are computed at scrape time), applied later; tests/test_monitoring.py
    checks that both give the same exposition.
    """

    __slots__ = ("_bounds", "_buckets", "_hit", "_sum", "_value")

    def __init__(self, labelled: Any) -> None:
        if isinstance(labelled, Histogram):
            self._sum = labelled._sum  # noqa: SLF001 - prometheus_client's sample values
            self._buckets = [_tallies.add(bucket) for bucket in labelled._buckets]  # noqa: SLF001
            self._bounds = labelled._upper_bounds  # noqa: SLF001
        else:
            self._value = labelled._value  # noqa: SLF001
            self._hit = _tallies.add(self._value)

    def inc(self, amount: float = 1.0) -> None:
        """Counter increment (``amount`` ≥ 0)."""
        if amount == 1.0:
            self._hit()
            if _updates.idle:
                _updates.start()
        elif amount < 0:
            raise ValueError("counters can only be incremented by non-negative amounts")
        else:
            _updates.add(self._value, amount)

    def add(self, amount: float) -> None:
        """Gauge change, up or down (a gauge's batched updates net out before they are written)."""
        _updates.add(self._value, amount)

    def observe(self, amount: float) -> None:
        """Histogram observation (a NaN, as in prometheus_client, reaches the sum, no bucket)."""
        _updates.add(self._sum, amount)
        if amount == amount:  # noqa: PLR0124 - false only for NaN
            self._buckets[bisect_left(self._bounds, amount)]()


_children: dict[tuple[Counter | Gauge | Histogram, tuple[str, ...]], BatchedChild] = {}


def child(metric: Counter | Gauge | Histogram, *values: str) -> BatchedChild:
    """``metric.labels(*values)`` for the request path: memoised (``labels()``' argument checks
    and lock cost more than an increment) and batched (:class:`_Updates`). Label values here
    are bounded sets (function names, methods, status codes, cache names)."""
    key = (metric, values)
    found = _children.get(key)
    if found is None:
        found = _children[key] = BatchedChild(metric.labels(*values))
    return found


def flush() -> None:
    """Apply this process's pending batched updates now."""
    _updates.apply()


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
#: Calls running on a function slot, and calls waiting for one (the serving edge's backpressure).
GATEWAY_INFLIGHT = Gauge(
    "gateway_function_invocation_inflight", "Function calls running now", ["function_name"],
    multiprocess_mode="livesum",
)
GATEWAY_QUEUED = Gauge(
    "gateway_function_invocation_queued", "Function calls waiting for a free slot", ["function_name"],
    multiprocess_mode="livesum",
)
#: Requests the serving edge answered itself: 408 (slow client), 413, 503 (no free slot in time).
GATEWAY_REFUSED = Counter(
    "gateway_requests_refused", "Requests answered by the serving edge without running them",
    ["reason"],
)
#: Long-running children (gateway server processes, queue workers, the scheduler, the log
#: shipper thread) restarted by their supervisor after they died.
PROCESS_RESTARTS = Counter(
    "minitwitter_process_restarts", "Children restarted after they died", ["kind"]
)

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
# The label is "task", not "job": Prometheus' own target label "job" would rename it exported_job.
JOBS = Counter("minitwitter_jobs", "Background jobs by kind and outcome", ["task", "outcome"])
JOB_SECONDS = Histogram(
    "minitwitter_job_duration_seconds", "Background job run time", ["task"], buckets=LATENCY_BUCKETS
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

SENTIMENT_BACKEND_CONFIGURED = Gauge(
    "minitwitter_sentiment_backend_configured", "1 for the SENTIMENT_BACKEND a worker was started with",
    ["backend"], multiprocess_mode="livemax",
)

# --- Logs ------------------------------------------------------------------------------------
LOG_RECORDS = Counter("minitwitter_log_records",
                      "Log records by fate (stored, dropped, not_stored: a fast read's line sampled out)",
                      ["outcome"])

# Error counters with a known, bounded label set start at 0 in every process, so "no errors yet"
# is a real zero on dashboards and in rate() instead of an absent series.
for _dependency in ("postgres", "redis"):
    DEPENDENCY_ERRORS.labels(dependency=_dependency)
for _outcome in ("stored", "dropped", "not_stored"):
    LOG_RECORDS.labels(outcome=_outcome)
for _reason in ("read_timeout", "too_large", "overloaded", "stuck_calls"):
    GATEWAY_REFUSED.labels(reason=_reason)
for _result in ("hit", "miss"):
    SENTIMENT_CACHE.labels(result=_result)

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
    flush()
    if multiprocess_enabled():
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
    else:
        registry = CollectorRegistry()
        for collector in list(REGISTRY._collector_to_names):  # noqa: SLF001 - re-expose defaults
            registry.register(collector)
    registry.register(_FirstOfEachName(list(_extra_collectors)))
    return generate_latest(registry), CONTENT_TYPE_LATEST


class _FirstOfEachName(Collector):
    """The scrape-time collectors, each metric name once: a second family with a name already
    produced would make the whole exposition invalid ("second HELP line"), failing the scrape."""

    def __init__(self, collectors: list[Collector]) -> None:
        self._collectors = collectors

    def collect(self) -> Iterable[Metric]:
        seen: set[str] = set()
        for collector in self._collectors:
            for family in collector.collect():
                if family.name not in seen:
                    seen.add(family.name)
                    yield family


def mark_process_dead(pid: int) -> None:
    """Called when a server process exits, so its live gauges disappear."""
    if multiprocess_enabled():
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)


def reap_dead_processes() -> list[int]:
    """Mark every process whose live-gauge files remain but which no longer runs as dead.

    The gateway's server (granian) has no per-worker exit hook; each new worker calls this at
    start, so a crashed and respawned worker's live gauges stop counting. Returns the pids reaped.
    """
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not multiprocess_enabled() or not directory:
        return []
    reaped = []
    for path in Path(directory).glob("gauge_live*_*.db"):
        pid_text = path.stem.rsplit("_", 1)[-1]
        if not pid_text.isdigit() or int(pid_text) == os.getpid():
            continue
        try:
            os.kill(int(pid_text), 0)
        except ProcessLookupError:
            mark_process_dead(int(pid_text))
            reaped.append(int(pid_text))
        except PermissionError:
            continue
    return reaped
