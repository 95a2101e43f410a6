"""``make run``: the whole system in the foreground, no Docker.

1. Secrets: the OpenFaaS-named secret files, generated once into ``.secrets/`` (git-ignored).
2. Stores: ``DATABASE_URL`` / ``REDIS_URL`` when set; else PostgreSQL / Redis on 127.0.0.1's
   standard ports when they answer; else embedded servers in ``.data/`` (see ``embedded.py``).
3. Migrations, then every stack.yml function (re)deployed into the gateway's state.
4. The gateway under granian (``GATEWAY_WORKERS`` processes) and the queue side (``WORKER_COUNT``
   queue workers and the scheduler), each kept running by its supervisor: a child that dies is
   started again. Ctrl-C or SIGTERM stops everything, embedded stores included, in a few seconds
   when idle (in-flight requests get ``GATEWAY_DRAIN_TIMEOUT`` seconds), and exits 0.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import Any

from minitwitter.config import DEV_SECRETS_DIR, REPO_ROOT, Config, ensure_dev_secrets, load_config, set_config

from . import embedded
from .processes import (
    QUEUE_JOB_GRACE,
    Child,
    ForkedChild,
    Running,
    Supervisor,
    detach_from_terminal_signals,
    parent_death_preexec,
    stop_on_signals_while_loading,
)

log = logging.getLogger("minitwitter.run")

DATA_DIR = REPO_ROOT / ".data"
EMBEDDED_PG_PORT = 54329
EMBEDDED_REDIS_PORT = 63799


def choose_stores(env: dict[str, str], stack: list[object], data_dir: Path) -> None:
    """Fill DATABASE_URL / REDIS_URL in ``env``, starting embedded servers when needed.

    ``LOCAL_PG_PORT`` / ``LOCAL_REDIS_PORT`` (default 5432 / 6379) are the ports probed on
    127.0.0.1; ``EMBEDDED_PG_PORT`` / ``EMBEDDED_REDIS_PORT`` (54329 / 63799) those of the
    embedded servers.
    """
    if not env.get("DATABASE_URL"):
        local = int(env.get("LOCAL_PG_PORT", "5432"))
        if embedded.port_open("127.0.0.1", local):
            env["DATABASE_URL"] = f"postgresql://postgres@127.0.0.1:{local}/minitwitter"
        else:
            print("no PostgreSQL configured or running: starting the embedded one", flush=True)
            pg = embedded.start_postgres(data_dir / "postgres", int(env.get("EMBEDDED_PG_PORT", EMBEDDED_PG_PORT)))
            stack.append(pg)
            env["DATABASE_URL"] = pg.url.rsplit("/", 1)[0] + "/minitwitter"
    if not env.get("REDIS_URL"):
        local = int(env.get("LOCAL_REDIS_PORT", "6379"))
        if embedded.port_open("127.0.0.1", local):
            env["REDIS_URL"] = f"redis://127.0.0.1:{local}/0"
        else:
            print("no Redis configured or running: starting the embedded one", flush=True)
            rd = embedded.start_redis(data_dir / "redis", int(env.get("EMBEDDED_REDIS_PORT", EMBEDDED_REDIS_PORT)))
            stack.append(rd)
            env["REDIS_URL"] = rd.url


def start_services() -> Supervisor:
    """The supervisor of ``make run``'s two children, started: the gateway server (granian,
    ``gateway/serve.py``, which keeps its own worker processes running) and the queue side
    (``gateway/worker.py``, which keeps the queue workers and the scheduler running).

    Both are forked from this process once it has imported everything they run (the library,
    granian, RQ) and frozen it: all nine processes then share one copy of those pages (the
    gateway's and the queue side's families each held their own before, ~40 MiB apiece). This
    process therefore runs no thread, as the queue side's supervisor does (a fork inherits no
    lock a thread held).

    Each child leads a process group of its own, so a terminal's Ctrl-C reaches only this
    process, which stops each child with one SIGTERM; each gets SIGTERM from the kernel should
    this process die. A child that dies is forked again after a back-off. The containers start
    the same two mains by command (:data:`~gateway.processes.GATEWAY_SERVER_ARGV`,
    :data:`~gateway.processes.QUEUE_WORKERS_ARGV`)."""
    # Not at the top: prometheus_client picks where samples go (PROMETHEUS_MULTIPROC_DIR, set by
    # main) when it is first imported, and granian and RQ are only needed from here on.
    from minitwitter import metrics

    from . import serve, worker

    serve.preload()  # the library (the queue side's too) and the gateway's edge; RQ came with worker
    for kind in ("gateway", "worker-supervisor"):
        metrics.PROCESS_RESTARTS.labels(kind=kind)
    supervisor = Supervisor(
        [Child("gateway", "gateway", fork_main(serve.main, "gateway"), own_group=True),
         Child("worker-supervisor", "queue workers", fork_main(worker.main, "worker-supervisor"),
               own_group=True)],
        log=lambda message, fields: log.warning(message, extra=fields),
        count=lambda kind: metrics.PROCESS_RESTARTS.labels(kind=kind).inc(),
    )
    supervisor.start()
    return supervisor


def fork_main(main: Callable[[], object], name: str) -> Callable[[], Running]:
    """How to start a child that runs ``main`` in a fork of this process: in a process group of
    its own (set on both sides of the fork, so a stop right after it still reaches the group),
    with the default action for SIGTERM/SIGINT until ``main`` installs its own, and SIGTERM from
    the kernel when this process dies."""
    on_parent_death = parent_death_preexec()

    def child_main() -> None:
        stop_on_signals_while_loading()
        detach_from_terminal_signals()
        on_parent_death()
        main()

    def start() -> Running:
        if threading.active_count() > 1:  # a fork would inherit whatever lock another thread held
            raise RuntimeError(f"make run forks {name} and so must run no thread: "
                               f"{[t.name for t in threading.enumerate()]}")
        child = ForkedChild(child_main, name)
        with suppress(OSError):  # the child did it first, or is already gone
            os.setpgid(child.pid, child.pid)
        return child

    return start


def stop_grace(config: Config) -> float:
    """How long a stop waits for the children: the gateway drains for ``GATEWAY_DRAIN_TIMEOUT``,
    the queue workers get :data:`QUEUE_JOB_GRACE` more for their current job."""
    return config.gateway_drain_timeout + QUEUE_JOB_GRACE + 5.0


def stop_services(processes: list[subprocess.Popen[Any]], grace: float = 35.0,
                  sig: int = signal.SIGTERM) -> None:
    """Signal each (SIGTERM: granian drains, workers finish their job), kill what outlives ``grace``."""
    for proc in processes:
        if proc.poll() is None:
            proc.send_signal(sig)
    for proc in processes:
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()


def main() -> int:
    env = dict(os.environ)
    started: list[object] = []
    supervisor: Supervisor | None = None
    stopping: list[int] = []

    def stop(signum: int = 0, _frame: object = None) -> None:
        stopping.append(signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    data_dir = Path(env.get("DATA_DIR") or DATA_DIR)
    # Metrics of every process (this one's restart counts too) go to one fresh folder, chosen
    # before anything imports prometheus_client.
    prom_dir = data_dir / "prometheus"
    shutil.rmtree(prom_dir, ignore_errors=True)
    prom_dir.mkdir(parents=True)
    env["PROMETHEUS_MULTIPROC_DIR"] = os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(prom_dir)
    config: Config | None = None
    try:
        if not env.get("SECRETS_DIR") and not Path("/var/openfaas/secrets").is_dir():
            ensure_dev_secrets(DEV_SECRETS_DIR)
        choose_stores(env, started, data_dir)
        config = load_config(env)
        set_config(config)
        if embedded.port_open(config.gateway_bind, config.gateway_port):
            # Another program's listener would pass the start-up check below while the gateway
            # could never bind: say so and stop rather than restart it for ever.
            print(f"{config.gateway_bind}:{config.gateway_port} is already in use by another program: "
                  "stop it or choose another GATEWAY_PORT", file=sys.stderr)
            return 1
        # Not at the top: logs reports to metrics, and prometheus_client picks where samples go
        # (PROMETHEUS_MULTIPROC_DIR, set above) when it is first imported.
        from minitwitter import logs

        # No thread in this process (its children are forked from it): lines written at once.
        logs.configure_logging("run", background=False)
        env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT / "shared"), str(REPO_ROOT)])
        os.environ.update(env)  # what the forked children read their settings from
        # Database, migrations and the stack's functions, in a child: this process stays small.
        if subprocess.run([sys.executable, "-m", "gateway.prepare"], env=env, cwd=REPO_ROOT,
                          check=False).returncode != 0:
            print("could not prepare the database; see the log above", file=sys.stderr)
            return 1
        supervisor = start_services()
        url = f"http://{config.gateway_bind}:{config.gateway_port}"
        while not embedded.port_open(config.gateway_bind, config.gateway_port) and not stopping:
            if any(c.running is not None and c.running.poll() is not None for c in supervisor.children):
                print("a component exited during start-up; see the log above", file=sys.stderr)
                return 1
            time.sleep(0.2)
        if stopping:
            return 0
        print(
            "\nMinitwitter is running\n"
            f"  gateway        {url}  (functions: {url}/function/<name>)\n"
            f"  metrics        {url}/metrics\n"
            f"  health         {url}/healthz\n"
            f"  system API     user {config.basic_auth_user!r}, password in "
            f"{config.secrets_dir / 'basic-auth-password'}\n"
            f"                 faas-cli login -g {url} -u {config.basic_auth_user} --password-stdin "
            f"< {config.secrets_dir / 'basic-auth-password'}\n"
            f"  PostgreSQL     {env['DATABASE_URL']}\n"
            f"  Redis          {env['REDIS_URL']}\n"
            f"  sentiment      SENTIMENT_BACKEND={config.sentiment_backend} (Ollama at {config.ollama_host}"
            f", VADER when it does not answer)\n"
            "Press Ctrl-C to stop.\n", flush=True)
        supervisor.watch(lambda: bool(stopping), interval=0.2)
        return 0
    finally:
        if supervisor is not None:
            supervisor.stop(stop_grace(config) if config else 35.0)
        for service in reversed(started):
            service.stop()  # type: ignore[attr-defined]


if __name__ == "__main__":
    sys.exit(main())
