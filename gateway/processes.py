"""Process hygiene and supervision shared by ``make run``, the gateway's server workers and the
queue-worker processes."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any, Protocol

#: Seconds a stopping queue worker gets, on top of GATEWAY_DRAIN_TIMEOUT, to finish its job.
QUEUE_JOB_GRACE = 20.0
#: The commands of the two long-running servers (``make run``, the container entrypoint, the
#: tests and the benchmark start them; kept here, where importing costs nothing).
GATEWAY_SERVER_ARGV = (sys.executable, "-m", "gateway.serve")
QUEUE_WORKERS_ARGV = (sys.executable, "-m", "gateway.worker")

#: prctl(2) option: the signal this process gets when its parent dies.
PR_SET_PDEATHSIG = 1

#: What Linux sends a worker when its parent dies: not SIGTERM itself, because the kernel sends
#: it again each time the child passes to another thread of the dying parent (one signal per
#: parent thread: 1 to 7 measured from a parent with 8 threads). granian's worker handler is not
#: reentrant: a second SIGTERM arriving while it handled the first deadlocked it, and the worker
#: served on as an orphan (3 of the 5 orphans left by 180 kills of a server process under load).
PARENT_DIED_SIGNAL = signal.SIGUSR2

_stop_requested = False


def die_with_parent() -> bool:
    """Have this process get exactly one SIGTERM when its parent dies; return whether the parent
    is still alive.

    A parent killed with SIGKILL (an orchestrator's timeout, an operator, a test's clean-up)
    cannot pass a stop on to its children; without this they run on as orphans, serving requests
    or taking jobs. The kernel's parent-death signal (``PARENT_DIED_SIGNAL``, however many times
    it comes) is turned into one SIGTERM to this process's main thread, the stop the parent
    itself would have sent; whoever handles SIGTERM then (the default action while loading,
    granian's or RQ's handler afterwards) stops the process as usual.

    The request only covers a death after it: a parent that died between the fork and this call
    sends nothing, so a multiprocessing child whose parent is no longer the one that started it
    gets ``False`` and must end by itself. ``prctl`` missing (not Linux) is a no-op.

    Limits: call it from the main thread (Python installs signal handlers only there), in a
    process started by ``fork`` or ``spawn`` (a ``forkserver`` child's parent is the fork server,
    not the process that asked for it, so the check would say ``False``). A child whose parent
    sent it SIGTERM itself and was then killed still gets one more from here.
    """
    import multiprocessing

    signal.signal(PARENT_DIED_SIGNAL, _stop_once)
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, int(PARENT_DIED_SIGNAL), 0, 0, 0)
    except (OSError, AttributeError):
        pass
    parent = multiprocessing.parent_process()
    return parent is None or os.getppid() == parent.pid


def _stop_once(_signum: int, _frame: object) -> None:
    """``PARENT_DIED_SIGNAL``'s handler: the first one raises SIGTERM, the others do nothing."""
    global _stop_requested
    if _stop_requested:
        return
    _stop_requested = True
    signal.raise_signal(signal.SIGTERM)


def stop_on_signals_while_loading() -> None:
    """Let SIGTERM/SIGINT end this process with their default action until a server installs
    its own handlers.

    granian forks its workers with the main process's handlers still installed, and a worker
    installs its own only after the app has loaded (here: ~1 s of importing and preloading every
    function). A SIGTERM in that window ran the inherited handler and was lost: the worker then
    served on after a shutdown, and the main process waited for it until its kill timeout
    (reproduced by stopping the gateway right after it answered /healthz: 2 runs in 3).

    A queue worker calls it before each RQ worker it starts, because RQ installs its handlers
    only after forking its scheduler. A handler that raises (``wait_for_redis``'s, or RQ's own
    left from a work loop that lost Redis) could run inside that fork's at-fork hooks, where
    Python reports the exception and carries on: the stop was lost, and logging's lock stayed
    taken because the hook that releases it was cut short, so the worker hung in its queue wait
    with its other threads blocked on logging (~1 run in 30 of the test that stops workers
    right after Redis came back).
    """
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def flush_at_exit(*flushes: Callable[[], None]) -> None:
    """Run ``flushes`` in order when this process ends normally: the callers pass
    ``metrics.flush`` and ``logs.flush``, which apply the buffered metric updates and write the
    buffered log lines.

    granian's server workers and the supervisor's queue workers are multiprocessing children,
    which end with ``os._exit`` after multiprocessing's own finalizers: ``atexit`` handlers
    (logging's shutdown among them) never run there, so whatever the log sink and the metrics
    still buffered was lost on every graceful stop. multiprocessing's finalizers also run at a
    plain interpreter exit. Each flush is its own finalizer (one failing does not stop the
    others), in the order given (this module stays below the library: ``make run`` imports it).
    """
    from multiprocessing.util import Finalize

    for rank, flush in enumerate(flushes):
        Finalize(None, flush, exitpriority=11 - rank)


