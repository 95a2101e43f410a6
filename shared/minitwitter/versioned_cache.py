"""Redis cache entries that a slow reader can never overwrite with stale data.

PostgreSQL is the source of truth. A :class:`VersionedCache` keeps values in one Redis hash next
to a generation token: every write bumps the entry's generation *after* its commit, and a reader
stores what it read only if the generation it saw before its query is still current. Cache writes
that fail while Redis is down are remembered and replayed when it answers again
(:func:`cache_write`, :func:`replay_repairs`), so a Redis that comes back with old data (AOF) does
not keep serving what the outage's writes changed. Used by posts, comments, accounts and the
timelines.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from . import cache, metrics

log = logging.getLogger(__name__)


#: Store fields only if the generation is still the one the reader saw ('' = none yet, in which
#: case the fill mints one); returns the generation the fields are stored under, or false.
_STORE_IF_CURRENT = cache.Lua("""
local g = redis.call('HGET', KEYS[1], 'g') or ''
if g ~= ARGV[1] then return false end
if g == '' then g = ARGV[3]; redis.call('HSET', KEYS[1], 'g', g) end
redis.call('HSET', KEYS[1], unpack(ARGV, 4))
redis.call('EXPIRE', KEYS[1], ARGV[2])
return g
""")
#: Drop every field and start a new generation.
_BUMP = cache.Lua("""
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'g', ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[1])
return 1
""")


def _generation() -> str:
    # Random, never reused: a generation stays unique across key expiry and Redis restarts, so
    # a process-local copy tagged with it can never be mistaken for newer data. 128 random bits
    # as hex (uuid4().hex has 122 and cost ~15,000 instructions against ~2,000).
    return os.urandom(16).hex()


@dataclass(frozen=True)
class VersionedCache:
    """Values in one Redis hash next to a generation token ``g``, safe against stale fills.

    ``get`` returns the fields and the generation seen; ``fill`` stores only if that generation
    is still current; ``bump`` (after a committed write) drops every field and starts a new
    generation, so fills computed from older reads are refused.
    """

    name: str
    ttl: int

    def get(self, key: str, names: Sequence[str]) -> tuple[list[bytes | None], bytes] | None:
        """``(values, generation)``, or None when Redis is unavailable."""
        replay_repairs()
        raw: list[Any] | None = cache.read("HMGET", key, *names, "g")
        if raw is None:
            return None
        values: list[bytes | None] = raw[:-1]
        hit = all(v is not None for v in values)
        metrics.child(metrics.CACHE_REQUESTS, self.name, "hit" if hit else "miss").inc()
        return values, raw[-1] or b""

    def generation(self, key: str) -> bytes | None:
        """The current generation of ``key`` (b"" when none), or None when Redis is unavailable."""
        replay_repairs()
        value: Any = cache.read("HGET", key, "g", default=False)
        return None if value is False else bytes(value or b"")

    def fill(self, key: str, generation: bytes, mapping: dict[str, bytes | str]) -> bytes | None:
        """Store ``mapping`` if nothing was written since ``generation`` was read.

        Returns the generation the values are stored under (None when refused or Redis is down).
        """
        stored: bytes | None = cache.soft(
            lambda r: _STORE_IF_CURRENT(r, [key], self._store_args(generation, mapping)), None)
        return stored or None

    def _store_args(self, generation: bytes, mapping: dict[str, bytes | str]) -> list[Any]:
        """ARGV of :data:`_STORE_IF_CURRENT` for storing ``mapping`` under ``generation``."""
        args: list[Any] = [generation, self.ttl, _generation()]
        for field, value in mapping.items():
            args += [field, value]
        return args

    def fill_many(self, entries: Sequence[tuple[str, bytes, dict[str, bytes | str]]]) -> None:
        """:meth:`fill` for several ``(key, generation, mapping)`` in one round trip."""
        if not entries:
            return
        calls = [([key], self._store_args(generation, mapping)) for key, generation, mapping in entries]
        cache.soft(lambda r: _STORE_IF_CURRENT.each(r, calls), None)

    def read_through(self, key: str, load: Callable[[], Any]) -> Any:
        """The JSON value cached under ``key``; on a miss ``load()`` (PostgreSQL) and store what
        it returned unless a write bumped ``key`` meanwhile. ``load`` returning None (absent) is
        not cached. With Redis down every call loads."""
        seen = self.get(key, ["d"])
        if seen is not None and seen[0][0] is not None:
            return orjson.loads(seen[0][0])
        value = load()
        if value is not None and seen is not None:
            self.fill(key, seen[1], {"d": orjson.dumps(value)})
        return value

    def bump(self, *keys: str) -> None:
        """Invalidate ``keys`` after a write; retried by :func:`replay_repairs` if Redis is down."""
        bump_all([(self, key) for key in keys])


def bump_all(entries: Sequence[tuple[VersionedCache, str]]) -> None:
    """Invalidate entries of several caches in one round trip (:meth:`VersionedCache.bump`),
    the request's next one when called in a request (:func:`cache_write_later`)."""
    if entries:
        cache_write_later([_BUMP.command([key], [entry.ttl, _generation()]) for entry, key in entries],
                          bump_all, list(entries), script=_BUMP)


# --- cache writes missed while Redis was down ---------------------------------------------------

#: Cache updates (invalidations, feed pushes, fan-out enqueues) that failed because Redis was
#: unreachable, replayed by this process once Redis answers again: a Redis that comes back with
#: its old data (AOF) must not keep serving what the outage's writes changed. Bounded; anything
#: dropped, or lost with the process, is still bounded by the cache TTLs.
MAX_REPAIRS = 10000
_repairs: deque[tuple[Callable[..., Any], tuple[Any, ...]]] = deque(maxlen=MAX_REPAIRS)
_repairs_lock = threading.Lock()


def cache_write(operation: Callable[[Any], Any], retry: Callable[..., Any], *args: Any) -> bool:
    """Run a cache write; when Redis is unavailable remember ``retry(*args)`` and return False."""
    def attempt(r: Any) -> bool:
        operation(r)
        return True

    if cache.soft(attempt, False):
        return True
    remember_repair(retry, *args)
    return False


def cache_write_later(commands: Sequence[tuple[Any, ...]], retry: Callable[..., Any], *args: Any,
                      script: cache.Lua | None = None, on_reply: Callable[[Any], None] | None = None) -> None:
    """:func:`cache_write` for plain commands, sent by :func:`cache.write_later` (with the
    request's next round trip); when Redis does not take them ``retry(*args)`` is remembered."""
    cache.write_later(commands, script=script, on_reply=on_reply,
                      on_failure=lambda: remember_repair(retry, *args))


def remember_repair(retry: Callable[..., Any], *args: Any) -> None:
    """Remember a cache write Redis did not take: :func:`replay_repairs` runs ``retry(*args)``."""
    _repairs.append((retry, args))


def discard_repairs() -> None:
    """Forget missed cache writes (tests; a process pointed at another Redis)."""
    _repairs.clear()


def replay_repairs() -> None:
    """Re-run the cache writes missed during an outage (cheap no-op when there are none)."""
    if not _repairs or cache.is_down():
        return
    with _repairs_lock:
        pending = list(_repairs)
        _repairs.clear()
    log.info("replaying cache writes missed while Redis was down", extra={"count": len(pending)})
    for retry, args in pending:
        retry(*args)  # a failure re-records it
