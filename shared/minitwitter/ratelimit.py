"""Rate limits in Redis: fixed windows per client IP and per account, never one shared bucket.

Each request is counted in the bucket of its client IP for its scope (``login`` and ``register``
have their own, stricter budgets; everything else shares the ``api`` budget per IP), and, once
authenticated, in its account's bucket. The tightest decision of the request is reported in
``X-RateLimit-Limit/Remaining/Reset``; a refusal is a 429 with ``Retry-After``. If Redis is down
requests are let through (availability over strictness) and the failure is counted. Counts
ride along with the request's next Redis round trip instead of costing one of their own
(:func:`count`).

Failed attempts at a secret (a password for one username, basic auth from one client IP) have
their own fixed-window budgets (:func:`attempt`): an attempt takes its place before it is
checked, so parallel guesses cannot all slip through, and gives it back when it succeeds. Once
the budget is spent, attempts are refused unchecked until the window ends: the wait is bounded.
"""

from __future__ import annotations

import contextvars
import time
from dataclasses import dataclass
from typing import Any

from . import cache, errors, metrics
from .config import Config, get_config

SCOPES = ("api", "login", "register")


@dataclass(frozen=True)
class Decision:
    limit: int
    remaining: int
    reset_at: int

    @property
    def allowed(self) -> bool:
        return self.remaining >= 0

    def headers(self) -> dict[str, str]:
        return {"X-RateLimit-Limit": str(self.limit),
                "X-RateLimit-Remaining": str(max(0, self.remaining)),
                "X-RateLimit-Reset": str(self.reset_at)}


current: contextvars.ContextVar[Decision | None] = contextvars.ContextVar("ratelimit", default=None)


def ip_limit(scope: str, cfg: Config) -> int:
    return {"login": cfg.rate_limit_login, "register": cfg.rate_limit_register}.get(scope, cfg.rate_limit_ip)


_INCR = """
local used = redis.call('INCR', KEYS[1])
if used == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
"""
_COUNT = _INCR + "return used\n"
#: INCR the window's counter and give a new one its expiry: one round trip, one command.
_HIT = cache.Lua(_COUNT)


#: :data:`_HIT` only while KEYS[2] holds ARGV[2] (a token's version); -1, counting nothing, otherwise.
_HIT_IF = cache.Lua("if redis.call('GET', KEYS[2]) ~= ARGV[2] then return -1 end" + _COUNT)


def count(scope: str, bucket: str, limit: int, window: int,
          only_if: tuple[str, str] | None = None) -> None:
    """Count one request in ``bucket``; the decision is applied when Redis replies.

    The count is deferred (:func:`cache.defer`): it travels with the request's next Redis round
    trip, or alone before the request first queries PostgreSQL or writes anything, or at the end
    of the request, whichever comes first, and a refusal raises :class:`errors.RateLimited` from
    there. Nothing is counted (the request is let through) while Redis is unavailable.
    ``only_if=(key, value)`` counts only while ``key`` holds ``value`` (see :func:`check_account`).
    """
    now = int(time.time())
    start = now - now % window
    key = f"rl:{bucket}:{start}"

    def decide(used: Any) -> None:
        if int(used) >= 0:
            _apply(scope, Decision(limit=limit, remaining=limit - int(used), reset_at=start + window))

    if only_if is None:
        cache.defer(_HIT.command([key], [window + 1]), decide, script=_HIT)
    else:
        cache.defer(_HIT_IF.command([key, only_if[0]], [window + 1, only_if[1]]), decide, script=_HIT_IF)


def _apply(scope: str, decision: Decision) -> None:
    previous = current.get()
    if previous is None or decision.remaining < previous.remaining:
        current.set(decision)
    if not decision.allowed:
        metrics.RATE_LIMITED.labels(scope=scope).inc()
        raise errors.RateLimited(retry_after=decision.reset_at - int(time.time()),
                                 limit=decision.limit, reset_at=decision.reset_at)


