"""PostgreSQL access through pg8000: one connection per thread, reused, rebuilt after failures.

pg8000 connections are not thread-safe and the WSGI servers run several threads, so each thread
keeps its own :class:`pg8000.native.Connection`. Parameters are always bound (``:name``); SQL is
never assembled from user input. SQLSTATEs are translated into domain errors here and only here.
"""

from __future__ import annotations

import functools
import logging
import ssl
import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any
from urllib.parse import unquote, urlsplit

import pg8000.converters
import pg8000.native
from pg8000.exceptions import DatabaseError, InterfaceError

from . import cache, errors, metrics
from .config import Config, get_config

log = logging.getLogger(__name__)

UNIQUE_VIOLATION = "23505"
FOREIGN_KEY_VIOLATION = "23503"
CHECK_VIOLATION = "23514"
NOT_NULL_VIOLATION = "23502"
SERIALIZATION_FAILURE = "40001"
DEADLOCK_DETECTED = "40P01"
#: SQLSTATE classes that mean the connection or server is gone (class 08, 57P0x shutdown).
CONNECTION_STATES = ("08", "57P01", "57P02", "57P03")

Row = list[Any]


_LOOPBACK = {"127.0.0.1", "::1", "localhost"}


@functools.lru_cache(maxsize=4)
def _ssl_context(verify: bool) -> ssl.SSLContext:
    """One SSL context per process (building one costs ~100 ms of CPU; pg8000 would per connect)."""
    context = ssl.create_default_context()
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _ssl_option(sslmode: str | None, host: str | None) -> ssl.SSLContext | bool | None:
    """pg8000's ``ssl_context`` for a libpq-style ``sslmode``.

    ``disable`` → no SSL; ``require`` → SSL without verification; ``verify-ca``/``verify-full`` →
    verified SSL; unset or ``prefer``/``allow`` → no SSL on loopback or a Unix socket (nothing to
    protect, and it saves the handshake), else pg8000's "try SSL, fall back" behaviour.
    """
    mode = (sslmode or "prefer").lower()
    if mode == "disable":
        return False
    if mode == "require":
        return _ssl_context(verify=False)
    if mode in ("verify-ca", "verify-full"):
        return _ssl_context(verify=True)
    if mode not in ("prefer", "allow"):
        raise ValueError(f"unsupported sslmode {sslmode!r} in DATABASE_URL")
    return False if host is None or host in _LOOPBACK else None


def connect_params(url: str, timeout: float = 5.0) -> dict[str, Any]:
    """Turn ``postgresql://user:pass@host:port/db?unix_sock=...&sslmode=...`` into pg8000 arguments."""
    parts = urlsplit(url)
    if parts.scheme not in {"postgres", "postgresql"}:
        raise ValueError("DATABASE_URL must start with postgresql://")
    params: dict[str, Any] = {
        "user": unquote(parts.username or "postgres"),
        "database": unquote(parts.path.lstrip("/") or "postgres"),
        "timeout": timeout,
        "application_name": "minitwitter",
    }
    if parts.password:
        params["password"] = unquote(parts.password)
    query = dict(p.split("=", 1) for p in parts.query.split("&") if "=" in p)
    if "unix_sock" in query:
        params["unix_sock"] = unquote(query["unix_sock"])
    else:
        params["host"] = parts.hostname or "127.0.0.1"
        params["port"] = parts.port or 5432
    option = _ssl_option(query.get("sslmode"), params.get("host"))
    if option is not None:
        params["ssl_context"] = option
    return params


def _count_failure() -> None:
    metrics.DEPENDENCY_ERRORS.labels(dependency="postgres").inc()


def open_connection(config: Config | None = None) -> pg8000.native.Connection:
    """Open a new connection (callers normally use :func:`connection` instead)."""
    cfg = config or get_config()
    try:
        conn = pg8000.native.Connection(**connect_params(cfg.database_url, cfg.db_connect_timeout))
    except (InterfaceError, OSError, DatabaseError) as exc:
        log.warning("postgres connection failed", extra={"error": type(exc).__name__})
        _count_failure()
        raise errors.DependencyUnavailable("the database is unavailable") from exc
    # Statement timeout keeps a stuck query from holding a worker thread forever.
    conn.run("SET statement_timeout = 15000")
    conn.register_in_adapter(TIMESTAMPTZ_OID, timestamptz_in)
    return conn


#: PostgreSQL's type oid of ``timestamp with time zone``.
TIMESTAMPTZ_OID = 1184


def timestamptz_in(text: str) -> Any:
    """Parse a ``timestamptz`` column with ``datetime.fromisoformat``.

    pg8000's own parser goes through ``strptime``: profiled at a quarter of home-timeline's CPU
    (two timestamps per post, 20 posts a page); this is ~10x cheaper. Values it does not take
    (``infinity``, BC or out-of-range dates) go to pg8000's parser as before.
    """
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return pg8000.converters.timestamptz_in(text)


#: Prepared statements kept per connection (LRU). pg8000 parses and plans every unnamed
#: statement again; a named prepared statement skips that (measured 5.9x on get-user's query).
STATEMENT_CACHE_SIZE = 256


class _Local(threading.local):
    conn: pg8000.native.Connection | None = None
    url: str | None = None
    depth: int = 0

    def __init__(self) -> None:
        self.statements: OrderedDict[str, pg8000.native.PreparedStatement] = OrderedDict()


_local = _Local()


