"""The queue-worker: RQ jobs for async invocations and their callbacks.

``/async-function/<name>`` stores a faas-provider ``QueueRequest``-shaped message as an RQ job.
A worker runs :func:`run_invocation`, which invokes the function through the gateway exactly like
the OpenFaaS CE queue-worker (always POST, original headers, ``/function/<name><Path>?<query>``),
then queues :func:`deliver_callback` when an ``X-Callback-Url`` was given. Callback deliveries are
retried with exponential backoff by RQ's scheduler (the worker runs it).
"""

from __future__ import annotations

import base64
import logging
import time
from typing import Any

import httpx
import redis
from rq import Queue, Retry

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


def queue(name: str, config: Config | None = None) -> Queue:
    """An RQ queue on the configured Redis."""
    return Queue(name, connection=cache.client(config or get_config()))


def enqueue_invocation(message: dict[str, Any], config: Config) -> None:
    """Store an async invocation; raises DependencyUnavailable when Redis cannot take it."""
    try:
        queue(config.async_queue, config).enqueue(
            run_invocation, message, result_ttl=600, failure_ttl=86400, description=f"async {message['Function']}")
    except (redis.RedisError, OSError) as exc:
        cache.mark_down(exc)
        raise errors.DependencyUnavailable("the queue is unavailable") from exc


def run_invocation(message: dict[str, Any]) -> int:
    """Invoke the function through the gateway; queue the callback; return the status code."""
    cfg = get_config()
    name = message["Function"]
    call_id = message.get("CallId")
    with logs.context(function=name, call_id=call_id):
        url = f"{cfg.gateway_url}/function/{name}{message.get('Path') or ''}"
        if message.get("QueryString"):
            url += "?" + message["QueryString"]
        headers = [(k, v) for k, v in message.get("Header") or [] if k.lower() not in NOT_REPLAYED]
        headers.append(("User-Agent", USER_AGENT))
        if message.get("ClientIp") and cfg.jwt_secret:
            headers.append((identity.HEADER, identity.sign(message["ClientIp"], call_id or "", cfg.jwt_secret)))
        body = base64.b64decode(message.get("Body") or "")
        started = time.perf_counter()
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
            queue("callbacks", cfg).enqueue(
                deliver_callback, callback, base64.b64encode(resp_body).decode("ascii"), cb_headers,
                retry=Retry(max=cfg.async_callback_attempts - 1, interval=CALLBACK_BACKOFF),
                description=f"callback {name}", result_ttl=600, failure_ttl=86400)
        return status


def deliver_callback(url: str, body_b64: str, headers: dict[str, str]) -> int:
    """POST an async result to its callback URL; raising makes RQ retry with backoff."""
    cfg = get_config()
    with logs.context(function=headers.get("X-Function-Name"), call_id=headers.get("X-Call-Id")):
        try:
            delivery = netguard.post(url, base64.b64decode(body_b64), headers,
                                     allow_hosts=cfg.callback_allow_hosts, timeout=cfg.callback_timeout,
                                     max_response_bytes=cfg.callback_max_response_bytes)
        except netguard.CallbackRefused as exc:
            metrics.CALLBACKS.labels(kind="async-function", outcome="refused").inc()
            log.warning("callback refused", extra={"reason": exc.details})
            return 0  # not retried: it will never be allowed
        except httpx.HTTPError as exc:
            metrics.CALLBACKS.labels(kind="async-function", outcome="error").inc()
            log.warning("callback failed", extra={"error": type(exc).__name__})
            raise
        if delivery.status >= 300:
            metrics.CALLBACKS.labels(kind="async-function", outcome="error").inc()
            log.warning("callback rejected", extra={"status": delivery.status})
            raise RuntimeError(f"callback receiver answered {delivery.status}")
        metrics.CALLBACKS.labels(kind="async-function", outcome="delivered").inc()
        log.info("callback delivered", extra={"status": delivery.status})
        return delivery.status
