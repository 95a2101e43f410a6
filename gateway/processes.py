"""Process hygiene shared by the gateway's server workers and the queue-worker processes."""

from __future__ import annotations

import os
import signal

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


def flush_at_exit() -> None:
    """Apply the buffered metric updates and write the buffered log lines when this process
    ends normally.

    granian's server workers and the supervisor's queue workers are multiprocessing children,
    which end with ``os._exit`` after multiprocessing's own finalizers: ``atexit`` handlers
    (logging's shutdown among them) never run there, so whatever the log sink and the metrics
    still buffered was lost on every graceful stop. multiprocessing's finalizers also run at a
    plain interpreter exit. Each flush is its own finalizer (one failing does not stop the
    other), the metrics first.
    """
    from multiprocessing.util import Finalize

    from minitwitter import logs, metrics

    Finalize(None, metrics.flush, exitpriority=11)
    Finalize(None, logs.flush, exitpriority=10)
