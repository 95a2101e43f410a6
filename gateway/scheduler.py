"""The queue side's time-driven work, in one supervised process (``gateway.worker`` starts it).

- **Scheduled jobs**, every second: jobs whose time has come (callback delivery retries with
  back-off, sentiment retries) move from RQ's scheduled-job registries onto their queues, through
  RQ's ``RQScheduler`` and its per-queue Redis locks, so one scheduler acts per queue however
  many worker containers run. The locks are owned under a name fixed for the supervisor, so a
  scheduler started again after a crash takes them back at once instead of after their expiry
  (61 s). RQ's own arrangement (a scheduler process forked by a worker, restarted by the
  worker's maintenance every 10 minutes) left scheduled retries stuck for ~10 minutes after a
  Redis restart.
- **The reconciler** (:func:`minitwitter.verdicts.reconcile`) every ``RECONCILE_INTERVAL`` seconds,
  and at once when Redis answers again after an outage: items left pending re-enqueued, overdue
  callbacks re-queued.
- **Log retention**, and with ``WORKER_METRICS_PORT`` the workers' ``/metrics`` endpoint.

Redis or PostgreSQL going away is waited out, never fatal: each tick catches the failure,
marks the store down and tries again a second later.
"""

from __future__ import annotations

import logging
import signal
import time
from typing import Any

import redis
from rq.scheduler import RQScheduler

from minitwitter import cache, errors, logs, verdicts
from minitwitter.config import Config

log = logging.getLogger("minitwitter.scheduler")

#: Seconds between scheduler ticks (RQ's own scheduler interval; an integer: its lock expiry is this + 60 s).
TICK_SECONDS = 1


class Scheduler:
    """One scheduler process's loop (call :meth:`run`; SIGTERM/SIGINT end it after the tick)."""

    def __init__(self, config: Config, queue_names: list[str], owner: str) -> None:
        self.config = config
        self.queue_names = queue_names
        self.owner = owner
        self.stopping = False
        self.redis_down = False
        self._rq: RQScheduler | None = None
        self._next_reconcile = 0.0

    def stop(self, _signum: int = 0, _frame: object = None) -> None:
        self.stopping = True

    def run(self) -> None:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
        log.info("scheduler started", extra={"queues": self.queue_names})
        while not self.stopping:
            self.tick()
            deadline = time.monotonic() + TICK_SECONDS
            while not self.stopping and time.monotonic() < deadline:
                time.sleep(0.05)
        self.release()

    def tick(self) -> None:
        """Move due jobs, and reconcile when due; a store outage is logged once and waited out."""
        with logs.context(function="scheduler"):
            try:
                recovered = self.redis_down
                self.move_due_jobs()
                if recovered:
                    self.redis_down = False
                    log.warning("Redis answers again; scheduled work resumes")
                # Back from an outage: reconcile now, whoever held the lock (what Redis lost, or
                # what could not be queued meanwhile, is put back; reconciling twice is harmless).
                self.reconcile_when_due(force=recovered)
            except (redis.RedisError, OSError) as exc:
                if not self.redis_down:
                    log.warning("scheduler lost Redis; waiting for it", extra={"error": type(exc).__name__})
                self.redis_down = True
                self._rq = None  # its connection and locks are re-established with Redis
                cache.mark_down(exc)
            except errors.MinitwitterError as exc:  # PostgreSQL down: the reconciler waits
                log.warning("reconciler could not reach its stores", extra={"error": exc.message})
            except Exception:
                log.exception("scheduler tick failed")

    def move_due_jobs(self) -> None:
        if self._rq is None:
            self._rq = RQScheduler(self.queue_names, connection=cache.shared_client(self.config),
                                   interval=TICK_SECONDS, name=self.owner, logging_level="WARNING")
        scheduler = self._rq
        if scheduler.acquired_locks != set(self.queue_names):
            scheduler.acquire_locks()  # the queues no other scheduler holds (again, every tick)
        else:
            scheduler.heartbeat()
        scheduler.enqueue_scheduled_jobs()

    def reconcile_when_due(self, *, force: bool = False) -> None:
        """The reconciler, every ``RECONCILE_INTERVAL`` by one scheduler among the replicas (a
        Redis lock), or now when ``force``."""
        now = time.monotonic()
        if not force and now < self._next_reconcile:
            return
        interval = max(1, self.config.reconcile_interval)
        self._next_reconcile = now + interval
        if force or cache.client(self.config).set(verdicts.RECONCILE_LOCK, self.owner, nx=True,
                                                  px=int(interval * 900)):
            verdicts.reconcile(self.config)

    def release(self) -> None:
        """Give the queues' locks back, so another scheduler can take them at once."""
        if self._rq is not None:
            try:
                self._rq.release_locks()
            except (redis.RedisError, OSError):
                pass


def run(config: Config, queue_names: list[str], owner: str, services: Any = None) -> None:
    """Entry of the scheduler process (``services`` starts the metrics endpoint and pruner)."""
    if services is not None:
        services()
    Scheduler(config, queue_names, owner).run()
