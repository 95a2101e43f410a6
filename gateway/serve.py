"""The gateway's HTTP server: ``python -m gateway.serve`` runs ``gateway.wsgi:app`` under granian.

Chosen by measurement (docs/benchmarks.md): on this 2-core machine a 40 KB WSGI response was
served at ~7,500 requests/s by gunicorn's gthread workers and ~40,000/s by granian (HTTP parsing
and connection handling in Rust, the WSGI app on Python threads), and list-posts through the
gateway went from ~720/s to ~1,170/s on the server change alone.

Settings come from the same Config the app reads: ``GATEWAY_BIND`` (address, default
``0.0.0.0``), ``GATEWAY_PORT``, ``GATEWAY_WORKERS`` processes, ``GATEWAY_THREADS`` Python threads
per process. Workers that die are respawned. SIGTERM/SIGINT stop accepting, let in-flight
requests finish (at most ``FUNCTION_TIMEOUT`` + 30 s) and exit 0. granian's own log lines
are JSON on stderr like everything else.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import Any

from minitwitter.config import Config, load_config
from minitwitter.logs import FORMATTER_OPTIONS

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


def command() -> list[str]:
    """argv that starts the gateway server (``make run``, the container entrypoint, the tests)."""
    return [sys.executable, "-m", "gateway.serve"]


def server_options(config: Config, env: Mapping[str, str] = os.environ) -> dict[str, Any]:
    """Keyword arguments for ``granian.Granian`` serving the gateway."""
    from granian.constants import HTTPModes, Interfaces
    from granian.log import LogLevels

    return {
        "target": "gateway.wsgi:app",
        "address": env.get("GATEWAY_BIND", "0.0.0.0"),
        "port": config.gateway_port,
        "interface": Interfaces.WSGI,
        "workers": config.gateway_workers,
        "blocking_threads": config.gateway_threads,
        "http": HTTPModes.http1,
        "websockets": False,
        "backlog": 2048,
        "respawn_failed_workers": True,
        # In-flight requests get the function timeout (504 after it) plus a margin, then go.
        "workers_kill_timeout": int(config.function_timeout) + 30,
        "log_level": LogLevels.warning,
        "log_dictconfig": LOG_CONFIG,
    }


def main() -> None:
    from granian import Granian

    Granian(**server_options(load_config())).serve()


if __name__ == "__main__":
    main()
