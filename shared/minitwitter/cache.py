"""Redis: the cache, the rate-limit store and the job queue's broker.

Redis is never the source of truth. Callers use :func:`soft` for cache work so that an
unreachable Redis degrades to "cache miss" instead of an error; after a failure the client stays
"down" for a short back-off so requests do not each wait for a connection timeout.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TypeVar

import redis

from .config import Config, get_config

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Seconds Redis is treated as down after a connection failure before it is tried again.
DOWN_BACKOFF_SECONDS = 2.0

_lock = threading.Lock()
_client: redis.Redis | None = None
_client_url: str | None = None
_down_until = 0.0


def client(config: Config | None = None) -> redis.Redis:
    """The process-wide Redis client (thread-safe connection pool), created on first use."""
    global _client, _client_url
    cfg = config or get_config()
    if _client is None or _client_url != cfg.redis_url:
        with _lock:
            if _client is None or _client_url != cfg.redis_url:
                _client = redis.Redis.from_url(
                    cfg.redis_url,
                    socket_timeout=cfg.redis_timeout,
                    socket_connect_timeout=cfg.redis_timeout,
                    health_check_interval=30,
                )
                _client_url = cfg.redis_url
    return _client


def reset() -> None:
    """Forget the client and the down-state (tests, and after fork)."""
    global _client, _client_url, _down_until
    with _lock:
        if _client is not None:
            _client.close()
        _client, _client_url, _down_until = None, None, 0.0


def is_down() -> bool:
    """True while Redis is in its failure back-off window."""
    return time.monotonic() < _down_until


def mark_down(exc: Exception) -> None:
    """Record a Redis failure; callers skip Redis until the back-off ends."""
    global _down_until
    if not is_down():
        log.warning("redis unavailable", extra={"error": type(exc).__name__})
        from . import metrics

        metrics.DEPENDENCY_ERRORS.labels(dependency="redis").inc()
    _down_until = time.monotonic() + DOWN_BACKOFF_SECONDS


def soft(operation: Callable[[redis.Redis], T], default: T) -> T:
    """Run ``operation(client)``; on any Redis failure return ``default`` instead of raising."""
    if is_down():
        return default
    try:
        return operation(client())
    except (redis.RedisError, OSError) as exc:
        mark_down(exc)
        return default


def ping() -> bool:
    """True when Redis answers PING."""
    try:
        return bool(client().ping())
    except (redis.RedisError, OSError):
        return False
