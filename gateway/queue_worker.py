"""The queue-worker: RQ jobs for async invocations and their callbacks.

``/async-function/<name>`` stores a faas-provider ``QueueRequest``-shaped message as an RQ job.
A worker runs :func:`run_invocation`, which invokes the function through the gateway exactly like
the OpenFaaS CE queue-worker (always POST, original headers, ``/function/<name><Path>?<query>``),
then queues :func:`deliver_callback` when an ``X-Callback-Url`` was given. Callback deliveries are
retried with exponential backoff by RQ's scheduler (the worker runs it).

Credentials stay out of the jobs, whose records RQ keeps for 10 minutes after they succeed and a
day after they fail: the request's body and its ``Authorization``, ``Proxy-Authorization`` and
``Cookie`` headers (a bearer token, a password to ``login``) wait in a key of their own
(:data:`PAYLOAD_TTL`, as long as the job may wait in the queue) that the worker takes, reading
and deleting it, when it runs the job; the function's answer (an access token from ``login``)
waits the same way for its callback, deleted once delivered, refused or failed for good.
"""

from __future__ import annotations

import base64
import logging
import os
import time
from typing import Any

import httpx
import orjson
import redis
from rq import Queue, Retry, get_current_job

from minitwitter import cache, errors, identity, logs, metrics, netguard
from minitwitter.config import Config, get_config

log = logging.getLogger("minitwitter.queue_worker")

USER_AGENT = "openfaas-ce/nats-queue-worker"
#: Seconds between callback retries (exponential backoff; the last value repeats).
CALLBACK_BACKOFF = [1, 2, 4, 8, 16, 32, 64]
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host", "te",
              "upgrade", "proxy-authorization", "proxy-authenticate", "trailer"}
#: Request headers the worker does not replay: the client's address travels signed instead
#: (:mod:`minitwitter.identity`); from the worker, a forwarded address would be believed.
NOT_REPLAYED = HOP_BY_HOP | {"user-agent", "x-forwarded-for", "forwarded", "x-real-ip",
                             identity.HEADER.lower()}
#: Request headers that are credentials: kept out of the job with the body.
CREDENTIALS = {"authorization", "proxy-authorization", "cookie"}
#: Seconds an async request may wait in the queue (its job and its credentials expire then).
PAYLOAD_TTL = 3600
#: The queues every queue worker takes jobs from, in priority order: user-visible async calls
#: first, then verdicts, then deliveries (and home-feed fan-outs).
QUEUES = ("faas-request", "sentiment", "callbacks", "default")


def queue_names(config: Config | None = None) -> list[str]:
    """:data:`QUEUES` with the async invocations' queue named as configured (``ASYNC_QUEUE``)."""
    cfg = config or get_config()
    return [cfg.async_queue if q == "faas-request" else q for q in QUEUES]


def queue(name: str, config: Config | None = None) -> Queue:
    """An RQ queue on the configured Redis."""
    return Queue(name, connection=cache.client(config or get_config()))


def _stash(kind: str, value: dict[str, Any], ttl: int, config: Config) -> str:
    """Keep ``value`` in a key of its own for ``ttl`` seconds; returns the key."""
    key = f"async:{kind}:{os.urandom(16).hex()}"
    cache.client(config).set(key, orjson.dumps(value), ex=ttl)
    return key


def enqueue_invocation(message: dict[str, Any], config: Config) -> None:
    """Store an async invocation, its body and credentials apart from the job (which keeps the
    rest); raises DependencyUnavailable when Redis cannot take it."""
    headers = message.get("Header") or []
    private = {"Header": [h for h in headers if h[0].lower() in CREDENTIALS], "Body": message.get("Body") or ""}
    public = {**message, "Header": [h for h in headers if h[0].lower() not in CREDENTIALS], "Body": ""}
    try:
        public["PayloadKey"] = _stash("request", private, PAYLOAD_TTL, config)
        queue(config.async_queue, config).enqueue(
            run_invocation, public, ttl=PAYLOAD_TTL, result_ttl=600, failure_ttl=86400,
            description=f"async {message['Function']}")
    except (redis.RedisError, OSError) as exc:
        cache.mark_down(exc)
        raise errors.DependencyUnavailable("the queue is unavailable") from exc


def _request(message: dict[str, Any], cfg: Config) -> tuple[list[tuple[str, str]], bytes] | None:
    """The headers and body to send for a queued invocation; None when its body and credentials
    are gone (it waited longer than :data:`PAYLOAD_TTL`). Takes them out of Redis."""
    headers = [(k, v) for k, v in message.get("Header") or []]
    body_b64 = message.get("Body") or ""
    if message.get("PayloadKey"):
        raw = cache.client(cfg).getdel(message["PayloadKey"])
        if raw is None:
            return None
        private = orjson.loads(raw)
        headers += [(k, v) for k, v in private["Header"]]
        body_b64 = private["Body"]
    return [(k, v) for k, v in headers if k.lower() not in NOT_REPLAYED], base64.b64decode(body_b64)


