"""The gateway WSGI app: the OpenFaaS gateway HTTP contract over in-process functions.

Routes (see docs/openfaas-contract notes in the README):

- ``ANY /function/<name>[.<namespace>][/<path>]``: sync invoke, prefix stripped, query kept,
  ``X-Call-Id`` / ``X-Start-Time`` added, ``X-Duration-Seconds`` on the response, 504 after
  ``FUNCTION_TIMEOUT``.
- ``POST /async-function/<name>[.<namespace>][/<path>]``: 202, queued as an RQ job.
- ``/system/*``: functions, function, scale-function, info, logs, namespaces (basic auth).
- ``GET /healthz`` and ``GET /metrics``.
"""

from __future__ import annotations

import base64
import hmac
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from prometheus_client.core import GaugeMetricFamily
from werkzeug.wrappers import Request, Response

from minitwitter import cache, callbacks, db, errors, identity, logs, logstore, metrics, ratelimit
from minitwitter.config import Config, use_config
from minitwitter.http import client_ip, dumps, error_response, new_call_id
from minitwitter.runtime import StartResponse, WSGIEnv

from . import logstream, observability, queue_worker
from .registry import Hosted, Registry

log = logging.getLogger("minitwitter.gateway")

VERSION = "0.27.14"
SERVED_BY = f"openfaas-ce/{VERSION} (minitwitter local gateway)"
#: What /healthz and /metrics answer (HEAD as GET without the body); anything else is a 405.
READ_METHODS = ("GET", "HEAD")
#: Response headers the gateway sets on an invocation: a function's own of the same name give
#: way (each header once, the gateway's value, as the OpenFaaS gateway does).
GATEWAY_HEADERS = frozenset({"x-call-id", "x-start-time", "x-served-by", "x-duration-seconds",
                             "x-gateway-instance"})


@dataclass(frozen=True, slots=True)
class Invocation:
    """A sync invocation as the gateway sees it before the function runs."""

    name: str
    namespace: str
    function_name: str  # name.namespace, the metrics' label
    sub_path: str
    call_id: str
    started_ns: int
    started: float  # perf_counter
    extra_headers: list[tuple[str, str]]  # the gateway's own response headers


def json_error(status: int, message: str, details: dict[str, Any] | None = None,
               headers: dict[str, str] | None = None) -> Response:
    """Gateway-level errors use the project's JSON error body."""
    response = Response(dumps({"error": message, "details": details or {}}), status=status,
                        mimetype="application/json")
    for key, value in (headers or {}).items():
        response.headers[key] = value
    return response


def json_ok(body: Any, status: int = 200) -> Response:
    return Response(dumps(body), status=status, mimetype="application/json")


