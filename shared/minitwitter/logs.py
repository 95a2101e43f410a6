"""JSON logs (python-json-logger), correlated by call id, shipped in batches to PostgreSQL.

Every record carries ``function``, ``call_id`` and ``account_id`` from context variables set at
the request (or job) boundary, so one call id finds a request, its jobs and its callbacks.
One handler formats each record once (:class:`JsonFormatter`) and gives the line to a
:class:`LogSink`, whose background thread writes the lines to stderr and hands them in batches
to its ``store`` (:func:`minitwitter.logstore.store_batch`: the ``logs`` table); warnings and
errors reach stderr at once.
"""

from __future__ import annotations

import contextvars
import itertools
import json
import logging
import math
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from typing import Any

import orjson
from pythonjsonlogger.orjson import OrjsonFormatter

from . import errors, metrics
from .config import get_config
from .metrics import drain

call_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("call_id", default=None)
function_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("function", default=None)
account_var: contextvars.ContextVar[int | None] = contextvars.ContextVar("account_id", default=None)

SHIP_BATCH = 500
#: Name of the handlers configure_logging installs (so a second call replaces, not adds).
HANDLER_NAME = "minitwitter"
SHIP_INTERVAL = 0.2
#: Seconds between the background writes of buffered lines to stderr.
WRITE_INTERVAL = 0.05


@contextmanager
def context(*, function: str | None = None, call_id: str | None = None,
            account_id: int | None = None) -> Iterator[None]:
    """Bind correlation fields for the log records emitted inside the block.

    All three are bound (``None`` included) and restored afterwards, so nothing leaks from one
    request or job to the next one on the same thread.
    """
    tokens: list[tuple[contextvars.ContextVar[Any], contextvars.Token[Any]]] = [
        (function_var, function_var.set(function)),
        (call_id_var, call_id_var.set(call_id)),
        (account_var, account_var.set(account_id)),
    ]
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


class ContextFilter(logging.Filter):
    """Copies the context variables onto each record (explicit ``extra`` wins)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "function", None) is None:
            record.function = function_var.get()
        if getattr(record, "call_id", None) is None:
            record.call_id = call_id_var.get()
        if getattr(record, "account_id", None) is None:
            record.account_id = account_var.get()
        return True


#: The JSON record layout of every log line: this library's handler and the gateway server's own
#: loggers (``gateway/serve.py``) build their :class:`JsonFormatter` from it.
FORMATTER_OPTIONS: dict[str, Any] = {
    "fmt": "{asctime}{levelname}{name}{message}",
    "style": "{",
    "rename_fields": {"asctime": "time", "levelname": "level", "name": "logger"},
}


#: (second, its "YYYY-MM-DDTHH:MM:SS"), replaced as one tuple: threads share it.
_stamped_second: tuple[int, str] = (-1, "")


def iso_time(created: float) -> str:
    """``datetime.fromtimestamp(created, UTC).isoformat(timespec="microseconds")``, rounding
    the microseconds as it does (half to even, carried into the second); the date and time of
    day are formatted once per second."""
    global _stamped_second
    fraction, whole = math.modf(created)
    second, micros = int(whole), round(fraction * 1e6)
    if micros >= 1_000_000:
        second, micros = second + 1, micros - 1_000_000
    stamped, date_time = _stamped_second
    if stamped != second:
        date_time = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _stamped_second = (second, date_time)
    return f"{date_time}.{micros:06d}+00:00"


class JsonFormatter(OrjsonFormatter):
    """python-json-logger's orjson formatter, stamping ``time`` as ISO 8601 UTC to the microsecond.

    Stored lines are ordered and filtered by that field, so it keeps the record's full precision.
    Every request writes a line; under callgrind a line cost ~122,000 instructions (a whole
    get-user ~550,000), ~71,000 of them formatting, the time stamp (``datetime.fromtimestamp``
    with a time zone, then ``isoformat``) ~21,000 and python-json-logger's ``add_fields``
    ~41,000. Both are done here with the same result (tests/test_logs.py compares them): the
    date and time of day are formatted once per second (~9,000), and the fields are copied in
    one loop over the record with the renames looked up at start-up (~32,000).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._required_renamed = tuple((field, self._get_rename(field)) for field in self._required_fields)
        # The options whose fields add_fields below does not add: python-json-logger's own does.
        self._fields_plain = not (self.defaults or self.static_fields or self.timestamp
                                  or self.rename_fields_keep_missing)

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802, ARG002 - logging's signature
        """``datetime.fromtimestamp(created, UTC).isoformat(timespec="microseconds")``, rounding
        the microseconds as it does (half to even, carried into the second)."""
        return iso_time(record.created)

    def add_fields(self, log_data: dict[str, Any], record: logging.LogRecord,
                   message_dict: dict[str, Any]) -> None:
        """python-json-logger's ``add_fields``: the format's fields, then ``message_dict``, then
        every record attribute that is neither reserved nor private, each renamed."""
        if not self._fields_plain:
            super().add_fields(log_data, record, message_dict)
            return
        attributes = record.__dict__
        for field, name in self._required_renamed:
            log_data[name] = attributes.get(field)
        rename = self.rename_fields
        for key, value in message_dict.items():
            log_data[rename.get(key, key)] = value
        skip = self._skip_fields
        for key, value in attributes.items():
            if key not in skip and not (isinstance(key, str) and key.startswith("_")):
                log_data[rename.get(key, key)] = value