def run_invocation(message: dict[str, Any]) -> int:
    """Invoke the function through the gateway; queue the callback; return the status code."""
    cfg = get_config()
    name = message["Function"]
    call_id = message.get("CallId")
    with logs.context(function=name, call_id=call_id):
        url = f"{cfg.gateway_url}/function/{name}{message.get('Path') or ''}"
        if message.get("QueryString"):
            url += "?" + message["QueryString"]
        started = time.perf_counter()
        request = _request(message, cfg)
        if request is None:
            log.error("async request expired before a worker took it")
            status, resp_headers, resp_body = 503, [], b""
        else:
            headers, body = request
            headers.append(("User-Agent", USER_AGENT))
            if message.get("ClientIp") and cfg.jwt_secret:
                headers.append((identity.HEADER, identity.sign(message["ClientIp"], call_id or "", cfg.jwt_secret)))
            try:
                with httpx.Client(timeout=cfg.function_timeout + 5, trust_env=False) as client:
                    response = client.post(url, content=body, headers=headers)
                status, resp_headers, resp_body = response.status_code, list(response.headers.items()), response.content
            except httpx.HTTPError as exc:
                log.error("async invocation could not reach the gateway", extra={"error": type(exc).__name__})
                status, resp_headers, resp_body = 503, [], b""
        duration = time.perf_counter() - started
        metrics.ASYNC_INVOCATIONS.labels(name, "ok" if status < 400 else "error").inc()
        log.info("async invocation finished", extra={"status": status,
                                                     "duration_ms": round(duration * 1000, 3)})
        callback = message.get("CallbackUrl")
        if callback:
            # The function's headers (httpx spells them in lower case), then the worker's:
            # each name once, the worker's value winning, as the OpenFaaS queue-worker does.
            cb_headers = netguard.merge_headers({k: v for k, v in resp_headers if k.lower() not in HOP_BY_HOP}, {
                "X-Duration-Seconds": f"{duration:f}",
                "X-Function-Status": str(status),
                "X-Function-Name": name,
                "X-Call-Id": call_id or "",
            })
            attempts = max(1, cfg.async_callback_attempts)
            # Kept while the deliveries may go on (no retry waits longer than the longest backoff).
            result = _stash("result", {"headers": cb_headers, "body": base64.b64encode(resp_body).decode("ascii")},
                            PAYLOAD_TTL + attempts * max(CALLBACK_BACKOFF), cfg)
            queue("callbacks", cfg).enqueue(
                deliver_callback, callback, result, name, call_id or "",
                retry=Retry(max=attempts - 1, interval=CALLBACK_BACKOFF) if attempts > 1 else None,
                description=f"callback {name}", result_ttl=600, failure_ttl=86400)
        return status


def deliver_callback(url: str, result_key: str, function: str, call_id: str) -> int:
    """POST an async result (kept under ``result_key``) to its callback URL; raising makes RQ
    retry with backoff. The result is deleted once delivered, refused, or failed for good."""
    cfg = get_config()
    r = cache.client(cfg)
    with logs.context(function=function, call_id=call_id):
        raw = r.get(result_key)
        if raw is None:
            metrics.CALLBACKS.labels(kind="async-function", outcome="error").inc()
            log.warning("callback result expired before its delivery")
            return 0
        result = orjson.loads(raw)
        try:
            delivery = netguard.post(url, base64.b64decode(result["body"]), result["headers"],
                                     allow_hosts=cfg.callback_allow_hosts, timeout=cfg.callback_timeout,
                                     max_response_bytes=cfg.callback_max_response_bytes)
        except netguard.CallbackRefused as exc:
            r.delete(result_key)
            metrics.CALLBACKS.labels(kind="async-function", outcome="refused").inc()
            log.warning("callback refused", extra={"reason": exc.details})
            return 0  # not retried: it will never be allowed
        except httpx.HTTPError as exc:
            _forget_after_last_attempt(r, result_key)
            metrics.CALLBACKS.labels(kind="async-function", outcome="error").inc()
            log.warning("callback failed", extra={"error": type(exc).__name__})
            raise
        if delivery.status >= 300:
            _forget_after_last_attempt(r, result_key)
            metrics.CALLBACKS.labels(kind="async-function", outcome="error").inc()
            log.warning("callback rejected", extra={"status": delivery.status})
            raise RuntimeError(f"callback receiver answered {delivery.status}")
        r.delete(result_key)
        metrics.CALLBACKS.labels(kind="async-function", outcome="delivered").inc()
        log.info("callback delivered", extra={"status": delivery.status})
        return delivery.status


def _forget_after_last_attempt(r: redis.Redis, key: str) -> None:
    """Delete a result whose delivery fails for the last time (RQ retries none after it)."""
    job = get_current_job()
    if job is None or not job.retries_left:
        r.delete(key)
