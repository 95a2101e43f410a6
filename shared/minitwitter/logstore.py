"""The ``logs`` table: storing the JSON lines a :class:`logs.LogSink` ships, pruning and querying them.

A process that keeps its log lines passes :func:`store_batch` to ``logs.configure_logging``
(``store=``); the sink calls it from its background thread with up to ``SHIP_BATCH`` lines at a
time, as one JSON array in one statement. The gateway's ``/system/logs`` (and ``faas-cli logs``)
read them back with :func:`query` and :func:`rows_after`; the workers prune them
(:func:`prune`, ``LOG_RETENTION_DAYS``).
"""

from __future__ import annotations

import json
import re
import socket
from contextlib import suppress
from datetime import UTC, datetime
from typing import Any

from . import db, errors

INSTANCE = socket.gethostname()


def _store_sql(account_id: str, status: str, duration_ms: str) -> str:
    """An INSERT of a JSON array of log lines: keys with a ``logs`` column go there (the three
    numeric ones through the given expressions of ``j``), every other key to ``extra``."""
    return f"""
WITH no_flush_wait AS (SELECT set_config('synchronous_commit', 'off', true))
INSERT INTO logs (ts, level, logger, message, function, call_id, account_id, status, duration_ms,
                  instance, extra)
SELECT c.ts, c.level, c.logger, c.message, c.function, c.call_id, c.account_id, c.status,
       c.duration_ms, :instance,
       nullif(j - ARRAY['time', 'level', 'logger', 'message', 'function', 'call_id']
                - CASE WHEN c.account_id IS NULL AND j->'account_id' <> 'null' THEN '' ELSE 'account_id' END
                - CASE WHEN c.status IS NULL AND j->'status' <> 'null' THEN '' ELSE 'status' END
                - CASE WHEN c.duration_ms IS NULL AND j->'duration_ms' <> 'null' THEN '' ELSE 'duration_ms' END,
              '{{}}'::jsonb)
FROM no_flush_wait, jsonb_array_elements(:lines::jsonb) WITH ORDINALITY AS line(j, n)
CROSS JOIN LATERAL (SELECT
    coalesce((j->>'time')::timestamptz, now()) AS ts,
    coalesce(j->>'level', 'INFO') AS level,
    coalesce(j->>'logger', '') AS logger,
    coalesce(j->>'message', '') AS message,
    j->>'function' AS function,
    j->>'call_id' AS call_id,
    {account_id} AS account_id,
    {status} AS status,
    {duration_ms} AS duration_ms
) AS c
ORDER BY n
"""


#: Stores a batch whose numbers fit their columns (every line this library writes).
STORE_SQL = _store_sql("(j->>'account_id')::bigint", "(j->>'status')::integer",
                       "(j->>'duration_ms')::double precision")
#: The fallback for a batch :data:`STORE_SQL` refused: numbers are checked before the cast, and a
#: value that does not fit its column stays in ``extra`` (~50 % more PostgreSQL time per line).
STORE_CHECKED_SQL = _store_sql(
    r"CASE WHEN j->>'account_id' ~ '^-?[0-9]{1,18}$' THEN (j->>'account_id')::bigint END",
    r"CASE WHEN j->>'status' ~ '^-?[0-9]{1,9}$' THEN (j->>'status')::integer END",
    r"CASE WHEN jsonb_typeof(j->'duration_ms') = 'number'"
    r" AND j->>'duration_ms' ~ '^-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]{1,2})?$'"
    r" THEN (j->>'duration_ms')::double precision END",
)


#: A JSON ``\u0000`` escape (preceded by an even number of backslashes, so not the text
#: ``\\u0000``, an escaped backslash followed by "u0000").
_NUL_ESCAPE = re.compile(r"(?<!\\)((?:\\\\)*)\\u0000")


def storable(batch: str) -> str:
    """JSON text PostgreSQL can store: NUL, which neither ``text`` nor ``jsonb`` can hold (SQLSTATE
    22P05 refused the whole batch, and then the line), becomes the six characters ``\u0000``.

    A request for ``/function/get-user/%00`` logs its path with a NUL; the line is kept, showing
    where the NUL was. Other control characters are stored as they are.
    """
    return _NUL_ESCAPE.sub(r"\1\\\\u0000", batch) if "\\u0000" in batch else batch


def store_lines(lines: list[str], *, checked: bool = False) -> None:
    """Insert JSON log lines (as :class:`logs.JsonFormatter` writes them) with one statement.

    The statement commits without waiting for its WAL flush (``synchronous_commit`` off for its
    own transaction only, as PostgreSQL's docs suggest for data such as logs): a crash of
    PostgreSQL itself may lose the last fraction of a second of log rows, never corrupt them.
    Not for use inside a caller's transaction (the setting would apply to all of it).
    """
    db.run(STORE_CHECKED_SQL if checked else STORE_SQL,
           lines=storable("[" + ",".join(lines) + "]"), instance=INSTANCE)