def detach_from_terminal_signals() -> None:
    """Leave the terminal's process group: a terminal's Ctrl-C then reaches only the supervisor,
    which stops this process with exactly one SIGTERM.

    A terminal's Ctrl-C sends SIGINT to its whole foreground process group; with every process in
    it, each child got the terminal's SIGINT and then its supervisor's SIGTERM: granian's worker
    handler is not reentrant and deadlocked on the second signal, and a stop took 37-72 s, ended
    by SIGKILLs. The parent-death signal (:func:`die_with_parent`) still ends this process if the
    supervisor is killed.
    """
    with suppress(OSError):  # already a group leader (a session of its own): nothing to leave
        os.setpgid(0, 0)


#: prctl(2) option: the name ``ps -o comm``, ``top`` and ``/proc/<pid>/comm`` show (15 bytes).
PR_SET_NAME = 15


def set_process_name(name: str) -> None:
    """Name this process as ``ps`` and ``top`` show it (``mt-scheduler`` rather than ``python``)."""
    import ctypes

    with suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_NAME, name.encode()[:15], 0, 0, 0)


#: mallopt(3) option: the size from which malloc maps memory of its own for an allocation.
M_MMAP_THRESHOLD = -3
#: 128 KiB, glibc's starting value, kept fixed.
MMAP_THRESHOLD_BYTES = 128 * 1024


def release_large_allocations() -> None:
    """Have allocations of 128 KiB and more always mapped on their own, so that freeing them
    gives the memory back to the system (inherited by the processes this one forks).

    glibc raises that threshold each time such a block is freed, and serves later ones from its
    per-thread heaps, which keep freed memory. A password hash (argon2id, 64 MiB, on a server
    process's function thread) then left ~38 MiB behind in every server process that ever hashed
    one: most of a server process's PSS after a login. A fixed threshold keeps them mapped.
    """
    import ctypes

    with suppress(OSError, AttributeError):
        ctypes.CDLL(None).mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)


def parent_death_preexec() -> Callable[[], None]:
    """A ``preexec_fn`` for ``subprocess.Popen`` that asks for SIGTERM when the starting process
    dies, and ends the child at once if it is already gone (between fork and exec, so no window
    is left; resolved before forking, because a preexec function must not import or allocate
    much in a child of a threaded process)."""
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent = os.getpid()
    term = int(signal.SIGTERM)

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, term, 0, 0, 0)
        if os.getppid() != parent:
            os._exit(0)

    return preexec


class Backoff:
    """Delays before restarting a child that died: ``first`` doubling up to ``cap``, and back
    to ``first`` once the child has lived ``stable_after`` seconds since its last death."""

    def __init__(self, first: float = 0.25, cap: float = 4.0, stable_after: float = 30.0) -> None:
        self.first = first
        self.cap = cap
        self.stable_after = stable_after
        self.restarts = 0
        self._delay = first
        self._last_death: float | None = None

    def next_delay(self) -> float:
        """Call when the child died: the seconds to wait before starting it again."""
        now = time.monotonic()
        if self._last_death is not None and now - self._last_death > self.stable_after:
            self._delay = self.first
        delay = self._delay
        self._delay = min(self.cap, self._delay * 2)
        self._last_death = now
        self.restarts += 1
        return delay


