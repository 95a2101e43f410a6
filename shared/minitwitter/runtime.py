"""What the OpenFaaS template and the local gateway share when they host a function.

Both load a function with functions-framework's ``create_app`` and guard it with
:class:`CrashGuard`. The local gateway then calls a handler built with
:func:`minitwitter.http.endpoint` through :class:`DirectEndpoint` instead of the Flask app: the
same handler, the same answers (tests/test_direct_calls.py compares the two hosts request by
request), without Flask's per-request dispatch.
"""

from __future__ import annotations

import gc
import importlib
import logging
import pkgutil
import re
import threading
import time
from collections.abc import Callable, Iterable
from http import HTTPStatus
from typing import Any

import flask
import orjson
from werkzeug.urls import iri_to_uri

log = logging.getLogger("minitwitter.runtime")

WSGIEnv = dict[str, Any]
StartResponse = Callable[..., Any]

CRASH_BODY = orjson.dumps({"error": "internal error", "details": {}})
#: Paths functions-framework answers itself with a 404 page, never calling the handler.
FRAMEWORK_404_PATHS = frozenset({"/robots.txt", "/favicon.ico"})
#: The attribute :func:`minitwitter.http.endpoint` sets on the handler it builds (to itself).
ENDPOINT_ATTR = "__minitwitter_endpoint__"
#: An absolute path of letters, digits and ``-._~/`` (not ``//``, which would name a host): what
#: the functions' ``Location`` headers hold, and what werkzeug's ``iri_to_uri`` never changes.
PLAIN_PATH = re.compile(r"/(?!/)[A-Za-z0-9._~/-]*")


def error_body(status: int) -> bytes:
    """The project's JSON error body for a status that the framework, not a handler, answered."""
    try:
        message = HTTPStatus(status).phrase.lower()
    except ValueError:
        message = "error"
    return orjson.dumps({"error": message, "details": {}})


def _json_headers(body: bytes, keep: Iterable[tuple[str, str]] = ()) -> list[tuple[str, str]]:
    kept = [(k, v) for k, v in keep if k.lower() not in ("content-type", "content-length")]
    return [("Content-Type", "application/json"), ("Content-Length", str(len(body))), *kept]


class CrashGuard:
    """WSGI middleware: a handler that raised gets a JSON 500, never its exception text, and an
    error page of the framework's own (Flask's HTML 404 for ``/favicon.ico``, say) becomes the
    JSON error body with the same status.

    functions-framework answers an uncaught exception with ``str(exc)`` and
    ``X-Google-Status: crash``; our handlers catch everything at their boundary, so this only
    guards code that does not (and keeps internals out of responses either way). It also
    hands the ``X-Call-Id`` to functions-framework as the execution id.
    """

    def __init__(self, app: Callable[..., Iterable[bytes]]) -> None:
        self.app = app

    def __call__(self, environ: WSGIEnv, start_response: StartResponse) -> Iterable[bytes]:
        replacement: list[bytes] = []
        # functions-framework's execution id is the OpenFaaS call id when there is one (one id
        # to correlate by, and generating a random one cost ~40 us per request).
        call_id = environ.get("HTTP_X_CALL_ID")
        if call_id and not environ.get("HTTP_FUNCTION_EXECUTION_ID"):
            environ["HTTP_FUNCTION_EXECUTION_ID"] = call_id

        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            if any(k.lower() == "x-google-status" and v == "crash" for k, v in headers):
                log.error("function crashed", extra={"path": environ.get("PATH_INFO")})
                replacement.append(CRASH_BODY)
                return start_response("500 INTERNAL SERVER ERROR", _json_headers(CRASH_BODY))
            code = int(status.split(" ", 1)[0])
            if code >= 400 and any(k.lower() == "content-type" and v.startswith("text/html")
                                   for k, v in headers):
                body = error_body(code)
                replacement.append(body)
                return start_response(status, _json_headers(body, headers))
            return start_response(status, headers, exc_info) if exc_info else start_response(status, headers)

        result = self.app(environ, start)
        if replacement:
            close = getattr(result, "close", None)
            if close:
                close()
            return [] if environ.get("REQUEST_METHOD") == "HEAD" else replacement
        return result


def endpoint_handler(module: Any, target: str = "handle") -> Callable[[flask.Request], flask.Response] | None:
    """The module's ``target`` when it is a handler built by :func:`minitwitter.http.endpoint`."""
    handler = getattr(module, target, None)
    return handler if handler is not None and getattr(handler, ENDPOINT_ATTR, None) is handler else None


