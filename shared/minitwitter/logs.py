"""JSON logs (python-json-logger), correlated by call id, shipped in batches to PostgreSQL.

Every record carries ``function``, ``call_id`` and ``account_id`` from context variables set at
the request (or job) boundary, so one call id finds a request, its jobs and its callbacks.
:class:`DatabaseLogHandler` buffers records in a bounded queue and a background thread inserts
them in batches; when the buffer is full a record is dropped and counted, never waited for.
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import queue
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import orjson
from pythonjsonlogger.orjson import OrjsonFormatter

call_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("call_id", default=None)
function_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("function", default=None)
account_var: contextvars.ContextVar[int | None] = contextvars.ContextVar("account_id", default=None)

INSTANCE = socket.gethostname()
#: Record attributes that are part of every LogRecord and never copied into ``extra``.
_STANDARD_ATTRS = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}
_COLUMNS = {"function", "call_id", "account_id", "status", "duration_ms"}
SHIP_BATCH = 500
#: Name of the handlers configure_logging installs (so a second call replaces, not adds).
HANDLER_NAME = "minitwitter"
SHIP_INTERVAL = 0.2


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


#: The JSON record layout of every log line: this library's handlers and the gateway server's own
#: loggers (``gateway/serve.py``) build their formatters from it.
FORMATTER_OPTIONS: dict[str, Any] = {
    "fmt": "{asctime}{levelname}{name}{message}",
    "style": "{",
    "rename_fields": {"asctime": "time", "levelname": "level", "name": "logger"},
    "datefmt": "%Y-%m-%dT%H:%M:%S%z",
}


def _formatter() -> OrjsonFormatter:
    # python-json-logger's orjson flavour: ~12 us per record against ~18 us for the json one.
    return OrjsonFormatter(**FORMATTER_OPTIONS)


class DatabaseLogHandler(logging.Handler):
    """Ships records to the ``logs`` table off the request path, in batches."""

    def __init__(self, capacity: int = 10000) -> None:
        super().__init__()
        self.buffer: queue.Queue[dict[str, Any]] = queue.Queue(maxsize=capacity)
        self.dropped = 0
        self._pid = os.getpid()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith("minitwitter.logs"):
            return  # never log about shipping into the shipper
        entry = to_row(record)
        self._ensure_thread()
        try:
            self.buffer.put_nowait(entry)
        except queue.Full:
            self.dropped += 1
            from . import metrics

            metrics.LOG_RECORDS.labels(outcome="dropped").inc()

    def _ensure_thread(self) -> None:
        # After a fork (server workers, RQ work horses) the thread does not exist in the child.
        if self._thread is None or not self._thread.is_alive() or self._pid != os.getpid():
            self._pid = os.getpid()
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="log-shipper", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        # Ship on a clock, not per record: waking for every record under load meant one
        # INSERT (and commit) per one or two rows, which cost more CPU than the requests
        # themselves. Every SHIP_INTERVAL the buffer goes out in batches of SHIP_BATCH.
        while not self._stop.wait(SHIP_INTERVAL):
            self.flush()

    def flush_once(self) -> int:
        """Insert up to one batch; return how many records were stored."""
        batch: list[dict[str, Any]] = []
        while len(batch) < SHIP_BATCH:
            try:
                batch.append(self.buffer.get_nowait())
            except queue.Empty:
                break
        return store_rows(batch)

    def flush(self) -> None:
        while self.flush_once():
            pass

    def close(self) -> None:
        self._stop.set()
        self.flush()
        super().close()


def to_row(record: logging.LogRecord) -> dict[str, Any]:
    """A ``logs`` row for one record."""
    extra = {
        k: v for k, v in record.__dict__.items()
        if k not in _STANDARD_ATTRS and k not in _COLUMNS and not k.startswith("_")
    }
    message = record.getMessage()
    if record.exc_info:
        extra["exc_type"] = record.exc_info[0].__name__ if record.exc_info[0] else None
    return {
        "ts": datetime.fromtimestamp(record.created, tz=UTC).isoformat(),
        "level": record.levelname,
        "logger": record.name,
        "message": message,
        "function": getattr(record, "function", None),
        "call_id": getattr(record, "call_id", None),
        "account_id": getattr(record, "account_id", None),
        "status": getattr(record, "status", None),
        "duration_ms": getattr(record, "duration_ms", None),
        "instance": INSTANCE,
        "extra": extra or None,
    }


#: One fixed statement for any batch size: the batch travels as a single JSON parameter, so the
#: statement is prepared once per connection instead of once per distinct batch length (and
#: pg8000 converts one string instead of eleven values per record).
STORE_SQL = (
    "INSERT INTO logs (ts, level, logger, message, function, call_id, account_id, status,"
    " duration_ms, instance, extra)"
    " SELECT ts, level, logger, message, function, call_id, account_id, status, duration_ms,"
    " instance, extra FROM jsonb_to_recordset(:rows::jsonb) AS r(ts timestamptz, level text,"
    " logger text, message text, function text, call_id text, account_id bigint, status integer,"
    " duration_ms double precision, instance text, extra jsonb)"
)


def store_rows(rows: list[dict[str, Any]]) -> int:
    """Insert a batch of rows with one statement on the shipper thread's own connection."""
    from . import db, errors, metrics

    if not rows:
        return 0
    try:
        db.run(STORE_SQL, rows=orjson.dumps(rows, default=str).decode())
    except (errors.MinitwitterError, orjson.JSONEncodeError):
        metrics.LOG_RECORDS.labels(outcome="dropped").inc(len(rows))
        return 0
    metrics.LOG_RECORDS.labels(outcome="stored").inc(len(rows))
    return len(rows)