#: INCRBY the window's counter by ARGV[2] and give a new one its expiry (ARGV[1]); the new count.
_ADD = cache.Lua("""
local used = redis.call('INCRBY', KEYS[1], ARGV[2])
if used == tonumber(ARGV[2]) then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
return used
""")


def add_ip_counts(counts: dict[str, int], scope: str = "api") -> dict[str, Decision]:
    """Count several requests per client IP at once, in one round trip (requests answered
    without reaching a function: the gateway's micro-cache); the decision per IP. Same windows
    and keys as :func:`check_ip`, so both kinds of request share one budget. Raises Redis errors."""
    cfg = get_config()
    window, limit = cfg.rate_limit_window, ip_limit(scope, cfg)
    now = int(time.time())
    start = now - now % window
    ips = list(counts)
    replies = _ADD.each(cache.client(cfg), [([f"rl:{scope}:ip:{ip}:{start}"], [window + 1, counts[ip]])
                                            for ip in ips])
    return {ip: Decision(limit=limit, remaining=limit - int(used), reset_at=start + window)
            for ip, used in zip(ips, replies, strict=True)}


def check_ip(scope: str, ip: str) -> None:
    """Count a request from ``ip`` in ``scope`` (RateLimited, when over budget, comes when the
    count is settled: see :func:`count`)."""
    cfg = get_config()
    if not cfg.rate_limit_enabled:
        return
    count(scope, f"{scope}:ip:{ip}", ip_limit(scope, cfg), cfg.rate_limit_window)


def check_account(account_id: int, only_if: tuple[str, str] | None = None) -> None:
    """Count a request by an authenticated account (settled as in :func:`count`).

    ``only_if`` lets the count go out before the caller knows its token is still valid, in the
    same round trip as the token-version read, without counting a revoked token's requests
    against the account: Redis counts only while the cached version is the token's.
    """
    cfg = get_config()
    if not cfg.rate_limit_enabled:
        return
    count("account", f"api:acct:{account_id}", cfg.rate_limit_account, cfg.rate_limit_window, only_if)


#: An attempt takes its place in the window's failure count (KEYS[1]); a client named by
#: KEYS[2], when given and present, is counted but never refused (returns 0).
_ATTEMPT = cache.Lua(_INCR + "if #KEYS > 1 and redis.call('EXISTS', KEYS[2]) == 1 then return 0 end\n"
                     "return used\n")
#: A successful attempt gives its place back (only while the window's count exists).
_REFUND = cache.Lua("if redis.call('EXISTS', KEYS[1]) == 1 then return redis.call('DECR', KEYS[1]) end"
                    " return 0")


def attempt(scope: str, subject: str, limit: int, window: int, known: str | None = None) -> str | None:
    """Count an attempt at ``subject``'s secret before it is checked; RateLimited (429) when
    ``limit`` attempts of this window already failed, until the window ends.

    ``known`` names a Redis key whose presence exempts the caller from the refusal (an address
    the account logged in from). Returns the key to :func:`refund` when the attempt succeeds;
    None when nothing was counted (limits off, Redis down: attempts are let through).
    """
    if not get_config().rate_limit_enabled or limit <= 0:
        return None
    now = int(time.time())
    start = now - now % window
    key = f"rl:{scope}:{subject}:{start}"
    keys = [key] if known is None else [key, known]
    used = cache.soft(lambda r: _ATTEMPT(r, keys, [window + 1]), None)
    if used is None:
        return None
    if int(used) > limit:
        metrics.RATE_LIMITED.labels(scope=scope).inc()
        raise errors.RateLimited(retry_after=start + window - now, limit=limit, reset_at=start + window)
    return key


def refund(key: str | None) -> None:
    """Give back the place of an attempt that succeeded (rides with the request's last round
    trip)."""
    if key is not None:
        cache.write_later([_REFUND.command([key], [])], script=_REFUND)