class LogSink:
    """Where formatted lines go: the stream (stderr) and, when shipping, ``store``.

    ``store(lines)`` stores a batch and returns how many lines it kept, raising
    ``errors.DependencyUnavailable`` while PostgreSQL is unreachable
    (:func:`minitwitter.logstore.store_batch`, the ``logs`` table).

    On the request path a line is only appended to a buffer: a background thread writes what
    accumulated to the stream in one ``write`` every ``WRITE_INTERVAL`` and stores it in
    PostgreSQL as one JSON array per ``SHIP_BATCH`` lines. Measured on the 2-core VM, a
    ``write`` + ``flush`` per record on every request thread cost get-user ~20 % of its
    throughput (each system call hands the GIL to another thread and waits to get it back), and
    shipping row by row from Python another ~15 %. Warnings and errors are written at once (after
    whatever is pending, so the stream stays in order). At most ``capacity`` lines wait for
    PostgreSQL: beyond that a line is dropped and counted, never waited for; while PostgreSQL
    is unreachable they wait and go out when it answers again. Lines waiting for the stream are
    never dropped: past ``capacity`` the caller writes them itself.
    """

    def __init__(self, stream: Any, *, capacity: int = 10000,
                 store: Callable[[list[str]], int] | None = None, background: bool = True) -> None:
        self.stream = stream
        self.capacity = capacity
        self.store = store
        #: False: every line is written at once and nothing is stored (a supervisor, which must
        #: run no thread: a process it forks would inherit whatever lock the thread held).
        self.background = background
        self.unwritten: deque[str] = deque()
        self.unstored: deque[str] = deque()
        self.dropped = 0
        self._write_lock = threading.Lock()  # one writer of the stream at a time
        self._store_lock = threading.Lock()  # one shipper at a time (the thread, a test, exit)
        self._pid = os.getpid()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        os.register_at_fork(after_in_child=self._forget_parent)

    # -- the request path -----------------------------------------------------------------------
    def add(self, line: str, *, urgent: bool = False, store: bool = True) -> None:
        """Take one formatted line; ``urgent`` writes it (and what is pending) to the stream now."""
        if self.store and store:
            if len(self.unstored) < self.capacity:
                self.unstored.append(line)
            else:
                self._drop(1)
        self.unwritten.append(line)
        if urgent or not self.background or len(self.unwritten) >= self.capacity:
            self.write()
        elif self._thread is None or self._pid != os.getpid():
            self._start()
        elif not self._thread.is_alive():
            self._restart()

    # -- the background thread ------------------------------------------------------------------
    def _start(self) -> None:
        self._pid = os.getpid()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="log-sink", daemon=True)
        self._thread.start()

    def _restart(self) -> None:
        """The shipping thread died (an error it could not survive): start a new one, say so
        on the stream and count it (``minitwitter_process_restarts_total{kind="log-shipper"}``)."""
        self._start()
        metrics.child(metrics.PROCESS_RESTARTS, "log-shipper").inc()
        notice = json.dumps({"time": datetime.now(UTC).isoformat(), "level": "WARNING",
                               "logger": __name__, "message": "log shipper thread died; started a new one"})
        self.unwritten.append(notice)
        self.write()

    def _run(self) -> None:
        last_store = time.monotonic()
        while not self._stop.wait(WRITE_INTERVAL):
            try:
                self.write()
                if self.store and time.monotonic() - last_store >= SHIP_INTERVAL:
                    self.ship()
                    last_store = time.monotonic()
            except Exception:  # noqa: BLE001, S112 - the sink must outlive one bad tick; nowhere to report it
                continue

    def _forget_parent(self) -> None:
        # A forked child starts with a copy of the parent's buffers: the parent writes them.
        self.unwritten.clear()
        self.unstored.clear()
        self._thread = None

    def write(self) -> None:
        """Write every pending line to the stream, in order, with one call."""
        with self._write_lock:
            lines = drain(self.unwritten)
            if lines:
                lines.append("")
                # A closed or broken stream (a vanished terminal, a full pipe's reader gone)
                # loses these lines on the stream only; PostgreSQL still gets them.
                with suppress(OSError, ValueError):
                    self.stream.write("\n".join(lines))
                    self.stream.flush()

    def _drop(self, count: int) -> None:
        self.dropped += count
        metrics.LOG_RECORDS.labels(outcome="dropped").inc(count)

    def ship(self) -> None:
        """Store everything waiting in PostgreSQL now (stops early while it is unreachable)."""
        with self._store_lock:
            while self.unstored:
                if not self._store(drain(self.unstored, SHIP_BATCH)):
                    return

    def _store(self, batch: list[str]) -> bool:
        """Insert one batch; False when PostgreSQL is unreachable (the batch waits again)."""
        store = self.store
        if store is None:  # a sink without a store queues nothing for it
            return True
        try:
            stored = store(batch)
        except errors.DependencyUnavailable:
            self.unstored.extendleft(reversed(batch))
            excess = len(self.unstored) - self.capacity
            for _ in range(excess):
                self.unstored.pop()  # the newest go, as when the buffer is full
            if excess > 0:
                self._drop(excess)
            return False
        metrics.LOG_RECORDS.labels(outcome="stored").inc(stored)
        if stored < len(batch):  # lines the store refused even one by one
            self._drop(len(batch) - stored)
        return True

    def flush(self) -> None:
        """Write and store everything pending now (tests, shutdown)."""
        self.write()
        if self.store:
            self.ship()

    def close(self) -> None:
        self._stop.set()
        self.flush()