class Running(Protocol):
    """What the supervisor needs of a started child (``subprocess.Popen`` has it)."""

    pid: int

    def poll(self) -> int | None: ...

    def send_signal(self, sig: int) -> None: ...

    def kill(self) -> None: ...


class ForkedChild:
    """A ``multiprocessing`` child (fork) with the ``Running`` interface."""

    def __init__(self, target: Callable[[], Any], name: str) -> None:
        import multiprocessing

        self.process = multiprocessing.get_context("fork").Process(target=target, name=name)
        self.process.start()
        assert self.process.pid is not None
        self.pid: int = self.process.pid

    def poll(self) -> int | None:
        self.process.join(0)
        return self.process.exitcode

    def send_signal(self, sig: int) -> None:
        with suppress(ProcessLookupError):
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


@dataclass
class Child:
    """A long-running child of a :class:`Supervisor`: its kind (the metric's label), how to start
    it, and the running process."""

    kind: str
    name: str
    start: Callable[[], Running]
    #: Whether the child leads a process group of its own (its stragglers are killed with it).
    own_group: bool = False
    running: Running | None = None
    backoff: Backoff = field(default_factory=Backoff)
    restart_at: float | None = None


class Supervisor:
    """Starts children, starts again each one that dies (after its back-off, with a log line and
    ``minitwitter_process_restarts_total{kind}``), and stops them all on request.

    It runs no thread of its own, so a child it forks again later inherits no lock held by one.
    ``log`` receives ``(message, fields)`` for each restart, ``count`` the kind restarted.
    """

    def __init__(self, children: list[Child], log: Callable[[str, dict[str, Any]], None],
                 count: Callable[[str], None]) -> None:
        self.children = children
        self._log = log
        self._count = count

    def start(self) -> None:
        for child in self.children:
            child.running = child.start()

    def check(self) -> None:
        """Notice children that died and start those whose back-off has passed."""
        now = time.monotonic()
        for child in self.children:
            if child.restart_at is not None:
                if now >= child.restart_at:
                    child.restart_at = None
                    child.running = child.start()
                    self._count(child.kind)
                continue
            code = child.running.poll() if child.running is not None else None
            if code is None:
                continue
            delay = child.backoff.next_delay()
            child.restart_at = now + delay
            self._log("child process died; starting a new one",
                      {"child": child.name, "kind": child.kind, "pid": child.running.pid if child.running else None,
                       "exit": describe_exit(code), "restart_in_s": delay, "restarts": child.backoff.restarts})

    def watch(self, stopping: Callable[[], bool], interval: float = 0.1) -> None:
        """Keep the children running until ``stopping()`` says so."""
        while not stopping():
            self.check()
            time.sleep(interval)

    def stop(self, grace: float) -> list[str]:
        """SIGTERM every running child once, wait up to ``grace`` seconds, SIGKILL the rest (and
        their process groups, where they lead one). Returns the names of those killed."""
        alive = [c for c in self.children if c.running is not None and c.running.poll() is None]
        for child in alive:
            assert child.running is not None
            with suppress(ProcessLookupError):
                child.running.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(c.running.poll() is None for c in alive if c.running):
            time.sleep(0.05)
        killed = []
        for child in alive:
            assert child.running is not None
            if child.running.poll() is None:
                killed.append(child.name)
                with suppress(ProcessLookupError):
                    child.running.kill()
            if child.own_group:
                with suppress(ProcessLookupError, PermissionError):
                    os.killpg(child.running.pid, signal.SIGKILL)  # its own children, if any are left
        for child in alive:
            assert child.running is not None
            deadline = time.monotonic() + 5
            while child.running.poll() is None and time.monotonic() < deadline:
                time.sleep(0.02)
        return killed


def describe_exit(code: int) -> str:
    """``exit 1`` or ``signal SIGKILL`` for a child's return code (negative: killed by a signal)."""
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit {code}"