def connection(config: Config | None = None) -> pg8000.native.Connection:
    """This thread's connection, opened on first use (and after a failure dropped it).

    Deferred Redis commands (the request's rate-limit counts, :func:`cache.defer`) are settled
    first, so a request over its budget is refused before it reaches PostgreSQL.
    """
    cache.flush_deferred()
    cfg = config or get_config()
    if _local.conn is None or _local.url != cfg.database_url:
        close_connection()
        _local.conn = open_connection(cfg)
        _local.url = cfg.database_url
    return _local.conn


def close_connection() -> None:
    """Close and forget this thread's connection."""
    conn, _local.conn, _local.depth = _local.conn, None, 0
    _local.statements = OrderedDict()
    if conn is not None:
        try:
            conn.close()
        except Exception:  # noqa: BLE001 - already broken; nothing to report
            pass


def sqlstate(exc: DatabaseError) -> str:
    """The SQLSTATE code of a pg8000 DatabaseError ('' when unknown)."""
    info = exc.args[0] if exc.args else None
    return info.get("C", "") if isinstance(info, dict) else ""


def constraint(exc: DatabaseError) -> str:
    """The constraint name a violation refers to ('' when unknown)."""
    info = exc.args[0] if exc.args else None
    return info.get("n", "") if isinstance(info, dict) else ""


def translate(exc: Exception) -> errors.MinitwitterError:
    """Map a driver exception to a domain error; never leaks SQL text to clients."""
    if isinstance(exc, DatabaseError):
        code = sqlstate(exc)
        if code == UNIQUE_VIOLATION:
            return errors.Conflict("already exists", {"constraint": [constraint(exc)]})
        if code == FOREIGN_KEY_VIOLATION:
            return errors.NotFound("a referenced resource does not exist")
        if code in (CHECK_VIOLATION, NOT_NULL_VIOLATION):
            return errors.ValidationFailed(details={"constraint": [constraint(exc)]})
        if code in (SERIALIZATION_FAILURE, DEADLOCK_DETECTED):
            return errors.Conflict("the request collided with a concurrent one; retry it",
                                   {"request": ["retry"]})
        if code.startswith(CONNECTION_STATES) or code in CONNECTION_STATES:
            return errors.DependencyUnavailable("the database is unavailable")
        log.error("database error", extra={"sqlstate": code})
        return errors.MinitwitterError()
    return errors.DependencyUnavailable("the database is unavailable")


def _is_connection_failure(exc: Exception) -> bool:
    if isinstance(exc, (InterfaceError, OSError)):
        return True
    return isinstance(exc, DatabaseError) and (
        sqlstate(exc).startswith("08") or sqlstate(exc) in CONNECTION_STATES
    )


def run(sql: str, **params: Any) -> list[Row]:
    """Run one statement on this thread's connection and return its rows.

    Outside a transaction a broken connection is rebuilt and the statement retried once, so a
    PostgreSQL restart costs one failed attempt, not a dead worker thread.
    """
    attempts = 2 if _local.depth == 0 else 1
    for attempt in range(attempts):
        conn = connection()
        try:
            if not params:
                return conn.run(sql) or []
            return _prepared(conn, sql).run(**params) or []
        except Exception as exc:  # noqa: BLE001 - translated below
            if _is_connection_failure(exc):
                _count_failure()
                close_connection()
                if attempt + 1 < attempts:
                    continue
            elif _local.depth == 0 and isinstance(exc, DatabaseError):
                _rollback_quietly(conn)
            raise translate(exc) from exc
    raise errors.DependencyUnavailable("the database is unavailable")  # pragma: no cover


def _prepared(conn: pg8000.native.Connection, sql: str) -> pg8000.native.PreparedStatement:
    """This connection's prepared statement for ``sql`` (prepared on first use)."""
    cache = _local.statements
    statement = cache.get(sql)
    if statement is not None:
        cache.move_to_end(sql)
        return statement
    statement = conn.prepare(sql)
    cache[sql] = statement
    if len(cache) > STATEMENT_CACHE_SIZE:
        _, oldest = cache.popitem(last=False)
        try:
            oldest.close()
        except Exception:  # noqa: BLE001 - a failed close only leaks a server-side plan
            log.debug("could not close a prepared statement")
    return statement


def one(sql: str, **params: Any) -> Row | None:
    """First row of a statement, or None."""
    rows = run(sql, **params)
    return rows[0] if rows else None


def scalar(sql: str, **params: Any) -> Any:
    """First column of the first row, or None."""
    row = one(sql, **params)
    return row[0] if row else None


def _rollback_quietly(conn: pg8000.native.Connection) -> None:
    try:
        if conn.in_transaction:
            conn.run("ROLLBACK")
    except Exception:  # noqa: BLE001
        close_connection()


@contextmanager
def transaction() -> Iterator[pg8000.native.Connection]:
    """``with transaction():`` groups :func:`run` calls atomically (nesting is flattened)."""
    if _local.depth > 0:
        _local.depth += 1
        try:
            yield connection()
        finally:
            _local.depth -= 1
        return
    conn = connection()
    try:
        conn.run("BEGIN")
    except Exception as exc:  # noqa: BLE001
        close_connection()
        try:
            conn = connection()
            conn.run("BEGIN")
        except Exception as exc2:  # noqa: BLE001
            raise translate(exc2) from exc
    _local.depth = 1
    try:
        yield conn
        conn.run("COMMIT")
    except BaseException as exc:
        _local.depth = 0
        if _is_connection_failure(exc) if isinstance(exc, Exception) else False:
            close_connection()
        else:
            _rollback_quietly(conn)
        if isinstance(exc, (DatabaseError, InterfaceError, OSError)):
            raise translate(exc) from exc
        raise
    finally:
        _local.depth = 0


def ping() -> bool:
    """True when PostgreSQL answers a trivial query."""
    try:
        return scalar("SELECT 1") == 1
    except errors.MinitwitterError:
        return False
