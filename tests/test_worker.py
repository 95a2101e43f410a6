"""The queue-worker supervisor (``python -m gateway.worker``) and its worker processes."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import redis
from rq import Queue, Worker

from gateway import embedded
from minitwitter import db
from tests.conftest import child_pids, eventually, process_running


def test_workers_stop_when_their_supervisor_is_killed(start_workers: Any) -> None:
    """SIGKILL cannot be forwarded: the workers get a stop from the kernel (PDEATHSIG, turned into
    one SIGTERM) instead of running on as orphans that keep taking jobs."""
    workers = start_workers(WORKER_COUNT="2")
    supervisor = workers.proc.pid
    # two queue workers and the scheduler
    forked = eventually(lambda: len(child_pids(supervisor)) == 3 and child_pids(supervisor), timeout=30)
    os.kill(supervisor, signal.SIGKILL)
    workers.proc.wait(10)
    eventually(lambda: not any(process_running(pid) for pid in forked), timeout=30)


def test_workers_started_while_redis_is_down_wait_for_it(start_workers: Any, tmp_path: Path) -> None:
    """Workers started before their Redis wait for it (they used to die at once with a
    traceback) and take their queues once it answers."""
    port = embedded.free_port()
    url = f"redis://127.0.0.1:{port}/0"
    workers = start_workers(WORKER_COUNT="2", REDIS_URL=url)
    supervisor = workers.proc.pid
    forked = eventually(lambda: len(child_pids(supervisor)) == 3 and child_pids(supervisor), timeout=30)
    eventually(lambda: db.scalar("SELECT count(*) FROM logs WHERE message = 'waiting for Redis'"
                                 " AND ts > now() - interval '1 minute'") >= 2, timeout=30)
    assert all(process_running(pid) for pid in forked)
    server = embedded.start_redis(tmp_path / "redis", port=port, binary=embedded.system_redis_binary())
    try:
        eventually(lambda: len(Worker.all(connection=redis.Redis.from_url(url))) == 2, timeout=30)
        workers.proc.send_signal(signal.SIGTERM)
        assert workers.proc.wait(30) == 0
        eventually(lambda: not any(process_running(pid) for pid in forked), timeout=10)
    finally:
        server.stop()


def test_a_worker_keeps_what_it_loaded_out_of_the_garbage_collector(start_workers: Any, stores: Any) -> None:
    """After loading, a worker freezes its objects (``gc.freeze``): full collections then walk
    only what jobs allocate, not the ~10⁵ module-level objects (tens of ms each time)."""
    start_workers(WORKER_COUNT="1")
    queue = Queue("default", connection=redis.Redis.from_url(stores["REDIS_URL"]))
    job = queue.enqueue("gc.get_freeze_count")  # the worker's own count, returned as the job's result
    eventually(lambda: job.refresh() or job.get_status() == "finished", timeout=30)
    assert job.return_value() > 10_000
