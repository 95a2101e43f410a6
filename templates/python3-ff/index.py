"""Entry point of a python3-ff function container (the watchdog's ``fprocess``).

of-watchdog (http mode) forwards every request to ``upstream_url`` (http://127.0.0.1:5000). This
process answers there: functions-framework's ``create_app`` builds the Flask app from
``function/handler.py`` (target ``handle``, HTTP signature, the same call the local gateway
makes), :class:`minitwitter.runtime.CrashGuard` turns an uncaught exception into a JSON 500, and
gunicorn (gthread) serves it.

gunicorn, unlike waitress, drains on SIGTERM: it stops accepting, lets in-flight requests finish
within ``WSGI_GRACEFUL_TIMEOUT`` and exits 0, so the watchdog's graceful shutdown runs instead of
"Forked function has terminated" (exit 1). The shared library arrives at ``function/shared``
through the stack's ``configuration.copy``.

Server settings (environment, read here because they configure the process, not the library):
``WSGI_BIND`` (default ``127.0.0.1:5000``, must match ``upstream_url``), ``WSGI_WORKERS`` (1),
``WSGI_THREADS`` (8), ``WSGI_GRACEFUL_TIMEOUT`` seconds (60, at least the watchdog's
``exec_timeout``).
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
FUNCTION_DIR = HERE / "function"
SHARED_DIR = FUNCTION_DIR / "shared"
HANDLER = FUNCTION_DIR / "handler.py"
TARGET = "handle"

# The copied shared library must win over anything else on the path.
sys.path.insert(0, str(SHARED_DIR))

from gunicorn.app.base import BaseApplication  # noqa: E402 - after the path is set

DEFAULTS = {"WSGI_BIND": "127.0.0.1:5000", "WSGI_WORKERS": "1", "WSGI_THREADS": "8",
            "WSGI_GRACEFUL_TIMEOUT": "60"}


def _positive_int(env: Mapping[str, str], name: str) -> int:
    raw = env.get(name, "").strip() or DEFAULTS[name]
    try:
        value = int(raw)
    except ValueError:
        raise SystemExit(f"{name} must be a positive integer, got {raw!r}") from None
    if value < 1:
        raise SystemExit(f"{name} must be a positive integer, got {raw!r}")
    return value


def server_options(env: Mapping[str, str]) -> dict[str, Any]:
    """gunicorn settings for this function process."""
    return {
        "bind": env.get("WSGI_BIND", "").strip() or DEFAULTS["WSGI_BIND"],
        "workers": _positive_int(env, "WSGI_WORKERS"),
        "worker_class": "gthread",
        "threads": _positive_int(env, "WSGI_THREADS"),
        "graceful_timeout": _positive_int(env, "WSGI_GRACEFUL_TIMEOUT"),
        # gthread workers heartbeat from their main loop, so a long request never trips this;
        # the watchdog's exec_timeout bounds request time.
        "timeout": 30,
        # The watchdog keeps connections to the upstream alive; close idle ones after a while.
        "keepalive": 75,
        "accesslog": None,  # the function logs one JSON line per request itself
        "errorlog": "-",
        "loglevel": "warning",
        "post_fork": _post_fork,
        "post_worker_init": _post_worker_init,
        "worker_exit": _worker_exit,
        "child_exit": _child_exit,
    }


def build_app() -> Callable[..., Any]:
    """The WSGI app: the handler through functions-framework, guarded against crashes."""
    import functions_framework

    from minitwitter.runtime import CrashGuard

    return CrashGuard(functions_framework.create_app(
        target=TARGET, source=str(HANDLER), signature_type="http"))


def _post_fork(server: Any, worker: Any) -> None:  # noqa: ARG001 - gunicorn hook signature
    from minitwitter import logs, logstore

    logs.configure_logging("function", store=logstore.store_batch)


def _post_worker_init(worker: Any) -> None:  # noqa: ARG001 - gunicorn hook signature
    from minitwitter.runtime import freeze_loaded_objects

    freeze_loaded_objects()  # the app is loaded: full collections skip it from now on


def _worker_exit(server: Any, worker: Any) -> None:  # noqa: ARG001 - gunicorn hook signature
    from minitwitter import logs

    logs.flush()


def _child_exit(server: Any, worker: Any) -> None:  # noqa: ARG001 - gunicorn hook signature
    from minitwitter import metrics

    metrics.mark_process_dead(worker.pid)


def prepare_metrics_dir(env: Mapping[str, str]) -> None:
    """Start with an empty ``PROMETHEUS_MULTIPROC_DIR`` (stale files would be double counted)."""
    path = env.get("PROMETHEUS_MULTIPROC_DIR", "").strip()
    if path:
        shutil.rmtree(path, ignore_errors=True)
        Path(path).mkdir(parents=True, exist_ok=True)


class FunctionServer(BaseApplication):  # type: ignore[misc] - gunicorn is untyped
    """gunicorn configured in code (no config file, no command line)."""

    def __init__(self, options: dict[str, Any]) -> None:
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self) -> Callable[..., Any]:
        return build_app()


def main() -> None:
    """Check the handler exists, then serve until SIGTERM (exit 0 after draining)."""
    if not HANDLER.is_file():
        raise SystemExit(f"no function handler at {HANDLER}")
    prepare_metrics_dir(os.environ)
    FunctionServer(server_options(os.environ)).run()


if __name__ == "__main__":
    main()