class JsonLogHandler(logging.Handler):
    """Formats each record once (python-json-logger) and hands the line to a :class:`LogSink`."""

    def __init__(self, sink: LogSink) -> None:
        super().__init__()
        self.sink = sink
        self.setFormatter(JsonFormatter(**FORMATTER_OPTIONS))
        self.addFilter(ContextFilter())
        self.set_name(HANDLER_NAME)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except RecursionError:
            raise
        except Exception:  # noqa: BLE001 - logging must never break the caller
            self.handleError(record)
            return
        # Never store what the sink itself reports (a failing store would feed itself).
        self.sink.add(line, urgent=record.levelno >= logging.WARNING,
                      store=not record.name.startswith(__name__))

    def flush(self) -> None:
        self.sink.flush()

    def close(self) -> None:
        self.sink.close()
        super().close()


_sink: LogSink | None = None
#: The handler :func:`configure_logging` installed (the request line's fast path checks it).
_handler: JsonLogHandler | None = None
#: The logger of the one line every request writes (``minitwitter.http``).
REQUEST_LOGGER = "minitwitter.request"
_request_log = logging.getLogger(REQUEST_LOGGER)


def log_request(fields: dict[str, Any]) -> None:
    """The one line a request writes: ``message "request"`` at INFO with ``fields`` and the
    correlation fields, exactly the line that ``logging.getLogger(REQUEST_LOGGER).info("request",
    extra=fields)`` writes through this module's handler (tests/test_logs.py compares them).

    Built directly when that handler is the only one the line would reach: the logging
    machinery around it (a ``LogRecord``, the level and filter checks, the handler's lock,
    python-json-logger's field copying) was ~20 % of a cached get-user's instructions. Any
    other configuration (a test's capture handler, a level above INFO) takes the ordinary path.
    """
    handler = _handler
    root = logging.root
    if (handler is None or len(root.handlers) != 1 or root.handlers[0] is not handler
            or _request_log.handlers or not _request_log.isEnabledFor(logging.INFO)):
        _request_log.info("request", extra=fields)
        return
    line = {"time": iso_time(time.time()), "level": "INFO", "logger": REQUEST_LOGGER, "message": "request",
            **fields, "function": function_var.get(), "call_id": call_id_var.get(),
            "account_id": account_var.get()}
    handler.sink.add(orjson.dumps(line, default=str).decode(), store=_stored(fields))