class DirectEndpoint:
    """WSGI app that calls an :func:`~minitwitter.http.endpoint` handler with a ``flask.Request``.

    What functions-framework's Flask app adds around such a handler is, per request, a request
    and an app context, URL routing, signals, ``after_request`` hooks and the WSGI response
    conversion: about a third of the gateway's CPU per request (docs/benchmarks.md). An endpoint
    handler needs none of it: it reads only the ``flask.Request`` it is given (no Flask
    globals), catches every exception at its boundary and returns a ``flask.Response``. So this
    app gives the answers the Flask app gives (functions-framework's two 404 paths included,
    as :class:`CrashGuard` turns them into JSON), reads the rest of a request body afterwards as
    functions-framework does, and falls back to werkzeug's own response
    conversion for the cases that conversion changes (1xx, 204, 304, a ``Location`` that is not
    a plain URI). functions-framework's ``LOG_EXECUTION_ID`` log decoration is not applied: the
    request log line carries the call id either way.
    """

    def __init__(self, handler: Callable[[flask.Request], flask.Response]) -> None:
        self.handler = handler

    def __call__(self, environ: WSGIEnv, start_response: StartResponse) -> Iterable[bytes]:
        head = environ.get("REQUEST_METHOD") == "HEAD"
        # Flask's routing ignores extra leading slashes: "//robots.txt" is its 404 page too.
        if "/" + environ.get("PATH_INFO", "").lstrip("/") in FRAMEWORK_404_PATHS:
            body = error_body(404)
            start_response("404 NOT FOUND", _json_headers(body))
            return [] if head else [body]
        try:
            request = flask.Request(environ)
            response = self.handler(request)
            if environ.get("CONTENT_LENGTH") or "HTTP_TRANSFER_ENCODING" in environ:
                request.get_data()  # read what the handler left, as functions-framework does
        except Exception:  # noqa: BLE001 - endpoints catch everything; this guards the guard
            log.exception("function crashed", extra={"path": environ.get("PATH_INFO")})
            start_response("500 INTERNAL SERVER ERROR", _json_headers(CRASH_BODY))
            return [] if head else [CRASH_BODY]
        code = response.status_code
        headers = response.headers.to_wsgi_list()
        if code < 200 or code in (204, 304) or not response.is_sequence or not _final(headers):
            return response(environ, start_response)
        start_response(response.status, headers)
        return [] if head else [response.get_data()]


def _final(headers: list[tuple[str, str]]) -> bool:
    """Whether werkzeug's WSGI conversion would send ``headers`` unchanged: a Content-Length is
    there and no (Content-)Location needs encoding as a URI."""
    sized = False
    for key, value in headers:
        lowered = key.lower()
        if lowered == "content-length":
            sized = True
        elif lowered in ("location", "content-location") and not is_uri(value):
            return False
    return sized


def is_uri(value: str) -> bool:
    """Whether werkzeug's ``iri_to_uri`` leaves ``value`` as it is. A plain path is answered
    without calling it: it parses, quotes and reassembles every part of the URL, which was ~5 %
    of create-post's instructions (``make bench-instructions``: 1.45-1.48 M -> 1.38-1.41 M)."""
    return PLAIN_PATH.fullmatch(value) is not None or iri_to_uri(value) == value


def preload_library() -> list[str]:
    """Import every module of the library (and load VADER's lexicon) now, then freeze what
    loaded (:func:`freeze_loaded_objects`); the names of the modules imported.

    For a supervisor that forks its workers (granian's main process, the queue-side
    supervisor): its children start with these pages already in memory, shared with it and with
    each other until written, instead of each importing the same ~40 MB of modules into private
    pages (the gateway's three server processes and the queue side's three children were ~40-49
    MiB of PSS each). Frozen first, so that no collection in a child walks, and so copies, them.
    """
    package = importlib.import_module(__package__ or "minitwitter")
    names = sorted(info.name for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."))
    for name in names:
        importlib.import_module(name)
    importlib.import_module(f"{package.__name__}.sentiment.vader").analyzer()
    freeze_loaded_objects()
    return names


#: Seconds between a function's replacement and the refreeze that reclaims the old code.
REFREEZE_DELAY = 5.0
_refreeze_due: float | None = None
_refreezing = threading.Lock()


def freeze_loaded_objects() -> None:
    """Hide every object that exists now (the imported modules, the loaded functions) from the
    cyclic garbage collector (:func:`gc.freeze`) until :func:`thaw_replaced_code`.

    The local gateway's server workers, the queue workers and the template's function
    processes call it once loading is done. A loaded gateway worker holds ~75,000 tracked
    objects, nearly all of them module-level and alive until exit. Each full collection walked
    them all: 25 ms on an idle 2-core VM, 30-70 ms under load, every ~15,000 requests, stalling
    every request of that process meanwhile, which made the p99 latency of the reads 15-30 ms
    while their p50 was ~1 ms. Frozen, they are never scanned; what requests allocate is
    collected as before. Frozen objects are still freed by reference counting, but garbage in
    reference cycles among them (a module and its functions) stays until they are unfrozen.
    """
    global _refreeze_due
    gc.collect()  # what loading left as garbage goes now, not into the frozen set
    gc.freeze()
    _refreeze_due = None


def thaw_replaced_code() -> None:
    """A loaded function was replaced (a redeploy): unfreeze, so that the old code, a reference
    cycle, can be reclaimed, and have :func:`refreeze_when_due` freeze again
    :data:`REFREEZE_DELAY` seconds later. The delay lets the old code's calls in flight finish
    and makes a whole-stack redeploy cost one full collection, not one per function. Nothing in
    a process that never froze (the tests' own)."""
    global _refreeze_due
    if gc.get_freeze_count():
        gc.unfreeze()
        _refreeze_due = time.monotonic() + REFREEZE_DELAY


def refreeze_when_due() -> None:
    """Collect and freeze again once a :func:`thaw_replaced_code` delay has passed (on every
    request: a comparison while nothing is due)."""
    due = _refreeze_due
    if due is not None and time.monotonic() >= due and _refreezing.acquire(blocking=False):
        try:
            if _refreeze_due is not None:
                freeze_loaded_objects()
        finally:
            _refreezing.release()
