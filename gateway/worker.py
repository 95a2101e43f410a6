"""``python -m gateway.worker``: the queue side, a supervisor and the processes it keeps running.

- ``WORKER_COUNT`` **queue workers** (RQ ``SimpleWorker``): async invocations, sentiment jobs,
  callback deliveries. SIGTERM lets each finish its current job (RQ's warm shutdown).
- One **scheduler** (:mod:`gateway.scheduler`): scheduled retries, the reconciler, log
  retention, and the ``/metrics`` endpoint when ``WORKER_METRICS_PORT`` is set.

The supervisor forks them, starts again any that dies (after a back-off: 0.25 s doubling to 4 s,
reset after 30 s of life) with a JSON log line and ``minitwitter_process_restarts_total{kind}``,
and stops only on SIGTERM or SIGINT: then each child gets one SIGTERM, and whatever is left after
``GATEWAY_DRAIN_TIMEOUT`` + :data:`~gateway.processes.QUEUE_JOB_GRACE` seconds is killed. It runs no thread, so a child
forked later inherits no lock a thread held; each child leaves the terminal's process group (a
Ctrl-C reaches only the supervisor) and ends when the supervisor dies.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable

import redis
from rq import SimpleWorker

from minitwitter import cache, logs, logstore, metrics, verdicts
from minitwitter.config import Config, get_config
from minitwitter.runtime import freeze_loaded_objects, preload_library

from . import observability, scheduler
from .processes import (
    QUEUE_JOB_GRACE,
    Child,
    ForkedChild,
    Running,
    Supervisor,
    detach_from_terminal_signals,
    die_with_parent,
    flush_at_exit,
    set_process_name,
    stop_on_signals_while_loading,
)
from .queue_worker import queue_names

log = logging.getLogger("minitwitter.worker")

#: Seconds between checks whether Redis is back after a worker lost it.
REDIS_RETRY_SECONDS = 0.5
#: What ``ps -o comm`` shows for the supervisor's children.
QUEUE_WORKER_NAME = "mt-queue-worker"
SCHEDULER_NAME = "mt-scheduler"
SUPERVISOR_NAME = "mt-worker-sup"


def run_worker(burst: bool = False) -> None:
    """Run one worker in this process until told to stop; outlive Redis outages.

    A worker started while Redis is down waits for it. RQ's work loop quits (raising from its
    teardown) when Redis goes away; the worker is then started again once Redis answers, so a
    Redis restart never needs a worker restart.
    """
    logs.configure_logging("worker", store=logstore.store_batch)
    hooked = False
    while True:
        if not burst:
            wait_for_redis()
        cache.reset()
        stop_on_signals_while_loading()  # until RQ installs its handlers
        try:
            worker = SimpleWorker(queue_names(), connection=cache.shared_client())
            if not hooked:
                on_worker_start(worker)
                freeze_loaded_objects()
                hooked = True
            worker.work(burst=burst, logging_level="WARNING")
            return
        except (redis.RedisError, OSError) as exc:
            if burst:
                raise
            log.warning("worker lost Redis; restarting", extra={"error": type(exc).__name__})


def on_worker_start(worker: SimpleWorker) -> None:
    """The sentiment pipeline's start-up hook."""
    verdicts.on_worker_start(worker)


def wait_for_redis() -> None:
    """Return once Redis answers; until then SIGTERM/SIGINT end the process.

    RQ's handlers, left from a work loop that lost Redis, would raise into this loop; here a
    stop goes through the normal exit, which flushes the buffered log lines and metrics.
    """
    if cache.ping():
        return
    log.warning("waiting for Redis")
    signal.signal(signal.SIGTERM, _exit_on_signal)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    while not cache.ping():
        time.sleep(REDIS_RETRY_SECONDS)


def _exit_on_signal(_signum: int, _frame: object) -> None:
    raise SystemExit(0)


def _child_start(kind: str, name: str) -> bool:
    """First steps of every forked child: the default action for SIGTERM/SIGINT (not the
    supervisor's handler it inherited) until it installs its own, its own process group, death
    with the supervisor, buffered logs and metrics flushed at exit. False: the supervisor is
    already gone."""
    stop_on_signals_while_loading()
    set_process_name(name)
    detach_from_terminal_signals()
    if not die_with_parent():  # the supervisor died before prctl took effect
        return False
    flush_at_exit(metrics.flush, logs.flush)  # multiprocessing ends this process with os._exit
    cache.reset()
    logs.configure_logging(kind, store=logstore.store_batch)
    return True


def supervised_worker() -> None:
    """Entry of a queue-worker process forked by the supervisor."""
    if _child_start("worker", QUEUE_WORKER_NAME):
        run_worker()


def supervised_scheduler(config: Config, owner: str) -> None:
    """Entry of the scheduler process forked by the supervisor."""
    if _child_start("scheduler", SCHEDULER_NAME):
        scheduler.run(config, queue_names(config), owner,
                      services=lambda: observability.start_worker_services(config))


def children(config: Config) -> list[Child]:
    """The supervisor's children: the queue workers and the scheduler."""
    # One name per supervisor for the scheduler's queue locks: a scheduler started again after
    # a crash owns them at once (another supervisor's scheduler takes them once they expire).
    owner = f"{socket.gethostname()}:{os.getpid()}"
    def fork(target: Callable[[], None], name: str) -> Callable[[], Running]:
        return lambda: ForkedChild(target, name)

    names = [f"worker-{i + 1}" for i in range(max(1, config.worker_count))]
    return [*(Child("queue-worker", name, fork(supervised_worker, name)) for name in names),
            Child("scheduler", "scheduler", fork(lambda: supervised_scheduler(config, owner), "scheduler"))]


def main() -> None:
    cfg = get_config()
    observability.check_worker_settings(cfg)
    set_process_name(SUPERVISOR_NAME)
    # No thread in this process, ever (see the module's docstring): log lines are written at
    # once, restarts counted straight into the shared samples.
    logs.configure_logging("worker-supervisor", background=False)
    for kind in ("queue-worker", "scheduler"):
        metrics.PROCESS_RESTARTS.labels(kind=kind)
    # What the children import anyway, imported (and VADER's lexicon loaded) once here: they are
    # forked with it in shared pages. Before any fork, like everything this process does.
    preload_library()
    supervisor = Supervisor(
        children(cfg),
        log=lambda message, fields: log.warning(message, extra=fields),
        count=lambda kind: metrics.PROCESS_RESTARTS.labels(kind=kind).inc(),
    )
    stopping: list[int] = []

    def stop(signum: int, _frame: object) -> None:
        stopping.append(signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    supervisor.start()
    supervisor.watch(lambda: bool(stopping))
    killed = supervisor.stop(cfg.gateway_drain_timeout + QUEUE_JOB_GRACE)
    if killed:
        log.warning("children killed after the grace period", extra={"children": killed})
    sys.exit(0)


if __name__ == "__main__":
    main()
