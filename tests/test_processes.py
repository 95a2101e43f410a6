"""gateway.processes: a forked worker and the death of the process that forked it.

Each test starts a real "parent" process that forks a child with multiprocessing (as granian and
the queue-worker supervisor do); the child waits for the test's go-ahead before it calls the code
under test, so the test can kill the parent before or after that call deterministically.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from minitwitter.config import REPO_ROOT
from tests.conftest import base_env, eventually, process_running

#: The parent: forks the child, prints its pid, then starts a few threads (as granian's server
#: process and the queue-worker supervisor do after forking) and sleeps until killed. The child
#: waits for the ``go`` file, runs ``step`` (code given by the test), then writes the value of
#: its ``result`` to ``done`` and sleeps.
PARENT = textwrap.dedent("""
    import multiprocessing, sys, threading, time
    from pathlib import Path

    def child(go, done, step):
        while not Path(go).exists():
            time.sleep(0.01)
        scope = {"go": go}
        exec(step, scope)
        Path(done).write_text(repr(scope.get("result")))
        time.sleep(60)

    go, done, step = sys.argv[1:4]
    process = multiprocessing.get_context("fork").Process(target=child, args=(go, done, step))
    process.start()
    print(process.pid, flush=True)
    for _ in range(8):
        threading.Thread(target=time.sleep, args=(60,), daemon=True).start()
    time.sleep(60)
""")


class Family:
    """A parent process and the child it forked."""

    def __init__(self, tmp_path: Path, step: str, env: dict[str, str]) -> None:
        self.go = tmp_path / "go"
        self.done = tmp_path / "done"
        self.parent = subprocess.Popen(
            [sys.executable, "-c", PARENT, str(self.go), str(self.done), step],
            stdout=subprocess.PIPE, env=env, cwd=REPO_ROOT)
        assert self.parent.stdout is not None
        self.child = int(self.parent.stdout.readline())

    def kill_parent(self) -> None:
        self.parent.kill()
        self.parent.wait(10)

    def let_child_go(self) -> None:
        self.go.touch()

    def result(self) -> str:
        return eventually(lambda: self.done.exists() and self.done.read_text(), timeout=30)

    def end(self) -> None:
        for pid in (self.child, self.parent.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.parent.wait(10)


@pytest.fixture
def family(tmp_path: Path, stores: dict[str, str]) -> Iterator[Any]:
    """Factory: start a parent whose forked child runs ``step`` when let go; all killed after."""
    started: list[Family] = []

    def start(step: str, **extra: str) -> Family:
        started.append(Family(tmp_path, step, base_env(stores, **extra)))
        return started[-1]

    yield start
    for each in started:
        each.end()


DIE_WITH_PARENT = "from gateway.processes import die_with_parent; result = die_with_parent()"


def test_a_child_whose_parent_is_alive_gets_sigterm_when_the_parent_is_killed(family: Any) -> None:
    members = family(DIE_WITH_PARENT)
    members.let_child_go()
    assert members.result() == "True"
    members.kill_parent()  # SIGKILL: the parent forwards nothing; the kernel signals the child
    eventually(lambda: not process_running(members.child), timeout=15)


def test_a_child_gets_exactly_one_sigterm_however_many_death_signals_come(family: Any) -> None:
    """Linux sends the parent-death signal again each time the child passes to another thread of
    the dying parent (this parent has 9); granian's handler deadlocked on a second SIGTERM. The
    child here also sends the signal to itself five more times."""
    members = family(textwrap.dedent("""
        import os, signal, time
        from pathlib import Path
        from gateway.processes import PARENT_DIED_SIGNAL, die_with_parent
        terms = []
        signal.signal(signal.SIGTERM, lambda *_: terms.append(1))
        parent = os.getppid()
        die_with_parent()
        Path(go + ".asked").touch()
        while os.getppid() == parent:
            time.sleep(0.01)
        time.sleep(0.5)  # every death signal has come
        after_death = len(terms)
        for _ in range(5):
            os.kill(os.getpid(), PARENT_DIED_SIGNAL)
            time.sleep(0.05)
        result = (after_death, len(terms))
    """))
    members.let_child_go()
    eventually(lambda: Path(f"{members.go}.asked").exists())
    members.kill_parent()
    assert members.result() == "(1, 1)"  # one from the parent's death, none from the rest


def test_a_child_whose_parent_died_before_it_asked_is_told_so(family: Any) -> None:
    """The kernel's parent-death signal only covers deaths after the request: here none would
    ever come, so the caller must learn that its parent is gone."""
    members = family(DIE_WITH_PARENT)
    members.kill_parent()
    members.let_child_go()
    assert members.result() == "False"


def test_a_gateway_server_worker_whose_server_died_ends_before_loading(family: Any, tmp_path: Path) -> None:
    """A granian worker forked just before its server process was killed must not load the
    gateway and serve on as an orphan: importing gateway.rsgi ends it (SystemExit(0), which
    multiprocessing turns into a clean exit) before it loads anything."""
    prom = tmp_path / "prom"
    prom.mkdir()
    members = family(textwrap.dedent("""
        try:
            import gateway.rsgi
            result = "loaded"
        except SystemExit as stop:
            result = ("ended", stop.code)
    """), PROMETHEUS_MULTIPROC_DIR=str(prom))
    members.kill_parent()
    members.let_child_go()
    assert members.result() == "('ended', 0)"


@pytest.mark.parametrize("entry", ["supervised_worker()", "supervised_scheduler(get_config(), 'owner')"])
def test_a_queue_side_child_whose_supervisor_died_ends_before_working(family: Any, entry: str) -> None:
    members = family(f"from minitwitter.config import get_config\n"
                     f"from gateway.worker import supervised_scheduler, supervised_worker\nresult = {entry}")
    members.kill_parent()
    members.let_child_go()
    assert members.result() == "None"  # it returned instead of running a worker