def _store_checked(batch: list[str]) -> int:
    """Store a batch with :data:`STORE_CHECKED_SQL`, line by line should that fail too; return
    how many lines were stored."""
    try:
        store_lines(batch, checked=True)
        return len(batch)
    except errors.MinitwitterError:
        pass
    stored = 0
    for line in batch:
        with suppress(errors.MinitwitterError):
            store_lines([line], checked=True)
            stored += 1
    return stored


def store_batch(lines: list[str]) -> int:
    """Store a batch of lines (a :class:`logs.LogSink`'s ``store``); how many were stored.

    Raises ``errors.DependencyUnavailable`` while PostgreSQL is unreachable (the sink keeps the
    lines for later). A batch PostgreSQL refuses, for a value that does not fit its column (a
    caller's own ``status``, say), goes again through :data:`STORE_CHECKED_SQL`.
    """
    try:
        store_lines(lines)
    except errors.DependencyUnavailable:
        raise
    except errors.MinitwitterError:
        return _store_checked(lines)
    return len(lines)


def prune(retention_days: int) -> int:
    """Delete log rows older than the retention; return how many went."""
    rows = db.run(
        "WITH gone AS (DELETE FROM logs WHERE ts < now() - make_interval(days => :d) RETURNING 1)"
        " SELECT count(*) FROM gone",
        d=retention_days,
    )
    return int(rows[0][0])


def _filters(name: str | None, since: datetime | None, call_id: str | None,
             level: str | None) -> tuple[list[str], dict[str, Any]]:
    """WHERE fragments (fixed text; values are bound) and parameters of a log query."""
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
    return clauses, params


_COLUMNS = "id, ts, level, logger, message, function, call_id, account_id, status, duration_ms, instance, extra"


def _entries(rows: list[list[Any]], namespace: str) -> list[tuple[int, dict[str, Any]]]:
    """Rows of :data:`_COLUMNS` as ``(id, line in OpenFaaS /system/logs shape)``."""
    out = []
    for row_id, ts, lvl, logger, message, function, cid, account, status, duration, instance, extra in rows:
        record = {"time": ts.isoformat(), "level": lvl, "logger": logger, "message": message,
                  "function": function, "call_id": cid, "account_id": account, "status": status,
                  "duration_ms": duration}
        if extra:
            record.update(extra if isinstance(extra, dict) else json.loads(extra))
        out.append((row_id, {
            "name": function or logger,
            "namespace": namespace,
            "instance": instance or INSTANCE,
            "timestamp": ts.astimezone(UTC).isoformat().replace("+00:00", "Z"),
            "text": json.dumps(record, default=str),
        }))
    return out


def query_rows(*, name: str | None = None, since: datetime | None = None, tail: int | None = None,
               call_id: str | None = None, level: str | None = None,
               namespace: str = "openfaas-fn") -> list[tuple[int, dict[str, Any]]]:
    """Log lines with their row ids, the newest ``tail`` (10,000 at most), oldest first."""
    clauses, params = _filters(name, since, call_id, level)
    params["limit"] = tail if tail is not None and tail >= 0 else 10000
    where = " AND ".join(clauses)
    rows = db.run(f"SELECT {_COLUMNS} FROM (SELECT * FROM logs WHERE {where} ORDER BY ts DESC, id DESC"
                  f" LIMIT :limit) recent ORDER BY ts, id", **params)
    return _entries(rows, namespace)


def query(*, name: str | None = None, since: datetime | None = None, tail: int | None = None,
          call_id: str | None = None, level: str | None = None,
          namespace: str = "openfaas-fn") -> list[dict[str, Any]]:
    """Log lines in OpenFaaS ``/system/logs`` shape, oldest first."""
    return [line for _, line in query_rows(name=name, since=since, tail=tail, call_id=call_id,
                                           level=level, namespace=namespace)]


def rows_after(after_id: int, *, name: str | None = None, since: datetime | None = None,
               call_id: str | None = None, level: str | None = None, namespace: str = "openfaas-fn",
               limit: int = 10000) -> list[tuple[int, dict[str, Any]]]:
    """Log lines stored with an id above ``after_id``, in id order (what a follower polls)."""
    clauses, params = _filters(name, since, call_id, level)
    where = " AND ".join([*clauses, "id > :after_id"])
    rows = db.run(f"SELECT {_COLUMNS} FROM logs WHERE {where} ORDER BY id LIMIT :limit",
                  after_id=after_id, limit=limit, **params)
    return _entries(rows, namespace)


def newest_id() -> int:
    """The highest log row id stored (0 when none)."""
    return int(db.scalar("SELECT coalesce(max(id), 0) FROM logs"))
