"""``python -m gateway.worker``: RQ worker processes for async invocations, callbacks and
sentiment jobs. ``WORKER_COUNT`` processes run side by side; SIGTERM or Ctrl-C lets each finish
its current job (RQ's warm shutdown) before it exits. The scheduler (retries with backoff and
periodic jobs) runs inside the workers.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import sys
import time

import redis
from rq import SimpleWorker

from minitwitter import cache, logs
from minitwitter.config import Config, get_config
from minitwitter.runtime import freeze_loaded_objects

from . import observability
from .processes import die_with_parent, flush_at_exit, stop_on_signals_while_loading

log = logging.getLogger("minitwitter.worker")

#: Queues in priority order: user-visible async calls first, then verdicts, then deliveries.
QUEUES = ("faas-request", "sentiment", "callbacks", "default")
#: Seconds between checks whether Redis is back after a worker lost it.
REDIS_RETRY_SECONDS = 0.5


def queue_names(config: Config | None = None) -> list[str]:
    cfg = config or get_config()
    return [cfg.async_queue if q == "faas-request" else q for q in QUEUES]


def run_worker(burst: bool = False) -> None:
    """Run one worker in this process until told to stop; outlive Redis outages.

    A worker started while Redis is down waits for it. RQ's work loop quits (raising from its
    teardown) when Redis goes away; the worker is then started again once Redis answers, so a
    Redis restart never needs a worker restart.
    """
    logs.configure_logging("worker")
    hooked = False
    while True:
        if not burst:
            wait_for_redis()
        cache.reset()
        stop_on_signals_while_loading()  # until RQ installs its handlers, after its fork
        try:
            worker = SimpleWorker(queue_names(), connection=cache.shared_client())
            if not hooked:
                on_worker_start(worker)
                freeze_loaded_objects()
                hooked = True
            worker.work(burst=burst, with_scheduler=True, logging_level="WARNING")
            return
        except (redis.RedisError, OSError) as exc:
            if burst:
                raise
            log.warning("worker lost Redis; restarting", extra={"error": type(exc).__name__})


def on_worker_start(worker: SimpleWorker) -> None:
    """The sentiment pipeline's start-up hook (its periodic reconciler), where it is installed."""
    try:
        from minitwitter import jobs
    except ImportError:
        return
    jobs.on_worker_start(worker)


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


def supervised_worker() -> None:
    """Entry of a worker process forked by the supervisor."""
    if not die_with_parent():  # the supervisor died before prctl took effect
        return
    flush_at_exit()  # multiprocessing ends this process with os._exit
    run_worker()


def main() -> None:
    cfg = get_config()
    observability.check_worker_settings(cfg)
    count = max(1, cfg.worker_count)
    if count == 1:
        logs.configure_logging("worker")
        observability.start_worker_services(cfg)
        run_worker()
        return
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=supervised_worker, name=f"worker-{i}")
             for i in range(count)]
    for proc in procs:
        proc.start()
    # Threads only after the fork: metrics endpoint and log pruning live in this parent.
    logs.configure_logging("worker-supervisor")
    observability.start_worker_services(cfg)

    def stop(_signum: int, _frame: object) -> None:
        for proc in procs:
            if proc.is_alive() and proc.pid:
                os.kill(proc.pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for proc in procs:
        proc.join()
    sys.exit(0)


if __name__ == "__main__":
    main()
