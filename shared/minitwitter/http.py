"""The HTTP boundary shared by every function: parsing, responses, and the one error mapping.

A handler is ``handle(request: flask.Request)``. Decorated with :func:`endpoint`, it gets the
method check (405 + ``Allow``), the call id, one JSON log line, metrics and the mapping of
:mod:`errors` to ``{"error", "details"}`` bodies. Nothing else in the library knows HTTP.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping
from functools import lru_cache, wraps
from typing import Any

import flask
import orjson
from werkzeug.wrappers import Request

from . import cache, errors, identity, logs, metrics, ratelimit, runtime
from .config import get_config
from .jsonshape import parse_id

log = logging.getLogger("minitwitter.request")

JSON = "application/json"
Handler = Callable[[flask.Request], flask.Response]


def dumps(body: Any) -> bytes:
    """Serialise a response body (orjson: fast, strict UTF-8, no NaN)."""
    return orjson.dumps(body)


def respond(status: int, body: Any = None, headers: Mapping[str, str] | None = None) -> flask.Response:
    """A JSON response; ``body=None`` gives an empty body (204)."""
    if body is None:
        response = flask.Response(b"", status=status)
        del response.headers["Content-Type"]  # nothing to type (werkzeug would say text/html)
    else:
        response = flask.Response(dumps(body), status=status, mimetype=JSON)
    if headers:
        for key, value in headers.items():
            response.headers[key] = value
    return response


def error_response(exc: errors.MinitwitterError) -> flask.Response:
    """The one place where domain errors become HTTP responses."""
    body: dict[str, Any] = {"error": exc.message, "details": exc.details}
    headers: dict[str, str] = {}
    if isinstance(exc, errors.MethodNotAllowed):
        headers["Allow"] = ", ".join(exc.allowed)
    if isinstance(exc, errors.RateLimited):
        headers["Retry-After"] = str(exc.retry_after)
        headers["X-RateLimit-Limit"] = str(exc.limit)
        headers["X-RateLimit-Remaining"] = "0"
        headers["X-RateLimit-Reset"] = str(exc.reset_at)
    if isinstance(exc, errors.Unauthorized):
        headers["WWW-Authenticate"] = 'Bearer realm="minitwitter"'
    if isinstance(exc, errors.DependencyUnavailable):
        headers["Retry-After"] = "5"
    return respond(exc.status, body, headers)


def add_missing_headers(response: flask.Response, headers: Mapping[str, str]) -> None:
    """Add each of ``headers`` the response does not have yet (what ``Headers.setdefault`` does,
    without the exception werkzeug raises and catches inside it for every absent header)."""
    present = {key.lower() for key, _ in response.headers}
    for key, value in headers.items():
        if key.lower() not in present:
            response.headers.add(key, value)


def new_call_id() -> str:
    """A new call id: a random (version 4) UUID, as ``str(uuid.uuid4())`` writes it.

    Built from the random bytes directly: with the ``UUID`` object's checks and integer
    formatting ``uuid4`` took ~20,000 instructions, on every request that arrives without an
    id; this takes ~10,000.
    """
    raw = bytearray(os.urandom(16))
    raw[6] = raw[6] & 0x0F | 0x40  # version 4
    raw[8] = raw[8] & 0x3F | 0x80  # the RFC 4122 variant
    digits = raw.hex()
    return f"{digits[:8]}-{digits[8:12]}-{digits[12:16]}-{digits[16:20]}-{digits[20:]}"


def call_id(request: flask.Request) -> str:
    """The OpenFaaS call id of this request (generated when the caller sent none)."""
    value = request.headers.get("X-Call-Id", "").strip()
    return value[:128] if value else new_call_id()


def read_body(request: flask.Request, limit: int | None = None) -> bytes:
    """The raw body, refusing more than ``limit`` bytes (413) without reading it all."""
    max_bytes = limit if limit is not None else get_config().max_body_bytes
    declared = request.content_length
    if declared is not None and declared > max_bytes:
        raise errors.PayloadTooLarge(details={"max_bytes": max_bytes})
    data = request.stream.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise errors.PayloadTooLarge(details={"max_bytes": max_bytes})
    return data


def parse_json(request: flask.Request, *, allow_empty: bool = False) -> dict[str, Any]:
    """The request body as a JSON object; 400 when it is not one, 413 when it is too large."""
    data = read_body(request)
    if not data.strip():
        if allow_empty:
            return {}
        raise errors.BadRequest("a JSON object body is required")
    ctype = request.mimetype
    if ctype and ctype not in (JSON, "text/plain") and not ctype.endswith("+json"):
        raise errors.BadRequest("body must be JSON", {"content_type": ctype})
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise errors.BadRequest("malformed JSON", {"position": exc.pos}) from None
    if not isinstance(value, dict):
        raise errors.BadRequest("the JSON body must be an object")
    return value


def path_parts(request: flask.Request) -> list[str]:
    """Path segments after ``/function/<name>`` (the gateway strips the prefix)."""
    return [p for p in request.path.split("/") if p]


def path_id(request: flask.Request, noun: str) -> int:
    """The single id of a ``/<id>`` path; 404 ("<noun> not found") for any other path."""
    parts = path_parts(request)
    value = parse_id(parts[0]) if len(parts) == 1 else None
    if value is None:
        raise errors.NotFound(f"{noun} not found")
    return value


@lru_cache(maxsize=16)
def _networks(cidrs: tuple[str, ...]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(c, strict=False) for c in cidrs)


@lru_cache(maxsize=4096)
def _is_trusted(addr: str, cidrs: tuple[str, ...]) -> bool:
    """Whether ``addr`` lies in one of ``cidrs`` (memoised: parsing an address costs ~10 us and
    a server sees few distinct peers)."""
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return False
    return any(ip in net for net in _networks(cidrs))


def client_ip(request: Request) -> str:
    """The caller's address: ``X-Forwarded-For`` is believed only from a trusted proxy.

    Walks the forwarded chain from the right, skipping trusted proxies, so a client cannot
    forge its address by sending its own ``X-Forwarded-For``. An async invocation's client, as
    the gateway decided it at submission, comes first (:mod:`identity`).
    """
    carried: str | None = request.environ.get(identity.ENVIRON_KEY)
    if carried:
        return carried
    return client_address(request.remote_addr or "0.0.0.0", request.headers.get("X-Forwarded-For", ""))


def client_address(peer: str, forwarded_for: str) -> str:
    """The client's address from the connection's ``peer`` and its ``X-Forwarded-For`` header
    (see :func:`client_ip`)."""
    proxies = get_config().trusted_proxies

    def is_trusted(addr: str) -> bool:
        return _is_trusted(addr, proxies)

    if not is_trusted(peer):
        return peer
    forwarded = [a.strip() for a in forwarded_for.split(",") if a.strip()]
    for addr in reversed(forwarded):
        if not is_trusted(addr):
            try:
                return str(ipaddress.ip_address(addr))
            except ValueError:
                return peer
    return forwarded[0] if forwarded else peer


def endpoint(name: str, methods: Iterable[str], *, rate_scope: str = "api",
             root_only: bool = False) -> Callable[[Handler], Handler]:
    """Wrap a handler with the method check, rate limits, error mapping, logging and metrics.

    ``rate_scope`` picks the per-IP budget (``api``, or the stricter ``login``/``register``);
    :func:`auth.require_account` adds the per-account budget once the caller is known.
    ``root_only`` answers 404 for any sub-path (functions that take no path parameters).
    """
    allowed = tuple(sorted({m.upper() for m in methods}))

    def decorate(handler: Handler) -> Handler:
        @wraps(handler)
        def handle(request: flask.Request) -> flask.Response:
            started = time.perf_counter()
            cid = call_id(request)
            limit_token = ratelimit.current.set(None)
            cache.begin_request()
            with logs.context(function=name, call_id=cid):
                try:
                    try:
                        if request.method not in allowed:
                            raise errors.MethodNotAllowed(allowed)
                        if root_only and path_parts(request):
                            raise errors.NotFound()
                        ratelimit.check_ip(rate_scope, client_ip(request))
                        response = handler(request)
                    finally:
                        # What no round trip carried goes now, before the response: the
                        # handler's post-commit cache writes, and rate-limit counts (over budget
                        # turns whatever the handler answered into the 429; it wrote nothing).
                        try:
                            cache.flush_deferred()
                        finally:
                            cache.end_request()
                except errors.MinitwitterError as exc:
                    response = error_response(exc)
                except Exception:  # noqa: BLE001 - the boundary: never leak a traceback
                    log.exception("unhandled error")
                    response = error_response(errors.MinitwitterError())
                decision = ratelimit.current.get()
                ratelimit.current.reset(limit_token)
                extra = decision.headers() if decision is not None else {}
                extra["X-Call-Id"] = cid
                add_missing_headers(response, extra)
                duration = time.perf_counter() - started
                metrics.child(metrics.FUNCTION_REQUESTS, name, request.method, str(response.status_code)).inc()
                metrics.child(metrics.FUNCTION_SECONDS, name).observe(duration)
                logs.log_request({"method": request.method, "path": request.path,
                                  "status": response.status_code,
                                  "duration_ms": round(duration * 1000, 3)})
                return response

        setattr(handle, runtime.ENDPOINT_ATTR, handle)  # how a host knows it can call it directly
        return handle

    return decorate
