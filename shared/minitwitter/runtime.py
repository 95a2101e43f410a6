"""What the OpenFaaS template and the local gateway share when they host a function."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

import orjson

log = logging.getLogger("minitwitter.runtime")

CRASH_BODY = orjson.dumps({"error": "internal error", "details": {}})


class CrashGuard:
    """WSGI middleware: a handler that raised gets a JSON 500, never its exception text.

    functions-framework answers an uncaught exception with ``str(exc)`` and
    ``X-Google-Status: crash``; our handlers catch everything at their boundary, so this only
    guards code that does not (and keeps internals out of responses either way). It also
    hands the ``X-Call-Id`` to functions-framework as the execution id.
    """

    def __init__(self, app: Callable[..., Iterable[bytes]]) -> None:
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        crashed = False
        # functions-framework's execution id is the OpenFaaS call id when there is one (one id
        # to correlate by, and generating a random one cost ~40 us per request).
        call_id = environ.get("HTTP_X_CALL_ID")
        if call_id and not environ.get("HTTP_FUNCTION_EXECUTION_ID"):
            environ["HTTP_FUNCTION_EXECUTION_ID"] = call_id

        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            nonlocal crashed
            if any(k.lower() == "x-google-status" and v == "crash" for k, v in headers):
                crashed = True
                log.error("function crashed", extra={"path": environ.get("PATH_INFO")})
                return start_response("500 INTERNAL SERVER ERROR", [
                    ("Content-Type", "application/json"), ("Content-Length", str(len(CRASH_BODY)))])
            return start_response(status, headers, exc_info) if exc_info else start_response(status, headers)

        result = self.app(environ, start)
        if crashed:
            close = getattr(result, "close", None)
            if close:
                close()
            return [CRASH_BODY]
        return result
