"""gunicorn settings for the gateway (values from the same environment the Config reads)."""

from __future__ import annotations

import os
from typing import Any

from minitwitter import metrics
from minitwitter.config import load_config

_cfg = load_config()

bind = f"{os.environ.get('GATEWAY_BIND', '0.0.0.0')}:{_cfg.gateway_port}"
workers = _cfg.gateway_workers
worker_class = "gthread"
threads = _cfg.gateway_threads
# A function's own timeout answers 504 first; this only reaps a wedged worker.
timeout = int(_cfg.function_timeout) + 30
graceful_timeout = 30
keepalive = 75
backlog = 2048
accesslog = None
errorlog = "-"
loglevel = "warning"


def post_fork(server: Any, worker: Any) -> None:  # noqa: ARG001 - gunicorn hook signature
    from minitwitter import cache, db

    cache.reset()
    db.close_connection()


def child_exit(server: Any, worker: Any) -> None:  # noqa: ARG001 - gunicorn hook signature
    metrics.mark_process_dead(worker.pid)


def post_worker_init(worker: Any) -> None:
    """Load every deployed function before this worker accepts connections.

    Otherwise the first request to each function in each worker pays for importing its handler
    and building its Flask app (tens of milliseconds, more under load), which shows up as p99
    outliers. A function that fails to load here is logged and loaded again on first use, exactly
    as before.
    """
    import logging

    registry = getattr(worker.wsgi, "registry", None)
    if registry is None:
        return
    try:
        names = registry.deployed_names()
    except Exception:  # noqa: BLE001 - PostgreSQL down at start: load lazily as before
        logging.getLogger("minitwitter.gateway").warning("could not preload functions")
        return
    for name in names:
        try:
            registry.get(name)
        except Exception:  # noqa: BLE001 - reported again on the first invocation
            logging.getLogger("minitwitter.gateway").warning("could not preload function",
                                                           extra={"function": name})
