"""Redis work lists drained by RQ jobs: sentiment items and home-feed fan-outs.

A producer pushes an item with :meth:`WorkList.push_later` (one Lua call: RPUSH, and SET of the
list's *draining mark* when it is absent); the call that set the mark queues the RQ drain job. So
a list that is being drained costs one RQ job, not one per item (an RQ enqueue is a MULTI of job
hash, queue and registry writes: ~0.2 ms of the gateway's CPU, and as much again in a worker).

A drain job leaves only through :meth:`WorkList.finished`, which clears the mark if, and only if,
the list is empty at that moment (one Lua call, so atomic with every push): an item pushed
before it is the job's to drain, one pushed after finds no mark and queues a new job. A job that
fails clears the mark on its way out (:meth:`WorkList.draining`); a killed worker's mark expires
after ``mark_ttl`` seconds, and until then the reconciler, which looks at the lists themselves,
starts a job for a list that is not empty. Every ``trigger`` items a further job is queued even
while the mark stands, so that several workers share a backlog.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from . import cache

# Replies {list length after the push (0: refused as a duplicate), 1 when this call set the mark}.
# KEYS: list, mark[, dedupe key]; ARGV: item, mark TTL[, dedupe TTL].
_PUSH = cache.Lua("""
if KEYS[3] and not redis.call('SET', KEYS[3], '1', 'NX', 'EX', ARGV[3]) then
  return {0, 0}
end
local length = redis.call('RPUSH', KEYS[1], ARGV[1])
if redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[2]) then
  return {length, 1}
end
return {length, 0}
""")

# A drain job's way out: 1 (mark cleared) only when the list is empty. KEYS: list, mark.
_FINISH = cache.Lua("""
if redis.call('LLEN', KEYS[1]) == 0 then
  redis.call('DEL', KEYS[2])
  return 1
end
return 0
""")


@dataclass(frozen=True)
class WorkList:
    """A Redis list of work items with its draining mark (see the module docstring)."""

    key: str
    #: Queue a further drain job every this many items, mark or not.
    trigger: int
    #: Seconds a mark outlives a drain job that died without clearing it.
    mark_ttl: int = 120

    @property
    def mark_key(self) -> str:
        return f"{self.key}:draining"

    @property
    def script(self) -> cache.Lua:
        """The push script (its SHA names pushes on the wire)."""
        return _PUSH

    def push_call(self, item: str, dedupe_key: str | None = None,
                  dedupe_ttl: int = 0) -> tuple[list[str], list[Any]]:
        """Keys and arguments of one push; with ``dedupe_key``, a push refused while that key
        lives (it is set for ``dedupe_ttl`` seconds by the push that succeeds)."""
        keys, args = [self.key, self.mark_key], [item, self.mark_ttl]
        if dedupe_key is not None:
            keys.append(dedupe_key)
            args.append(dedupe_ttl)
        return keys, args

    def push_later(self, call: tuple[list[str], list[Any]], start_job: Callable[[Any], None],
                   on_failure: Callable[[], None]) -> None:
        """Send one push (from :meth:`push_call`) with :func:`cache.write_later`; when its reply
        says so (:meth:`needs_job`), ``start_job(redis_client)`` queues the drain job (a failure
        there is left to the reconciler). ``on_failure()`` runs if Redis did not take the push."""
        def pushed(reply: list[Any]) -> None:
            if self.needs_job(reply):
                cache.soft(start_job, None)  # missed: the reconciler starts one

        cache.write_later([_PUSH.command(*call)], script=_PUSH, on_reply=pushed, on_failure=on_failure)

    def push_all(self, r: Any, calls: Sequence[tuple[list[str], list[Any]]]) -> list[Any]:
        """Run several pushes (from :meth:`push_call`) in one round trip; their replies."""
        return _PUSH.each(r, calls)

    def needs_job(self, reply: Sequence[Any]) -> bool:
        """Whether the push that got ``reply`` must queue a drain job: it set the mark (no job
        was queued or running), or the list reached a multiple of ``trigger``."""
        length, marked = int(reply[0]), int(reply[1])
        return bool(length) and (marked == 1 or length % self.trigger == 0)

    def finished(self, r: Any) -> bool:
        """A drain job's way out: True (mark cleared) when the list is empty, else False (the
        items that arrived are the caller's to drain)."""
        return bool(_FINISH(r, [self.key, self.mark_key], []))

    @contextmanager
    def draining(self) -> Iterator[None]:
        """Around a drain job's body: an exception clears the mark, so that the next push (or
        the reconciler) queues a new job."""
        try:
            yield
        except BaseException:
            cache.soft(lambda r: r.delete(self.mark_key), None)
            raise
