"""The gateway's HTTP server: ``python -m gateway.serve`` runs ``gateway.rsgi:app`` under granian.

Chosen by measurement (docs/benchmarks.md): granian parses HTTP and holds connections in Rust;
its RSGI interface hands the app each request once its headers are in, on an asyncio event loop
(uvloop), where :mod:`gateway.edge` reads the body without a thread and runs the call on a
bounded set of threads (slow clients, backpressure and deadlines are documented there).

Settings come from the same Config the app reads: ``GATEWAY_BIND`` (default ``127.0.0.1``;
containers set ``0.0.0.0``), ``GATEWAY_PORT``, ``GATEWAY_WORKERS`` processes,
``GATEWAY_THREADS`` function threads per process, ``GATEWAY_READ_TIMEOUT`` for headers (and the
edge's for bodies). SIGTERM/SIGINT stop accepting, give in-flight requests
``GATEWAY_DRAIN_TIMEOUT`` seconds to finish, then end the workers, and exit 0. A worker process
that dies is started again after a back-off (:class:`SupervisedServer`), with a log line and
``minitwitter_process_restarts_total{kind="gateway-server"}``; granian's own rule, which ended
the whole server when a worker died twice within 5.5 s, is not used. granian's log lines are
JSON on stderr like everything else.
"""

from __future__ import annotations

import importlib
import logging
import time
from typing import Any

from granian.server import MPServer

from minitwitter import logs, metrics
from minitwitter.config import Config, load_config
from minitwitter.logs import FORMATTER_OPTIONS
from minitwitter.runtime import preload_library

from .processes import GATEWAY_SERVER_ARGV, Backoff, release_large_allocations, set_process_name

log = logging.getLogger("minitwitter.gateway")

#: granian's loggers, written as JSON on stderr (python-json-logger) instead of its text format.
LOG_CONFIG: dict[str, Any] = {
    "formatters": {
        "json": {"()": "minitwitter.logs.JsonFormatter", **FORMATTER_OPTIONS},
    },
    "handlers": {
        "console": {"formatter": "json", "class": "logging.StreamHandler", "stream": "ext://sys.stderr"},
        "access": {"formatter": "json", "class": "logging.StreamHandler", "stream": "ext://sys.stderr"},
    },
    "loggers": {
        "_granian": {"handlers": ["console"], "level": "WARNING", "propagate": False},
        "granian.access": {"handlers": ["access"], "level": "WARNING", "propagate": False},
    },
}

#: What ``ps -o comm`` shows for the server's main process and for its worker processes.
MAIN_PROCESS_NAME = "mt-gateway-main"
SERVER_PROCESS_NAME = "mt-gateway"

#: Connections a server process takes into Python at once (granian's ``backpressure``); more wait
#: in the kernel's accept queue. Slow clients and queued calls each hold one.
BACKPRESSURE = 1024


def command() -> list[str]:
    """argv that starts the gateway server (``make run``, the container entrypoint, the tests)."""
    return list(GATEWAY_SERVER_ARGV)


def server_options(config: Config) -> dict[str, Any]:
    """Keyword arguments for granian's server serving the gateway."""
    from granian.constants import HTTPModes, Interfaces, Loops
    from granian.http import HTTP1Settings
    from granian.log import LogLevels

    return {
        "target": "gateway.rsgi:app",
        "address": config.gateway_bind,
        "port": config.gateway_port,
        "interface": Interfaces.RSGI,
        "loop": Loops.uvloop,
        "workers": config.gateway_workers,
        "http": HTTPModes.http1,
        "http1_settings": HTTP1Settings(header_read_timeout=int(config.gateway_read_timeout * 1000)),
        "websockets": False,
        "backlog": 2048,
        "backpressure": BACKPRESSURE,
        "respawn_failed_workers": True,
        "workers_kill_timeout": max(1, round(config.gateway_drain_timeout)),
        "log_level": LogLevels.warning,
        "log_dictconfig": LOG_CONFIG,
    }


class SupervisedServer(MPServer):
    """granian's multi-process server, restarting a dead worker process after a back-off.

    granian respawns a worker that died, but ends the whole server when the same worker dies
    again within 5.5 s of its respawn ("crash loop"): two SIGKILLs in a row took the API down.
    Here each respawn waits its worker's :class:`~gateway.processes.Backoff` delay, is logged
    and counted, and the server keeps running until it is told to stop.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.backoffs: dict[int, Backoff] = {}
        metrics.PROCESS_RESTARTS.labels(kind="gateway-server")  # 0 until one happens

    def _respawn_workers(self, workers: list[int], spawn_target: Any, target_loader: Any,
                         delay: float = 0) -> None:
        # granian respawns with a delay (respawn_interval) when it reloads or recycles workers,
        # and without one after a worker died.
        crashed = not delay
        if crashed:
            for idx in workers:
                backoff = self.backoffs.setdefault(idx, Backoff())
                wait = backoff.next_delay()
                log.warning("gateway server process died; starting a new one",
                            extra={"worker": idx + 1, "restart_in_s": round(wait, 3),
                                   "restarts": backoff.restarts})
                metrics.child(metrics.PROCESS_RESTARTS, "gateway-server").inc()
                metrics.flush()
                self._sleep_unless_stopping(wait)
        super()._respawn_workers(workers, spawn_target, target_loader, delay)
        if crashed:
            self.respawned_wrks.clear()  # our back-off replaces granian's crash-loop exit

    def _sleep_unless_stopping(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self.interrupt_signal and time.monotonic() < deadline:
            time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))


def main() -> None:
    config = load_config()
    set_process_name(MAIN_PROCESS_NAME)
    logs.configure_logging("gateway-server")
    preload()
    SupervisedServer(**server_options(config)).serve()


def preload() -> None:
    """Import what every server process runs, once, in the process that forks them: they start
    with it in shared pages (PSS per server process 49 -> 2x MiB). The app itself is built in
    each of them. ``make run`` calls it before forking this server's main process, so the queue
    side shares the same pages; here it then costs only the look-ups."""
    release_large_allocations()
    importlib.import_module("gateway.edge")
    preload_library()


if __name__ == "__main__":
    main()
