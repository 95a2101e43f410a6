"""Operational side jobs of the gateway and worker processes: metrics and log retention.

- :func:`serve_metrics` exposes a worker container's Prometheus metrics (all its processes, via
  ``PROMETHEUS_MULTIPROC_DIR``) on ``WORKER_METRICS_PORT``, since in the compose stack and on
  Kubernetes the workers run apart from the gateway that serves ``/metrics``.
- :class:`LogPruner` deletes ``logs`` rows older than ``LOG_RETENTION_DAYS`` at start and every
  ``LOG_PRUNE_INTERVAL`` seconds. Running it in every worker is harmless: the DELETE is idempotent.
"""

from __future__ import annotations

import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from minitwitter import backlog, errors, logstore, metrics
from minitwitter.config import Config

from . import queue_worker

log = logging.getLogger("minitwitter.observability")


class _MetricsHandler(BaseHTTPRequestHandler):
    """``GET /metrics`` (Prometheus text format) and ``GET /healthz``; nothing else."""

    server_version = "minitwitter-worker-metrics"

    def do_GET(self) -> None:  # http.server naming
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            body, ctype = metrics.render()
            self._send(200, body, ctype)
        elif path == "/healthz":
            self._send(200, b"ok\n", "text/plain")
        else:
            self._send(404, b"not found\n", "text/plain")

    def _send(self, status: int, body: bytes, ctype: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # base-class signature
        """Scrapes are not worth a log line each."""


def serve_metrics(bind: str, port: int) -> ThreadingHTTPServer:
    """Serve this process group's metrics on ``bind:port`` from a daemon thread."""
    server = ThreadingHTTPServer((bind, port), _MetricsHandler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="worker-metrics", daemon=True)
    thread.start()
    log.info("worker metrics endpoint listening", extra={"bind": bind, "port": server.server_port})
    return server


class LogPruner:
    """Deletes expired log rows now and then every ``interval`` seconds, on a daemon thread."""

    def __init__(self, retention_days: int, interval: float) -> None:
        if retention_days < 1:
            raise ValueError("LOG_RETENTION_DAYS must be at least 1")
        self.retention_days = retention_days
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="log-pruner", daemon=True)

    def start(self) -> LogPruner:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def prune_once(self) -> int:
        """One pruning pass; a store failure is logged and retried at the next interval."""
        try:
            removed = logstore.prune(self.retention_days)
        except errors.MinitwitterError as exc:
            log.warning("log pruning failed", extra={"error": exc.message})
            return 0
        if removed:
            log.info("expired log rows deleted",
                     extra={"removed": removed, "retention_days": self.retention_days})
        return removed

    def _run(self) -> None:
        while True:
            self.prune_once()
            if self._stop.wait(self.interval):
                return


def register_collectors(config: Config) -> None:
    """Scrape-time gauges for this process's /metrics: RQ queues, the sentiment backlog and the
    sentiment pipeline's work list (:mod:`minitwitter.backlog`)."""
    backlog.register_collectors(queue_worker.queue_names(config))


def check_worker_settings(config: Config) -> None:
    """Refuse settings that would serve misleading metrics (call before forking workers)."""
    if config.worker_metrics_port and config.worker_count > 1 and not metrics.multiprocess_enabled():
        raise SystemExit("WORKER_METRICS_PORT with WORKER_COUNT > 1 needs PROMETHEUS_MULTIPROC_DIR: "
                         "the worker processes share their samples through it")
    if config.log_retention_days < 1:
        raise SystemExit("LOG_RETENTION_DAYS must be at least 1")


def start_worker_services(config: Config) -> tuple[ThreadingHTTPServer | None, LogPruner]:
    """What a worker container runs besides its RQ workers: metrics endpoint and log pruning.

    Call it after forking the worker processes (threads must not exist across a fork).
    """
    metrics.SENTIMENT_BACKEND_CONFIGURED.labels(backend=config.sentiment_backend).set(1)
    server = None
    if config.worker_metrics_port:
        register_collectors(config)
        server = serve_metrics(config.worker_metrics_bind, config.worker_metrics_port)
    pruner = LogPruner(config.log_retention_days, config.log_prune_interval).start()
    return server, pruner