class Gateway:
    """WSGI callable; one per process."""

    def __init__(self, config: Config, registry: Registry | None = None) -> None:
        self.config = config
        self.registry = registry or Registry(config)
        self.instance = f"{socket.gethostname()}:{config.gateway_port}"
        #: Name the answering replica (host:port: behind nginx this shows the load balancing at
        #: work) and the exact gateway version, only when GATEWAY_IDENTITY_HEADERS opts in.
        self.identity_headers = ([("X-Gateway-Instance", self.instance), ("X-Served-By", SERVED_BY)]
                                 if config.gateway_identity_headers else [])
        #: Open /system/logs?follow=true streams (each holds a thread) and their end.
        self._followers = threading.BoundedSemaphore(max(1, config.gateway_threads - 1))
        self._closing = threading.Event()
        metrics.add_scrape_collector(self._service_counts)
        # Queue depth/age and the sentiment backlog, read from Redis and PostgreSQL per scrape.
        observability.register_collectors(config)

    # -- WSGI -------------------------------------------------------------------------------
    def __call__(self, environ: WSGIEnv, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "") or "/"
        if path.startswith("/function/"):
            return self.invoke(environ, start_response, path[len("/function/"):])
        response = self.dispatch(Request(environ), path)
        if self.config.gateway_identity_headers:
            response.headers["X-Gateway-Instance"] = self.instance
        return response(environ, start_response)

    def dispatch(self, request: Request, path: str) -> Response:
        try:
            if path.startswith("/async-function/"):
                return self.invoke_async(request, path[len("/async-function/"):])
            if path in ("/healthz", "/metrics") and request.method not in READ_METHODS:
                return json_error(405, "method not allowed", {"allowed": list(READ_METHODS)},
                                  {"Allow": ", ".join(READ_METHODS)})
            if path == "/healthz":
                return self.healthz()
            if path == "/metrics":
                body, ctype = metrics.render()
                return Response(body, mimetype=None, content_type=ctype)
            if path.startswith("/system/"):
                denied = self.check_basic_auth(request)
                if denied is not None:
                    return denied
                return self.system(request, path[len("/system/"):])
            return json_error(404, "404 page not found")
        except errors.MinitwitterError as exc:
            return json_error(exc.status, exc.message, exc.details)
        except Exception:  # noqa: BLE001 - never a traceback to a client
            log.exception("gateway error")
            return json_error(500, "internal error")

    # -- sync invoke ------------------------------------------------------------------------
    def split_target(self, rest: str) -> tuple[str, str, str]:
        """``name[.ns][/path]`` → (name, namespace, path)."""
        target, _, sub = rest.partition("/")
        name, _, namespace = target.partition(".")
        return name, namespace or self.config.function_namespace, "/" + sub

    def begin(self, environ: WSGIEnv, rest: str) -> Invocation:
        """What a sync invocation of ``/function/<rest>`` knows before it runs (no I/O)."""
        name, namespace, sub_path = self.split_target(rest)
        call_id = environ.get("HTTP_X_CALL_ID") or new_call_id()
        started_ns = time.time_ns()
        extra_headers = [("X-Call-Id", call_id), ("X-Start-Time", str(started_ns)), *self.identity_headers]
        return Invocation(name, namespace, f"{name}.{namespace}", sub_path, call_id, started_ns,
                          time.perf_counter(), extra_headers)

    def invoke(self, environ: WSGIEnv, start_response: StartResponse, rest: str) -> Iterable[bytes]:
        """The WSGI form of a sync invocation (no deadline: the serving edge enforces
        ``FUNCTION_TIMEOUT`` around :meth:`call`)."""
        status, headers, body = self.call(self.begin(environ, rest), dict(environ))
        start_response(status, headers)
        return [body]

    def call(self, invocation: Invocation, environ: WSGIEnv) -> tuple[str, list[tuple[str, str]], bytes]:
        """Run a sync invocation on this thread: the function's status, headers and body, with
        the gateway's headers added and the invocation counted. ``environ`` becomes the
        function's (its path, call id, start time, forwarded headers): pass one of the call's own."""
        hosted = None
        if invocation.namespace == self.config.function_namespace and invocation.name:
            try:
                hosted = self.registry.get(invocation.name)
            except errors.MinitwitterError as exc:
                return self._finish(invocation, json_error(exc.status, exc.message, exc.details))
        if hosted is None:
            return self._finish(invocation, json_error(
                404, f"error finding function {invocation.function_name}: not found"))
        metrics.child(metrics.GATEWAY_STARTED, invocation.function_name).inc()
        environ["PATH_INFO"] = invocation.sub_path
        environ["SCRIPT_NAME"] = ""
        environ["HTTP_X_CALL_ID"] = invocation.call_id
        environ["HTTP_X_START_TIME"] = str(invocation.started_ns)
        environ.setdefault("HTTP_X_FORWARDED_FOR", environ.get("REMOTE_ADDR", ""))
        environ.setdefault("HTTP_X_FORWARDED_HOST", environ.get("HTTP_HOST", ""))
        # The queue-worker's signed client address of an async call; anyone else's is dropped.
        identity.accept(environ, invocation.call_id, self.config.jwt_secret)
        try:
            status, headers, body = self._call_app(hosted, environ)
        except Exception:  # noqa: BLE001
            log.exception("function crashed", extra={"function": hosted.name})
            response = json_error(500, "internal error")
            status, headers, body = "500 INTERNAL SERVER ERROR", list(response.headers.items()), response.get_data()
        return self._account(invocation, status, headers, body, environ.get("REQUEST_METHOD"))

    def timed_out(self, invocation: Invocation) -> tuple[str, list[tuple[str, str]], bytes]:
        """The 504 of an invocation that outlived ``FUNCTION_TIMEOUT`` (it goes on running)."""
        log.error("function timed out", extra={"function": invocation.name,
                                               "timeout_s": self.config.function_timeout})
        response = json_error(504, "function timed out", {"timeout_seconds": self.config.function_timeout})
        return self._account(invocation, "504 GATEWAY TIMEOUT", list(response.headers.items()),
                             response.get_data(), None)

    def refused(self, invocation: Invocation, message: str, details: dict[str, Any],
                retry_after: int) -> tuple[str, list[tuple[str, str]], bytes]:
        """The 503 of an invocation the serving edge could not start (no free slot in time)."""
        response = json_error(503, message, details, {"Retry-After": str(retry_after)})
        return self._account(invocation, response.status, list(response.headers.items()),
                             response.get_data(), None)

    def _account(self, invocation: Invocation, status: str, headers: list[tuple[str, str]], body: bytes,
                 method: str | None) -> tuple[str, list[tuple[str, str]], bytes]:
        """Count an answered invocation, stamp its duration and the gateway's headers on it."""
        duration = time.perf_counter() - invocation.started
        code = status.split(" ", 1)[0]
        metrics.child(metrics.GATEWAY_INVOCATIONS, invocation.function_name, code).inc()
        metrics.child(metrics.GATEWAY_SECONDS, invocation.function_name, code).observe(duration)
        if self.config.gateway_access_log:
            with logs.context(function=invocation.name, call_id=invocation.call_id):
                log.info("invocation", extra={"method": method, "path": invocation.sub_path,
                                              "status": int(code),
                                              "duration_ms": round(duration * 1000, 3)})
        headers = [h for h in headers if h[0].lower() not in GATEWAY_HEADERS]
        headers.append(("X-Duration-Seconds", f"{duration:.6f}"))
        return status, headers + invocation.extra_headers, body

    def _finish(self, invocation: Invocation, response: Response) -> tuple[str, list[tuple[str, str]], bytes]:
        """An answer of the gateway's own (unknown function, state unreadable), not counted."""
        headers = list(response.headers.items())
        duration = time.perf_counter() - invocation.started
        headers.append(("X-Duration-Seconds", f"{duration:.6f}"))
        return response.status, headers + invocation.extra_headers, response.get_data()

    @staticmethod
    def _call_app(hosted: Hosted, environ: WSGIEnv) -> tuple[str, list[tuple[str, str]], bytes]:
        captured: dict[str, Any] = {}

        def start(status: str, headers: list[tuple[str, str]], _exc_info: Any = None) -> Callable[[bytes], None]:
            captured["status"], captured["headers"] = status, list(headers)
            return lambda _data: None

        with use_config(hosted.config):
            result = hosted.app(environ, start)
            try:
                body = b"".join(result)
            finally:
                close = getattr(result, "close", None)
                if close is not None:
                    close()
        return captured["status"], captured["headers"], body

    # -- async invoke -----------------------------------------------------------------------
    def invoke_async(self, request: Request, rest: str) -> Response:
        if request.method != "POST":
            return json_error(405, "method not allowed", {"allowed": ["POST"]}, {"Allow": "POST"})
        name, namespace, sub_path = self.split_target(rest)
        call_id = request.headers.get("X-Call-Id") or new_call_id()
        started_ns = str(time.time_ns())
        callback = request.headers.get("X-Callback-Url", "").strip()
        if callback:
            # The check create-post makes of callback_url (scheme, length, credentials, every
            # resolved address against CALLBACK_ALLOW_HOSTS): a URL the worker would refuse is
            # refused now, not dropped later. Delivery checks the address again.
            try:
                callbacks.validate_url(callback)
            except errors.ValidationFailed as exc:
                reasons = exc.details.get("callback_url") or [exc.message]
                return json_error(400, "X-Callback-Url refused", {"X-Callback-Url": reasons})
        if namespace != self.config.function_namespace or self.registry.get(name) is None:
            return json_error(404, f"error finding function {name}.{namespace}: not found")
        body = request.get_data(cache=False)
        if len(body) > self.config.max_body_bytes * 16:
            return json_error(413, "request body too large")
        headers = [(k, v) for k, v in request.headers.items()
                   if k.lower() not in ("host", "content-length", "connection", "x-call-id", "x-start-time",
                                        identity.HEADER.lower())]
        headers += [("X-Call-Id", call_id), ("X-Start-Time", started_ns)]
        message = {
            "Function": name, "Namespace": namespace, "Path": sub_path if sub_path != "/" else "",
            "QueryString": request.query_string.decode("latin-1"), "Method": request.method,
            "Header": headers, "Body": base64.b64encode(body).decode("ascii"),
            "CallbackUrl": callback or None, "CallId": call_id, "QueueName": self.config.async_queue,
            # The client as a sync call would count it (rate limits); the worker sends it signed.
            "ClientIp": client_ip(request),
        }
        try:
            queue_worker.enqueue_invocation(message, self.config)
        except errors.MinitwitterError as exc:
            # OpenFaaS answers 500 here; a queue that is down is a dependency outage, and the
            # client should try again: 503 with Retry-After, like every other one.
            return json_error(503, f"Error queuing request: {exc.message}", headers={"Retry-After": "5"})
        response = Response(b"", status=202)
        response.headers["X-Call-Id"] = call_id
        response.headers["X-Start-Time"] = started_ns
        for key, value in self.identity_headers:
            response.headers[key] = value
        return response

    # -- system API -------------------------------------------------------------------------
    def check_basic_auth(self, request: Request) -> Response | None:
        """None when the request may use the system API, else the 401 (or 429) to answer.

        Credentials count against the client's budget of failed attempts (``RATE_LIMIT_LOGIN``
        per ``RATE_LIMIT_WINDOW``, per client address as login's): once it is spent, every
        attempt from that client is a 429 until the window ends, unchecked; a success gives
        its place back.
        """
        if not self.config.gateway_basic_auth:
            return None
        auth = request.authorization
        place = None
        if auth is not None:
            try:
                place = ratelimit.attempt("system", client_ip(request), self.config.rate_limit_login,
                                          self.config.rate_limit_window)
            except errors.RateLimited as exc:
                return error_response(exc)
        expected_user, expected_password = self.config.basic_auth_user, self.config.basic_auth_password
        ok = (
            auth is not None and auth.type == "basic" and bool(expected_password)
            and hmac.compare_digest((auth.username or "").encode(), expected_user.encode())
            and hmac.compare_digest((auth.password or "").encode(), expected_password.encode())
        )
        if ok:
            ratelimit.refund(place)
            return None
        response = Response(b"invalid credentials", status=401, mimetype="text/plain")
        response.headers["WWW-Authenticate"] = 'Basic realm="Restricted"'
        return response

    def system(self, request: Request, route: str) -> Response:
        method = request.method
        if route == "functions":
            if method == "GET":
                ns = request.args.get("namespace")
                if ns and ns != self.config.function_namespace:
                    return json_ok([])
                counts = self.invocation_counts()
                return json_ok([self.registry.status(n, counts.get(n))
                                for n in self.registry.deployed_names()])
            if method in ("POST", "PUT"):
                self.registry.deploy(self._json(request), create=method == "POST")
                return Response(b"", status=202)
            if method == "DELETE":
                body = self._json(request)
                name = body.get("functionName") if isinstance(body, dict) else None
                if not name:
                    raise errors.BadRequest("functionName is required")
                self.registry.remove(str(name))
                return Response(b"", status=202)
            return json_error(405, "method not allowed", headers={"Allow": "GET, POST, PUT, DELETE"})
        if route.startswith("function/") and method == "GET":
            status = self.registry.status(route[len("function/"):])
            return json_ok(status) if status else json_error(404, "function not found")
        if route.startswith("scale-function/") and method == "POST":
            body = self._json(request)
            replicas = body.get("replicas") if isinstance(body, dict) else None
            if not isinstance(replicas, int) or isinstance(replicas, bool):
                raise errors.BadRequest("replicas must be an integer")
            if replicas < 1:
                raise errors.BadRequest("replicas must be at least 1 in OpenFaaS Community Edition")
            self.registry.scale(route[len("scale-function/"):], replicas)
            return Response(b"", status=202)
        if route == "info" and method == "GET":
            return json_ok({
                "provider": {"provider": "minitwitter-local", "orchestration": "process",
                             "version": {"sha": "local", "release": VERSION}},
                "version": {"commit_message": "minitwitter local gateway", "sha": "local",
                            "release": VERSION},
                "arch": "x86_64",
            })
        if route == "namespaces" and method == "GET":
            return json_ok([self.config.function_namespace])
        if route == "logs" and method == "GET":
            return self.system_logs(request)
        return json_error(404, "404 page not found")

    @staticmethod
    def _json(request: Request) -> Any:
        try:
            return orjson.loads(request.get_data() or b"null")
        except orjson.JSONDecodeError:
            raise errors.BadRequest("malformed JSON") from None

    def system_logs(self, request: Request) -> Response:
        since_raw = request.args.get("since")
        since = None
        if since_raw:
            try:
                since = datetime.fromisoformat(since_raw.replace("Z", "+00:00"))
            except ValueError:
                raise errors.BadRequest("since must be an RFC 3339 timestamp") from None
        tail_raw = request.args.get("tail", "-1")
        try:
            tail = int(tail_raw)
        except ValueError:
            raise errors.BadRequest("tail must be an integer") from None
        follow = request.args.get("follow", "false").lower()
        if follow not in ("true", "false", "1", "0", ""):
            raise errors.BadRequest("follow must be true or false")
        logs.flush()
        filters: dict[str, Any] = {
            "name": request.args.get("name") or None, "since": since,
            "call_id": request.args.get("call_id") or None, "level": request.args.get("level") or None,
            "namespace": self.config.function_namespace,
        }
        if follow in ("true", "1"):
            return self.follow_logs(filters, tail if tail >= 0 else None)
        lines = logstore.query(tail=tail if tail >= 0 else None, **filters)
        body = b"".join(orjson.dumps(line) + b"\n" for line in lines)
        return Response(body, status=200, mimetype="application/x-ndjson")

    def follow_logs(self, filters: dict[str, Any], tail: int | None) -> Response:
        """The lines, then new ones as they are stored, until the client goes away, after
        ``LOGS_FOLLOW_MAX_SECONDS`` or at :meth:`close` (gateway/logstream.py). A stream holds
        one server thread; a process serves at most ``GATEWAY_THREADS - 1`` (at least one) at
        once, so its other threads keep answering requests; beyond that, 503."""
        if not self._followers.acquire(blocking=False):
            return json_error(503, "too many log streams on this gateway process, try again later",
                              headers={"Retry-After": "5"})
        release = logstream.once(self._followers.release)
        body = logstream.follow(filters, tail=tail, max_seconds=self.config.logs_follow_max_seconds,
                                stop=self._closing, release=release)
        response = Response(body, status=200, mimetype="application/x-ndjson")
        response.call_on_close(release)  # also when the server closes a body it never iterated
        response.headers["Cache-Control"] = "no-cache"
        response.headers["X-Accel-Buffering"] = "no"  # a proxy (nginx) passes each line on at once
        return response

    def close(self) -> None:
        """End the open log streams at their next poll (for the server to call when it stops:
        until then a stop waits for them)."""
        self._closing.set()

    def invocation_counts(self) -> dict[str, float]:
        """Per-function invocation totals from the (multi-process) metrics."""
        suffix = "." + self.config.function_namespace
        counts: dict[str, float] = {}
        text, _ = metrics.render()
        for line in text.decode().splitlines():
            if line.startswith("gateway_function_invocation_total{"):
                labels, _, value = line.rpartition(" ")
                fn = labels.split('function_name="', 1)[1].split('"', 1)[0]
                if fn.endswith(suffix):
                    counts[fn[: -len(suffix)]] = counts.get(fn[: -len(suffix)], 0.0) + float(value)
        return counts

    def _service_counts(self) -> list[GaugeMetricFamily]:
        family = GaugeMetricFamily("gateway_service_count", "Desired replicas per function",
                                   labels=["function_name"])
        try:
            self.registry.refresh()
        except errors.MinitwitterError:
            pass
        for name, state in sorted(self.registry._state.items()):  # noqa: SLF001
            if state[0]:
                family.add_metric([f"{name}.{self.config.function_namespace}"], state[3])
        return [family]

    # -- health -----------------------------------------------------------------------------
    def healthz(self) -> Response:
        checks = {"postgres": db.ping(), "redis": cache.ping()}
        ok = checks["postgres"]  # Redis down degrades the service; PostgreSQL down breaks it
        body = {"status": "ok" if ok and checks["redis"] else ("degraded" if ok else "down"),
                "checks": {k: "ok" if v else "down" for k, v in checks.items()}}
        return json_ok(body, status=200 if ok else 503)
