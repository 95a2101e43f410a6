"""The gateway's micro-cache of anonymous public reads: what the compose stack's NGINX tier does
(``gateway/nginx.conf``), in each gateway process for when no NGINX stands in front (``make run``).

A ``GET`` of ``/function/*`` without an ``Authorization`` header that a function answered 200
is kept for ``GATEWAY_MICROCACHE_TTL`` seconds (default 1; 0 turns it off, as the compose
stack's replicas do behind NGINX) and served, from the server process's event loop, to every
anonymous caller of the same URL meanwhile: the public timeline, a post, an account, a post's
comments. Signed-in requests (every write, the home timeline, ``get-user/me``) are never
answered from it nor stored, so **a writer reads its own writes at once**; an anonymous reader
may see a page up to the TTL old, plus one refresh. Each server process has its own entries
(filled by its own misses), bounded in number and bytes.

One request per URL and process reaches the function at a time: when an entry has expired,
the first caller refreshes it while the others get the expired page (``X-Cache-Status:
UPDATING``, as NGINX's ``proxy_cache_use_stale updating``); with no entry at all, the others
wait for the first caller's answer. Without that, every expiry sent all the concurrent readers
of a page to the function slots at once: with 2,000 connections, hundreds waited past the
queue timeout and got 503s.

A hit reaches no function, yet it is still

- **rate-limited**: it is counted in its client's per-IP budget (the same Redis window as every
  other request). Counts are sent in batches every :data:`FLUSH_INTERVAL` from a thread, not
  per hit; a client found over budget is answered by the function path for the rest of the
  window (which counts it and answers 429), so a client may get up to a batch's worth of hits
  beyond its budget before its 429s start;
- **logged**: one JSON request line, like every request, with its own call id and
  ``"cache": "hit"``;
- **counted**: ``gateway_function_invocation_total`` / ``_seconds`` as an invocation answered
  200, and ``minitwitter_cache_requests_total{cache="gateway_microcache"}``.

Its response carries a call id, start time and duration of its own, the stored response's
other headers (not its ``X-RateLimit-*``: the budget is the caller's, not the filler's) and
``X-Cache-Status: HIT`` (``MISS`` on a response that was stored).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass

#: Entries a process keeps at most, and their bodies' total size.
MAX_ENTRIES = 512
MAX_BYTES = 8 * 1024 * 1024
#: Seconds between two sends of the hits' rate-limit counts.
FLUSH_INTERVAL = 0.1
#: Seconds an expired entry is still served while one request refreshes it.
STALE_FOR = 10.0
#: Response headers that belong to one request, not to the page: never stored.
PER_REQUEST_HEADERS = frozenset({"x-call-id", "x-start-time", "x-duration-seconds", "x-ratelimit-limit",
                                 "x-ratelimit-remaining", "x-ratelimit-reset", "content-length"})


@dataclass(frozen=True, slots=True)
class Entry:
    """A stored 200: its headers (without the per-request ones) and body, until ``expires``."""

    expires: float
    headers: list[tuple[str, str]]
    body: bytes


class MicroCache:
    """The entries of one server process, keyed by path and query (used on its event loop only)."""

    def __init__(self, ttl: float, max_entries: int = MAX_ENTRIES, max_bytes: int = MAX_BYTES) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.size = 0
        self._entries: OrderedDict[str, Entry] = OrderedDict()

    def get(self, key: str, now: float) -> Entry | None:
        """The entry for ``key``, fresh or not (None once it is past :data:`STALE_FOR`)."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry.expires + STALE_FOR <= now:
            self._drop(key)
            return None
        return entry

    def put(self, key: str, headers: list[tuple[str, str]], body: bytes, now: float) -> None:
        """Store a 200 (oldest entries go first when a bound is reached)."""
        if len(body) > self.max_bytes // 4:
            return
        if key in self._entries:
            self._drop(key)
        kept = [(k, v) for k, v in headers if k.lower() not in PER_REQUEST_HEADERS]
        self._entries[key] = Entry(now + self.ttl, kept, body)
        self.size += len(body)
        while len(self._entries) > self.max_entries or self.size > self.max_bytes:
            self._drop(next(iter(self._entries)))

    def _drop(self, key: str) -> None:
        self.size -= len(self._entries.pop(key).body)


class HitCounts:
    """Hits per client address waiting to be counted in Redis, and the addresses found over
    budget (until their window ends). Used on the event loop; :meth:`take` hands a batch to
    the thread that sends it, :meth:`refuse` takes its verdicts back."""

    def __init__(self) -> None:
        self.pending: dict[str, int] = {}
        self._refused: dict[str, float] = {}

    def allows(self, client: str, now: float) -> bool:
        """Count a hit of ``client``; False (count nothing) while it is over budget."""
        until = self._refused.get(client)
        if until is not None:
            if until > now:
                return False
            del self._refused[client]
        self.pending[client] = self.pending.get(client, 0) + 1
        return True

    def take(self) -> dict[str, int]:
        batch, self.pending = self.pending, {}
        return batch

    def refuse(self, client: str, until: float) -> None:
        """``client`` is over budget until ``until`` (``time.time()`` seconds)."""
        self._refused[client] = until


def wall_to_monotonic(wall: float) -> float:
    """A ``time.time()`` instant as ``time.monotonic()`` time (the loop's clock)."""
    return time.monotonic() + (wall - time.time())
