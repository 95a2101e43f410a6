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

Readiness: the listening socket is bound first thing, before gunicorn or the function is
imported, so a request that arrives while the function loads waits in the socket's backlog and is
answered once it has loaded, never refused. ``GET /_/ready`` is answered here, before the
function, once the app is loaded: the watchdog's ``ready_path`` points there, so its ``/_/ready``
is 200 only once this server answers. With the watchdog's ``suppress_lock=true`` this server
writes the watchdog's lock file once the function has loaded, so ``/_/health`` (OpenFaaS CE's
probes, the image's HEALTHCHECK) waits for it too (:func:`watchdog_lock_file`).

Slow clients: requests are read whole in gunicorn's event loop before a thread takes them
(``buffered_worker.py``): a request whose headers and body have not arrived within
``WSGI_READ_TIMEOUT`` gets 408 and is closed, and no number of slow clients holds a thread.

Server settings (environment, read here because they configure the process, not the library):
``WSGI_BIND`` (default ``127.0.0.1:5000``, must match ``upstream_url``), ``WSGI_WORKERS`` (1),
``WSGI_THREADS`` (8), ``WSGI_GRACEFUL_TIMEOUT`` seconds (60, at least the watchdog's
``exec_timeout``), ``WSGI_READ_TIMEOUT`` seconds for a request's headers and body to arrive (10),
``WSGI_WRITE_TIMEOUT`` seconds one send of a response may block (30), ``WSGI_MAX_BODY_BYTES``
(1 MiB; larger bodies get 413 before reaching the function, which has its own smaller limit).
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
FUNCTION_DIR = HERE / "function"
SHARED_DIR = FUNCTION_DIR / "shared"
HANDLER = FUNCTION_DIR / "handler.py"
TARGET = "handle"
#: Answered here, before the function: the watchdog's ``ready_path``.
READY_PATH = "/_/ready"
LISTEN_BACKLOG = 2048

DEFAULTS = {"WSGI_BIND": "127.0.0.1:5000", "WSGI_WORKERS": "1", "WSGI_THREADS": "8",
            "WSGI_GRACEFUL_TIMEOUT": "60", "WSGI_READ_TIMEOUT": "10", "WSGI_WRITE_TIMEOUT": "30",
            "WSGI_MAX_BODY_BYTES": str(1024 * 1024)}


