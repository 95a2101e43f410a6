"""Container entry point of the gateway/queue-worker image (``gateway/Dockerfile``).

``python -m gateway.entrypoint gateway``  wait for PostgreSQL, apply migrations, exec the server (granian)
``python -m gateway.entrypoint worker``   wait for PostgreSQL, apply migrations, exec the workers
``python -m gateway.entrypoint migrate``  wait for PostgreSQL, apply migrations, exit
``python -m gateway.entrypoint healthcheck gateway|worker``  exit 0 when healthy (HEALTHCHECK)

Migrations are safe when every replica runs them at once (advisory lock in ``migrate.py``).
The server replaces this process (``os.execv``), so SIGTERM from ``docker stop`` or the kubelet
reaches granian / the worker supervisor directly and they drain: granian finishes in-flight
requests (within ``FUNCTION_TIMEOUT`` + 30 s), RQ workers finish their current job (warm shutdown).
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import socket
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from urllib.error import URLError
from urllib.request import urlopen

from minitwitter import errors
from minitwitter.config import get_config

from .processes import GATEWAY_SERVER_ARGV, QUEUE_WORKERS_ARGV

log = logging.getLogger("minitwitter.entrypoint")

#: How long to wait for PostgreSQL before giving up (the orchestrator then restarts us).
DEFAULT_WAIT_SECONDS = 60.0


def wait_and_migrate(timeout: float, sleep: Callable[[float], None] = time.sleep) -> list[int]:
    """Apply pending migrations, retrying while PostgreSQL is not reachable yet."""
    # Imported here, after main emptied PROMETHEUS_MULTIPROC_DIR: see main.
    from minitwitter import db, migrate

    deadline = time.monotonic() + timeout
    delay = 0.5
    while True:
        try:
            versions = migrate.migrate()
            db.close_connection()
            return versions
        except errors.DependencyUnavailable:
            if time.monotonic() + delay > deadline:
                raise
            log.warning("database not reachable yet; retrying", extra={"retry_in_s": delay})
            sleep(delay)
            delay = min(delay * 2, 5.0)


def reset_metrics_dir() -> None:
    """Empty ``PROMETHEUS_MULTIPROC_DIR``: samples of a previous run would be summed in."""
    raw = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")
    if not raw:
        return
    path = Path(raw)
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True, exist_ok=True)


def server_argv(role: str) -> list[str]:
    """The command that becomes the container's main process for ``role``."""
    if role == "gateway":
        return list(GATEWAY_SERVER_ARGV)
    if role == "worker":
        return list(QUEUE_WORKERS_ARGV)
    raise ValueError(f"unknown role {role!r}")


def healthy(role: str) -> bool:
    """Gateway: ``/healthz`` answers 200. Worker: an RQ worker of this host is registered."""
    cfg = get_config()
    if role == "gateway":
        try:
            with urlopen(f"http://127.0.0.1:{cfg.gateway_port}/healthz", timeout=3) as response:
                return bool(response.status == 200)
        except (URLError, OSError):
            return False
    if role == "worker":
        import redis
        from rq import Worker

        try:
            # A client of its own, not minitwitter.cache's: the library's stores count their
            # failures in its metrics, and importing those writes this process's sample files
            # into PROMETHEUS_MULTIPROC_DIR; a healthcheck runs every few seconds.
            conn = redis.Redis.from_url(cfg.redis_url, socket_timeout=cfg.redis_timeout,
                                        socket_connect_timeout=cfg.redis_timeout)
            hostname = socket.gethostname()
            return any(w.hostname == hostname for w in Worker.all(connection=conn))
        except (redis.RedisError, OSError):
            return False
    raise ValueError(f"unknown role {role!r}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway.entrypoint", description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["gateway", "worker", "migrate", "healthcheck"])
    parser.add_argument("role", nargs="?", choices=["gateway", "worker"],
                        help="for healthcheck: which role to check")
    parser.add_argument("--no-migrate", action="store_true", help="start without applying migrations")
    parser.add_argument("--wait", type=float, default=DEFAULT_WAIT_SECONDS,
                        help="seconds to wait for PostgreSQL (default %(default)s)")
    args = parser.parse_args(argv)
    if args.command == "healthcheck":
        if args.role is None:
            parser.error("healthcheck needs a role: gateway or worker")
        return 0 if healthy(args.role) else 1
    # Before anything can count a metric (a failed connection does): samples go to this folder.
    reset_metrics_dir()
    # Imported only now: logs, like the library's stores, reports to minitwitter.metrics, and
    # importing that module writes this process's sample files into the folder just emptied.
    from minitwitter import logs

    logs.configure_logging("entrypoint")
    if not args.no_migrate:
        try:
            applied = wait_and_migrate(args.wait)
        except errors.DependencyUnavailable:
            log.error("database unreachable; giving up", extra={"waited_s": args.wait})
            return 1
        log.info("migrations applied", extra={"versions": applied})
    if args.command == "migrate":
        return 0
    argv_exec = server_argv(args.command)
    logging.shutdown()
    os.execv(argv_exec[0], argv_exec)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
