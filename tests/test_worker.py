"""The queue-worker supervisor (``python -m gateway.worker``) and its worker processes."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

from tests.conftest import eventually


def children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def running(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    state = next((line.split()[1] for line in status.splitlines() if line.startswith("State:")), "")
    return state not in ("Z", "X")


def test_workers_stop_when_their_supervisor_is_killed(start_workers: Any) -> None:
    """SIGKILL cannot be forwarded: the workers get SIGTERM from the kernel (PDEATHSIG) instead of
    running on as orphans that keep taking jobs."""
    workers = start_workers(WORKER_COUNT="2")
    supervisor = workers.proc.pid
    forked = eventually(lambda: len(children(supervisor)) == 2 and children(supervisor), timeout=30)
    os.kill(supervisor, signal.SIGKILL)
    workers.proc.wait(10)
    eventually(lambda: not any(running(pid) for pid in forked), timeout=30)
