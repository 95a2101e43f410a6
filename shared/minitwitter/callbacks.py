"""Sentiment callbacks: registered with a write, delivered signed once the verdict exists.

``create-post``, ``update-post`` and ``add-comment`` accept ``X-Callback-Url`` (or
``callback_url`` in the body); :func:`validate_url` checks it at request time and
:func:`register` stores it in ``sentiment_callbacks`` inside the write's transaction. When the
worker stores the verdict (or the item finally fails) it records one ``callback_deliveries`` row
per registration and an RQ job on the ``callbacks`` queue POSTs it. Deliveries are retried with
exponential backoff (``CALLBACK_RETRY_BASE`` doubling) up to ``CALLBACK_MAX_ATTEMPTS``, sent with
a timeout, no redirects and a response size cap, and refused for loopback, private, link-local
and metadata addresses unless ``CALLBACK_ALLOW_HOSTS`` names them. Every attempt is recorded in
PostgreSQL (attempts, last status and error, next attempt).

The request::

    POST <callback url>
    Content-Type: application/json
    X-Call-Id: <call id of the write that registered the callback>
    X-Function-Name: create-post | update-post | add-comment
    X-Function-Status: 200 (verdict stored) | 503 (analysis failed)
    X-Minitwitter-Timestamp: <unix seconds>
    X-Minitwitter-Signature: sha256=<hex HMAC-SHA256>

    {"id": "42", "type": "post",
     "sentiment": {"status": "done", "label": "positive", "score": 0.8, "model": "qwen2.5:1.5b"},
     "call_id": "..."}

Verifying a callback (receivers should do all three steps)::

    import hashlib, hmac, time

    def verify(key: bytes, headers, body: bytes, tolerance: int = 300) -> bool:
        timestamp = headers["X-Minitwitter-Timestamp"]
        if abs(time.time() - int(timestamp)) > tolerance:      # reject replays
            return False
        expected = hmac.new(key, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
        return hmac.compare_digest("sha256=" + expected, headers["X-Minitwitter-Signature"])

``key`` is the content of the ``callback-signing-key`` secret; ``body`` is the raw request body,
byte for byte, before any JSON parsing. Each retry is signed again with a fresh timestamp. A
delivery may arrive more than once (at-least-once): use ``X-Call-Id`` plus ``id`` to deduplicate.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from datetime import timedelta
from typing import Any

import orjson
import redis
from rq import Queue

from . import cache, db, errors, logs, metrics, netguard
from .config import Config, get_config

log = logging.getLogger(__name__)

CALLBACK_QUEUE = "callbacks"
#: Seconds a pending delivery may be overdue before the reconciler queues it again.
OVERDUE_SECONDS = 10
MAX_BACKOFF_SECONDS = 3600
KINDS = ("post", "comment")


def validate_url(url: str) -> str:
    """Check a callback URL at request time; returns it trimmed or raises ValidationFailed.

    Raises ``errors.ValidationFailed`` (details ``{"callback_url": [...]}``) for anything that is
    not an absolute http(s) URL or that resolves to a forbidden address not allowed by
    ``CALLBACK_ALLOW_HOSTS``.
    """
    if not isinstance(url, str) or not url.strip():
        raise errors.ValidationFailed(details={"callback_url": ["must be an absolute http or https URL"]})
    url = url.strip()
    netguard.resolve(url, get_config().callback_allow_hosts)
    return url


def register(kind: str, item_id: int, version: int, url: str, call_id: str | None) -> None:
    """Remember a callback for the verdict of one item version (inside the caller's transaction)."""
    if kind not in KINDS:
        raise ValueError(f"unknown callback kind {kind!r}")
    db.run("INSERT INTO sentiment_callbacks (kind, item_id, version, url, call_id)"
           " VALUES (:k, :i, :v, :u, :c)", k=kind, i=item_id, v=version, u=url, c=call_id)


def function_name(kind: str, version: int) -> str:
    """The function whose write registered the callback."""
    if kind == "comment":
        return "add-comment"
    return "create-post" if version <= 1 else "update-post"


def create_deliveries(kind: str, entries: list[tuple[int, int, int, dict[str, Any]]], *,
                      consume: bool = True) -> list[int]:
    """Record deliveries for items that got a verdict; returns the new delivery ids.

    ``entries`` are ``(item_id, version, post_id, sentiment_json)``. Registrations for that
    version or an older one are used (an edit before the verdict still gets its answer);
    ``consume`` deletes them (a final verdict), otherwise they stay for a later verdict.
    Must run inside the transaction that stores the verdict.
    """
    if not entries:
        return []
    by_id = {item_id: (version, sentiment) for item_id, version, _post, sentiment in entries}
    rows = db.run("SELECT id, item_id, version, url, call_id FROM sentiment_callbacks"
                  " WHERE kind = :k AND item_id = ANY(CAST(:ids AS bigint[])) ORDER BY id",
                  k=kind, ids=list(by_id))
    used: list[int] = []
    urls: list[str] = []
    payloads: list[str] = []
    call_ids: list[str | None] = []
    items: list[int] = []
    names: list[str] = []
    for reg_id, item_id, reg_version, url, call_id in rows:
        version, sentiment = by_id[int(item_id)]
        if reg_version > version:
            continue
        used.append(int(reg_id))
        items.append(int(item_id))
        urls.append(url)
        call_ids.append(call_id)
        names.append(function_name(kind, int(reg_version)))
        payloads.append(orjson.dumps({"id": str(item_id), "type": kind, "sentiment": sentiment,
                                      "call_id": call_id}).decode("utf-8"))
    if not used:
        return []
    created = db.run(
        "INSERT INTO callback_deliveries (kind, item_id, url, payload, call_id, function_name)"
        " SELECT CAST(:k AS text), * FROM unnest(CAST(:items AS bigint[]), CAST(:urls AS text[]),"
        " CAST(:payloads AS text[]), CAST(:call_ids AS text[]), CAST(:names AS text[])) RETURNING id",
        k=kind, items=items, urls=urls, payloads=payloads, call_ids=call_ids, names=names)
    if consume:
        db.run("DELETE FROM sentiment_callbacks WHERE id = ANY(CAST(:ids AS bigint[]))", ids=used)
    return [int(r[0]) for r in created]


def _queue(config: Config | None = None) -> Queue:
    return Queue(CALLBACK_QUEUE, connection=cache.client(config))


def enqueue_deliveries(ids: list[int], config: Config | None = None) -> None:
    """Queue delivery jobs; on Redis trouble the reconciler queues them later."""
    if not ids:
        return
    try:
        queue = _queue(config)
        with queue.connection.pipeline() as pipe:
            for delivery_id in ids:
                queue.enqueue(deliver, delivery_id, result_ttl=0, failure_ttl=86400, pipeline=pipe)
            pipe.execute()
    except (redis.RedisError, OSError) as exc:
        cache.mark_down(exc)


def sign(key: str, timestamp: str, body: bytes) -> str:
    """``sha256=<hex>``: HMAC-SHA256 of ``<timestamp>.<body>`` with the callback signing key."""
    digest = hmac.new(key.encode("utf-8"), timestamp.encode("ascii") + b"." + body, hashlib.sha256)
    return "sha256=" + digest.hexdigest()


def backoff(attempts: int, cfg: Config) -> float:
    """Seconds before attempt ``attempts + 1`` (exponential, capped)."""
    return float(min(cfg.callback_retry_base * (2 ** max(0, attempts - 1)), MAX_BACKOFF_SECONDS))


def deliver(delivery_id: int) -> str:
    """RQ job: one delivery attempt; records the outcome and schedules the next attempt."""
    import httpx  # here, not at the top: see netguard.post (only deliveries need it)

    cfg = get_config()
    lease = cfg.callback_timeout + 10
    row = db.one(
        "UPDATE callback_deliveries SET next_attempt_at = now() + make_interval(secs => :lease)"
        " WHERE id = :id AND status = 'pending' AND next_attempt_at <= now() + interval '1 second'"
        " RETURNING kind, url, payload, call_id, function_name, attempts", id=delivery_id, lease=lease)
    if row is None:
        return "skipped"  # delivered, given up, or another attempt holds the lease
    kind, url, payload, call_id, name, attempts = row
    body = payload.encode("utf-8")
    sentiment = orjson.loads(body).get("sentiment") or {}
    timestamp = str(int(time.time()))
    headers = {
        "X-Call-Id": call_id or "",
        "X-Function-Name": name or function_name(kind, 1),
        "X-Function-Status": "200" if sentiment.get("status") == "done" else "503",
        "X-Minitwitter-Timestamp": timestamp,
        "X-Minitwitter-Signature": sign(cfg.callback_signing_key, timestamp, body),
    }
    attempts += 1
    status: int | None = None
    with logs.context(function=name, call_id=call_id):
        try:
            delivery = netguard.post(url, body, headers, allow_hosts=cfg.callback_allow_hosts,
                                     timeout=cfg.callback_timeout,
                                     max_response_bytes=cfg.callback_max_response_bytes)
            status = delivery.status
            error = None if 200 <= status < 300 else f"receiver answered {status}"
        except netguard.CallbackRefused as exc:
            return _finish(delivery_id, attempts, "refused", None, _reason(exc), kind)
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"[:500]
        if error is None:
            return _finish(delivery_id, attempts, "delivered", status, None, kind)
        if attempts >= cfg.callback_max_attempts:
            return _finish(delivery_id, attempts, "failed", status, error, kind)
        delay = backoff(attempts, cfg)
        db.run("UPDATE callback_deliveries SET attempts = :a, last_status = :s, last_error = :e,"
               " next_attempt_at = now() + make_interval(secs => :d) WHERE id = :id",
               a=attempts, s=status, e=error, d=delay, id=delivery_id)
        metrics.CALLBACKS.labels(kind=kind, outcome="retry").inc()
        log.warning("callback attempt failed", extra={"delivery_id": delivery_id, "attempt": attempts,
                                                       "error": error, "retry_in": delay})
        try:
            _queue(cfg).enqueue_in(timedelta(seconds=delay), deliver, delivery_id, result_ttl=0,
                                   failure_ttl=86400)
        except (redis.RedisError, OSError) as exc:
            cache.mark_down(exc)
        return "retry"


def _reason(exc: errors.MinitwitterError) -> str:
    reasons = exc.details.get("callback_url") if isinstance(exc.details, dict) else None
    return "; ".join(reasons) if reasons else exc.message


def _finish(delivery_id: int, attempts: int, status: str, http_status: int | None,
            error: str | None, kind: str) -> str:
    db.run("UPDATE callback_deliveries SET status = :st, attempts = :a, last_status = :s,"
           " last_error = :e, delivered_at = CASE WHEN :st = 'delivered' THEN now() END"
           " WHERE id = :id", st=status, a=attempts, s=http_status, e=error, id=delivery_id)
    metrics.CALLBACKS.labels(kind=kind, outcome=status).inc()
    level = logging.INFO if status == "delivered" else logging.WARNING
    log.log(level, "callback " + status, extra={"delivery_id": delivery_id, "attempts": attempts,
                                               "http_status": http_status, "error": error})
    return status


def requeue_overdue(config: Config | None = None) -> int:
    """Queue deliveries whose attempt is overdue (their job was lost with Redis or a worker)."""
    rows = db.run("SELECT id FROM callback_deliveries WHERE status = 'pending' AND kind IN ('post', 'comment')"
                  " AND next_attempt_at <= now() - make_interval(secs => :s) ORDER BY id LIMIT 1000",
                  s=OVERDUE_SECONDS)
    ids = [int(r[0]) for r in rows]
    enqueue_deliveries(ids, config)
    return len(ids)
