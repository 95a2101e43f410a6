"""gunicorn settings for the gateway (values from the same environment the Config reads)."""

from __future__ import annotations

import os

from minitwitter.config import load_config
from minitwitter import metrics

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


def post_fork(server, worker):  # noqa: ANN001, ARG001 - gunicorn hook signature
    from minitwitter import cache, db

    cache.reset()
    db.close_connection()


def child_exit(server, worker):  # noqa: ANN001, ARG001 - gunicorn hook signature
    metrics.mark_process_dead(worker.pid)