_db_handler: DatabaseLogHandler | None = None


def configure_logging(process: str, *, level: str | None = None, to_db: bool | None = None) -> None:
    """Set up JSON logging on stderr (and to PostgreSQL) for this process; idempotent."""
    global _db_handler
    from .config import get_config

    cfg = get_config()
    root = logging.getLogger()
    for handler in list(root.handlers):
        if handler.get_name() == HANDLER_NAME:
            root.removeHandler(handler)
    root.setLevel(level or cfg.log_level)
    stream = logging.StreamHandler(sys.stderr)
    stream.setFormatter(_formatter())
    stream.addFilter(ContextFilter())
    stream.set_name(HANDLER_NAME)
    root.addHandler(stream)
    if to_db if to_db is not None else cfg.log_to_db:
        _db_handler = DatabaseLogHandler(cfg.log_buffer_size)
        _db_handler.addFilter(ContextFilter())
        _db_handler.set_name(HANDLER_NAME)
        root.addHandler(_db_handler)
    logging.getLogger("minitwitter").info("logging configured", extra={"component": process})


def flush() -> None:
    """Ship everything buffered now (tests and shutdown)."""
    if _db_handler is not None:
        _db_handler.flush()


def prune(retention_days: int) -> int:
    """Delete log rows older than the retention; return how many went."""
    from . import db

    rows = db.run(
        "WITH gone AS (DELETE FROM logs WHERE ts < now() - make_interval(days => :d) RETURNING 1)"
        " SELECT count(*) FROM gone",
        d=retention_days,
    )
    return int(rows[0][0])


def query(*, name: str | None = None, since: datetime | None = None, tail: int | None = None,
          call_id: str | None = None, level: str | None = None,
          namespace: str = "openfaas-fn") -> list[dict[str, Any]]:
    """Log lines in OpenFaaS ``/system/logs`` shape, oldest first."""
    from . import db

    clauses = ["TRUE"]
    params: dict[str, Any] = {}
    if name:
        clauses.append("function = :name")
        params["name"] = name
    if since:
        clauses.append("ts >= :since")
        params["since"] = since
    if call_id:
        clauses.append("call_id = :call_id")
        params["call_id"] = call_id
    if level:
        clauses.append("level = :level")
        params["level"] = level.upper()
    limit = tail if tail is not None and tail >= 0 else 10000
    params["limit"] = limit
    where = " AND ".join(clauses)  # fixed fragments only; values are bound
    rows = db.run(
        f"SELECT ts, level, logger, message, function, call_id, account_id, status, duration_ms,"
        f" instance, extra FROM (SELECT * FROM logs WHERE {where} ORDER BY ts DESC, id DESC"
        f" LIMIT :limit) recent ORDER BY ts, id",
        **params,
    )
    out = []
    for ts, lvl, logger, message, function, cid, account, status, duration, instance, extra in rows:
        record = {"time": ts.isoformat(), "level": lvl, "logger": logger, "message": message,
                  "function": function, "call_id": cid, "account_id": account, "status": status,
                  "duration_ms": duration}
        if extra:
            record.update(extra if isinstance(extra, dict) else json.loads(extra))
        out.append({
            "name": function or logger,
            "namespace": namespace,
            "instance": instance or INSTANCE,
            "timestamp": ts.astimezone(UTC).isoformat().replace("+00:00", "Z"),
            "text": json.dumps(record, default=str),
        })
    return out


def now_ms() -> float:
    """Monotonic milliseconds, for durations."""
    return time.perf_counter() * 1000.0