#: The sampling rule of stored request lines (set by :func:`configure_logging` from the config).
_store_reads_one_in = 1
_slow_ms = 100.0
_reads_seen = itertools.count()


def _stored(fields: dict[str, Any]) -> bool:
    """Whether a request line goes to PostgreSQL as well as to the stream.

    Every line goes to the stream (stderr). PostgreSQL gets every line too, but for fast
    successful reads: a GET or HEAD answered below 400 within ``LOG_SLOW_MS`` is stored one in
    ``LOG_STORE_READS_ONE_IN`` (10 by default; 1 stores every one). Errors, slow requests,
    writes and every line that is not a request line are always stored. Storing ~12,000 read
    lines a second took about a fifth of the cores and doubled the reads' p99 latency; the
    lines not stored are counted in ``minitwitter_log_records_total{outcome="not_stored"}``.
    """
    if (_store_reads_one_in <= 1 or fields.get("method") not in ("GET", "HEAD")
            or fields.get("status", 500) >= 400 or fields.get("duration_ms", _slow_ms) >= _slow_ms
            or next(_reads_seen) % _store_reads_one_in == 0):
        return True
    metrics.child(metrics.LOG_RECORDS, "not_stored").inc()
    return False


def configure_logging(process: str, *, level: str | None = None,
                      store: Callable[[list[str]], int] | None = None, background: bool = True) -> None:
    """Set up JSON logging on stderr for this process, the lines also kept by ``store``
    (:func:`minitwitter.logstore.store_batch`) unless ``LOG_TO_DB`` is off; idempotent.
    ``background=False``: no thread, each line written at once, nothing stored."""
    global _sink, _handler, _store_reads_one_in, _slow_ms
    cfg = get_config()
    _store_reads_one_in, _slow_ms = cfg.log_store_reads_one_in, cfg.log_slow_ms
    # Nothing here reads the caller's file and line, thread or process name: skip computing them
    # (the logging HOWTO's optimisation; ~3 us per record).
    logging._srcfile = None  # type: ignore[attr-defined]  # noqa: SLF001 - documented switch
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    root = logging.getLogger()
    for handler in list(root.handlers):
        if handler.get_name() == HANDLER_NAME:
            root.removeHandler(handler)
    root.setLevel(level or cfg.log_level)
    if _sink is not None:
        _sink.close()
    _sink = LogSink(sys.stderr, capacity=cfg.log_buffer_size,
                    store=store if cfg.log_to_db and background else None, background=background)
    _handler = JsonLogHandler(_sink)
    root.addHandler(_handler)
    logging.getLogger("minitwitter").info("logging configured", extra={"component": process})


def flush() -> None:
    """Ship everything buffered now (tests and shutdown)."""
    if _sink is not None:
        _sink.flush()


def now_ms() -> float:
    """Monotonic milliseconds, for durations."""
    return time.perf_counter() * 1000.0