def bind_early(address: str) -> socket.socket:
    """Listen on ``host:port`` now: connections queue until the server is ready to accept."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]") or "0.0.0.0"  # noqa: S104 - only when the operator binds ":port"
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, int(port)))
    sock.listen(LISTEN_BACKLOG)
    sock.set_inheritable(True)
    return sock


# The copied shared library must win over anything else on the path.
sys.path.insert(0, str(SHARED_DIR))
sys.path.insert(1, str(HERE))  # buffered_worker.py, when index.py is imported from elsewhere


def _positive_int(env: Mapping[str, str], name: str) -> int:
    raw = env.get(name, "").strip() or DEFAULTS[name]
    try:
        value = int(raw)
    except ValueError:
        raise SystemExit(f"{name} must be a positive integer, got {raw!r}") from None
    if value < 1:
        raise SystemExit(f"{name} must be a positive integer, got {raw!r}")
    return value


def bind_address(env: Mapping[str, str]) -> str:
    return env.get("WSGI_BIND", "").strip() or DEFAULTS["WSGI_BIND"]


def server_options(env: Mapping[str, str], listen_fd: int | None = None) -> dict[str, Any]:
    """gunicorn settings for this function process (``listen_fd``: a socket listening already,
    which gunicorn takes over and closes)."""
    from buffered_worker import configured

    return {
        "bind": f"fd://{listen_fd}" if listen_fd is not None else bind_address(env),
        "workers": _positive_int(env, "WSGI_WORKERS"),
        "worker_class": configured(read_timeout=_positive_int(env, "WSGI_READ_TIMEOUT"),
                                   write_timeout=_positive_int(env, "WSGI_WRITE_TIMEOUT"),
                                   max_body=_positive_int(env, "WSGI_MAX_BODY_BYTES")),
        "threads": _positive_int(env, "WSGI_THREADS"),
        "graceful_timeout": _positive_int(env, "WSGI_GRACEFUL_TIMEOUT"),
        # No gunicornc control socket: nothing in a function container uses it, and its default
        # place ($HOME/.gunicorn) is not writable on a read-only root.
        "control_socket_disable": True,
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
        "on_exit": _on_exit,
    }


def build_app() -> Callable[..., Any]:
    """The WSGI app: the handler through functions-framework, guarded against crashes."""
    import functions_framework

    from minitwitter.runtime import CrashGuard

    return ReadyProbe(CrashGuard(functions_framework.create_app(
        target=TARGET, source=str(HANDLER), signature_type="http")))


class ReadyProbe:
    """WSGI middleware: ``GET /_/ready`` answers 200 without calling the function.

    It can only answer once the app has loaded, so it tells the watchdog (``ready_path``) that
    requests will be served.
    """

    def __init__(self, app: Callable[..., Iterable[bytes]]) -> None:
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == READY_PATH and environ.get("REQUEST_METHOD") in ("GET", "HEAD"):
            start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
            return [b"OK"]
        return self.app(environ, start_response)


def _post_fork(server: Any, worker: Any) -> None:  # noqa: ARG001 - gunicorn hook signature
    from minitwitter import logs, logstore

    logs.configure_logging("function", store=logstore.store_batch)


def _post_worker_init(worker: Any) -> None:  # noqa: ARG001 - gunicorn hook signature
    from minitwitter.runtime import freeze_loaded_objects

    freeze_loaded_objects()  # the app is loaded: full collections skip it from now on
    lock = watchdog_lock_file(os.environ)
    if lock is not None:
        lock.touch()


def _on_exit(server: Any) -> None:  # noqa: ARG001 - gunicorn hook signature
    lock = watchdog_lock_file(os.environ)
    if lock is not None:
        lock.unlink(missing_ok=True)


def watchdog_lock_file(env: Mapping[str, str]) -> Path | None:
    """The watchdog's lock file, when this server keeps it instead (``suppress_lock=true``).

    of-watchdog's ``/_/health`` (and ``/_/ready``) answer 200 only while ``$TMPDIR/.lock``
    exists. The watchdog writes it as soon as it starts, before the function can answer; with
    ``suppress_lock=true`` it leaves that to us, and we write it once the function has loaded.
    The watchdog still removes it on SIGTERM.
    """
    if env.get("suppress_lock", "").strip().lower() != "true":
        return None
    return Path(env.get("TMPDIR") or "/tmp") / ".lock"  # noqa: S108 - Go's os.TempDir()


def _worker_exit(server: Any, worker: Any) -> None:  # noqa: ARG001 - gunicorn hook signature
    from minitwitter import logs

    logs.flush()


def _child_exit(server: Any, worker: Any) -> None:  # noqa: ARG001 - gunicorn hook signature
    from minitwitter import metrics

    metrics.mark_process_dead(worker.pid)


def prepare_metrics_dir(env: Mapping[str, str]) -> None:
    """Start with an empty ``PROMETHEUS_MULTIPROC_DIR`` (stale files would be double counted)."""
    import shutil

    path = env.get("PROMETHEUS_MULTIPROC_DIR", "").strip()
    if path:
        shutil.rmtree(path, ignore_errors=True)
        Path(path).mkdir(parents=True, exist_ok=True)


def function_server(options: dict[str, Any]) -> Any:
    """gunicorn configured in code (no config file, no command line)."""
    from gunicorn.app.base import BaseApplication

    class FunctionServer(BaseApplication):  # type: ignore[misc] - gunicorn is untyped
        def load_config(self) -> None:
            for key, value in options.items():
                self.cfg.set(key, value)

        def load(self) -> Callable[..., Any]:
            return build_app()

    return FunctionServer()


def main() -> None:
    """Listen at once, check the handler exists, then serve until SIGTERM (exit 0 after draining)."""
    listener = bind_early(bind_address(os.environ))
    if not HANDLER.is_file():
        raise SystemExit(f"no function handler at {HANDLER}")
    prepare_metrics_dir(os.environ)
    function_server(server_options(os.environ, listener.detach())).run()


if __name__ == "__main__":
    main()
