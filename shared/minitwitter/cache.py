"""Redis: the cache, the rate-limit store and the job queue's broker.

Redis is never the source of truth. Callers use :func:`soft` for cache work so that an
unreachable Redis degrades to "cache miss" instead of an error; after a failure the client stays
"down" for a short back-off so requests do not each wait for a connection timeout.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import redis
from hiredis import pack_command

from . import metrics
from .config import Config, get_config

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Seconds Redis is treated as down after a connection failure before it is tried again.
DOWN_BACKOFF_SECONDS = 2.0

_lock = threading.Lock()
_client: redis.Redis | None = None
_client_url: str | None = None
_down_until = 0.0
#: Bumped by :func:`reset`: every thread's dedicated client is then replaced on its next use.
_epoch = 0
_local = threading.local()


def _new_client(cfg: Config, *, dedicated: bool) -> redis.Redis:
    return redis.Redis.from_url(
        cfg.redis_url,
        socket_timeout=cfg.redis_timeout,
        socket_connect_timeout=cfg.redis_timeout,
        health_check_interval=30,
        single_connection_client=dedicated,
    )


def client(config: Config | None = None) -> redis.Redis:
    """This thread's Redis client, holding one dedicated connection (created on first use).

    Measured: a command through the shared connection pool costs ~50 us of CPU, through a
    dedicated connection ~27 us (the pool's checkout/return and its locks, per command). Pipelines
    taken from it still use extra pooled connections. Per process (a forked child gets its own).
    Commands :func:`defer`-red on this thread are sent (and settled) first.
    """
    flush_deferred()
    return _dedicated(config)


def _dedicated(config: Config | None = None) -> redis.Redis:
    cfg = config or get_config()
    key = (cfg.redis_url, os.getpid(), _epoch)
    current: redis.Redis | None = getattr(_local, "client", None)
    if current is None or _local.key != key:
        if current is not None and _local.key[1] == os.getpid():
            _close_quietly(current)
        _local.client = current = _new_client(cfg, dedicated=True)
        _local.key = key
    return current


def shared_client(config: Config | None = None) -> redis.Redis:
    """The process-wide pooled client, for objects shared across threads (RQ queues, workers)."""
    global _client, _client_url
    cfg = config or get_config()
    if _client is None or _client_url != cfg.redis_url:
        with _lock:
            if _client is None or _client_url != cfg.redis_url:
                _client = _new_client(cfg, dedicated=False)
                _client_url = cfg.redis_url
    return _client


def _close_quietly(r: redis.Redis) -> None:
    try:
        r.close()
    except (redis.RedisError, OSError):
        pass


def reset() -> None:
    """Forget the clients and the down-state (tests, and after fork)."""
    global _client, _client_url, _down_until, _epoch
    with _lock:
        if _client is not None:
            _close_quietly(_client)
        _client, _client_url, _down_until = None, None, 0.0
        _epoch += 1
        current = getattr(_local, "client", None)
        if current is not None and _local.key[1] == os.getpid():
            _close_quietly(current)
        _local.client = None
        _local.deferred = None


class Lua:
    """A Lua script run with EVALSHA on whichever client or pipeline is given.

    The script is registered once per process (its SHA is computed locally) and loaded into Redis
    on the first NOSCRIPT reply, so each call sends the hash and the arguments, not the text.
    """

    def __init__(self, text: str) -> None:
        self.text = text
        self.sha = hashlib.sha1(text.encode()).hexdigest()
        self._script: Any = None

    def command(self, keys: Sequence[Any], args: Sequence[Any]) -> tuple[Any, ...]:
        """The raw ``EVALSHA`` command (for :func:`defer`; a NOSCRIPT reply is retried there)."""
        return ("EVALSHA", self.sha, len(keys), *keys, *args)

    def __call__(self, r: Any, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        if self._script is None:
            self._script = r.register_script(self.text)
        return self._script(keys=list(keys), args=list(args), client=r)

    def each(self, r: Any, calls: Sequence[tuple[Sequence[Any], Sequence[Any]]]) -> list[Any]:
        """Run the script once per ``(keys, args)`` in one round trip: a single call directly,
        several as raw EVALSHAs written at once on the thread's connection (a redis-py pipeline
        would check the script with an extra SCRIPT EXISTS round trip every time)."""
        if len(calls) == 1:
            return [self(r, *calls[0])]
        if getattr(r, "connection", None) is None:  # a pooled client: no connection of its own
            pipe = r.pipeline(transaction=False)
            for keys, args in calls:
                self(pipe, keys, args)
            return list(pipe.execute())
        replies = _send_all(r, [self.command(keys, args) for keys, args in calls])
        for i, ((keys, args), reply) in enumerate(zip(calls, replies, strict=True)):
            if isinstance(reply, redis.exceptions.NoScriptError):
                replies[i] = self(r, keys, args)  # loads the script, then runs it
            elif isinstance(reply, redis.RedisError):
                raise reply
        return replies


def is_down() -> bool:
    """True while Redis is in its failure back-off window."""
    return time.monotonic() < _down_until


def mark_down(exc: Exception) -> None:
    """Record a Redis failure; callers skip Redis until the back-off ends."""
    global _down_until
    if not is_down():
        log.warning("redis unavailable", extra={"error": type(exc).__name__})
        metrics.DEPENDENCY_ERRORS.labels(dependency="redis").inc()
    _down_until = time.monotonic() + DOWN_BACKOFF_SECONDS


def soft(operation: Callable[[redis.Redis], T], default: T) -> T:
    """Run ``operation(client)``; on any Redis failure return ``default`` instead of raising."""
    if is_down():
        _fail(_take_deferred())
        return default
    try:
        return operation(client())
    except (redis.RedisError, OSError) as exc:
        mark_down(exc)
        return default


# --- commands that ride along with the next round trip -------------------------------------------
#
# On this machine a Redis round trip costs ~80 us of CPU on the client side, more than most
# commands' work, and every request used to pay one just to count itself in its rate-limit
# window before the handler made its own first read. A deferred command waits on its thread and
# goes out in the same write as the next :func:`read` (one round trip for both); anything else
# that touches Redis or PostgreSQL (:func:`client`, :func:`soft`, ``db.connection``) sends it
# alone first, and the request boundary flushes what is left. So a refusal raised by a reply's
# handler still comes before any write or query the request would make. Writes made after a
# request's commit (cache invalidations, feed pushes, job enqueues) ride the same way
# (:func:`write_later`): create-post's four post-commit round trips became one.

@dataclass(frozen=True)
class _Deferred:
    command: tuple[Any, ...]
    on_reply: Callable[[Any], None] | None
    script: Lua | None
    on_failure: Callable[[], None] | None


def defer(command: tuple[Any, ...], on_reply: Callable[[Any], None] | None = None,
          script: Lua | None = None, on_failure: Callable[[], None] | None = None) -> None:
    """Queue ``command`` to be sent with this thread's next Redis round trip.

    ``on_reply(reply)`` runs when the reply arrives and may raise (a refused rate limit), which
    then surfaces from the call that carried it. ``script`` names the :class:`Lua` an ``EVALSHA``
    command came from, to load it on a NOSCRIPT reply. ``on_failure()`` runs instead when Redis
    did not take the command (unreachable, or an error reply); while Redis is down it runs at
    once and nothing is queued, like :func:`soft` returning its default.
    """
    item = _Deferred(command, on_reply, script, on_failure)
    if is_down():
        _fail([item])
        return
    pending: list[_Deferred] | None = getattr(_local, "deferred", None)
    if pending is None:
        _local.deferred = pending = []
    pending.append(item)


def write_later(commands: Sequence[tuple[Any, ...]], *, script: Lua | None = None,
                on_reply: Callable[[Any], None] | None = None,
                on_failure: Callable[[], None] | None = None) -> None:
    """Writes whose replies the caller need not wait for.

    Inside a request (:func:`begin_request`) they ride with the thread's next round trip, at the
    latest the flush at the end of the request, before its response leaves, so the writer's next
    request sees them. Elsewhere (jobs, scripts, tests) they are sent now, in one round trip.
    ``on_reply`` gets each command's reply; ``on_failure`` runs once if Redis did not take them.
    Neither may fail the request that made the writes (it has committed): what they raise is
    logged.
    """
    failed = False

    def fail_once() -> None:
        nonlocal failed
        if not failed and on_failure is not None:
            failed = True
            on_failure()

    def settled(reply: Any) -> None:
        try:
            if on_reply is not None:
                on_reply(reply)
        except Exception:  # noqa: BLE001 - a follow-up's failure must not undo an answered write
            log.exception("handling the reply of a deferred write failed")

    for command in commands:
        defer(command, settled, script, fail_once)
    if not getattr(_local, "in_request", False):
        flush_deferred()


def begin_request() -> None:
    """A request starts on this thread: forget leftover deferred commands (nothing leaks from
    one request to the next) and defer writes until :func:`end_request`."""
    _local.deferred = None
    _local.in_request = True


def end_request() -> None:
    """The request is over (call after :func:`flush_deferred`): writes are sent at once again."""
    _local.in_request = False


def _take_deferred() -> list[_Deferred]:
    pending: list[_Deferred] = getattr(_local, "deferred", None) or []
    _local.deferred = None
    return pending


def _fail(items: Sequence[_Deferred]) -> None:
    """Tell the deferred commands Redis did not take (a handler's own failure is logged)."""
    for item in items:
        if item.on_failure is not None:
            try:
                item.on_failure()
            except Exception:  # noqa: BLE001 - one handler must not stop the others
                log.exception("deferred command failure handler failed")


def flush_deferred() -> None:
    """Send this thread's deferred commands now (one round trip) and run their reply handlers."""
    if getattr(_local, "deferred", None):
        _round_trip(None, default=None)


def read(*command: Any, default: Any = None) -> Any:
    """The reply of one read command, sent in one round trip with the deferred commands.

    ``default`` when Redis is unavailable (the same contract as :func:`soft`).
    """
    return _round_trip(command, default=default)


def _round_trip(command: tuple[Any, ...] | None, *, default: Any) -> Any:
    pending = _take_deferred()
    if is_down():
        _fail(pending)
        return default
    commands = [d.command for d in pending] + ([command] if command is not None else [])
    try:
        replies = _send_all(_dedicated(), commands)
    except (redis.RedisError, OSError) as exc:
        mark_down(exc)
        _fail(pending)
        return default
    failure: BaseException | None = None
    for item, reply in zip(pending, replies, strict=False):
        try:
            if isinstance(reply, redis.exceptions.NoScriptError) and item.script is not None:
                reply = _rerun_script(item.script, item.command)
            if isinstance(reply, redis.RedisError):
                _fail([item])
            elif reply is not None and item.on_reply is not None:
                item.on_reply(reply)
        except BaseException as exc:  # noqa: BLE001 - every reply is settled, then the first raises
            failure = failure or exc
    if failure is not None:
        raise failure
    if command is None:
        return None
    reply = replies[-1]
    if isinstance(reply, redis.RedisError):
        mark_down(reply)
        return default
    return reply


def _rerun_script(script: Lua, command: tuple[Any, ...]) -> Any:
    """Run a raw ``EVALSHA sha numkeys keys... args...`` again through ``script`` (which loads
    it into a Redis that answered NOSCRIPT); the error itself when Redis fails."""
    numkeys = int(command[2])
    keys, args = list(command[3:3 + numkeys]), list(command[3 + numkeys:])
    try:
        return script(client(), keys, args)
    except (redis.RedisError, OSError) as exc:
        if not isinstance(exc, redis.ResponseError):
            mark_down(exc)
        return exc if isinstance(exc, redis.RedisError) else redis.ConnectionError(str(exc))


def _pack(commands: list[tuple[Any, ...]]) -> list[bytes]:
    """The commands in Redis's wire format, packed by hiredis directly.

    redis-py's packer calls the same ``hiredis.pack_command`` after per-argument conversions our
    commands never need (a command name holding spaces, memoryview arguments): ~3.4 us less per
    command this way (the same bytes).
    """
    try:
        return [b"".join([pack_command(command) for command in commands])]
    except TypeError as exc:  # an argument Redis cannot take, as redis-py reports it
        raise redis.DataError(str(exc)) from None


def _send_all(r: redis.Redis, commands: list[tuple[Any, ...]]) -> list[Any]:
    """Write ``commands`` at once on the client's own connection and read every reply.

    Error replies come back as exception objects in their place. A connection that failed is
    dropped (its replies would be out of step); after a connection error (a stale connection,
    Redis restarted) the batch is tried once more on a fresh one, a timeout is not retried.
    """
    conn = r.connection
    if conn is None:  # pragma: no cover - only single-connection clients get here
        raise redis.ConnectionError("no dedicated connection")
    for attempt in (1, 2):
        try:
            conn.send_packed_command(_pack(commands))
            replies: list[Any] = []
            for _ in commands:
                try:
                    replies.append(conn.read_response())
                except redis.ResponseError as exc:
                    replies.append(exc)
            return replies
        except redis.ConnectionError:
            conn.disconnect()
            if attempt == 2:
                raise
        except (redis.TimeoutError, OSError):
            conn.disconnect()
            raise
    raise AssertionError("unreachable")  # pragma: no cover


def ping() -> bool:
    """True when Redis answers PING."""
    try:
        return bool(client().ping())
    except (redis.RedisError, OSError):
        return False
