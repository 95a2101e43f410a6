"""Run a function call on a helper thread and stop waiting for it at a deadline.

The gateway answers 504 at ``FUNCTION_TIMEOUT`` even when the function is stuck in a blocking
call (the of-watchdog's ``exec_timeout`` contract), so the call must run on another thread than
the one that answers. Each server thread keeps one helper thread and hands it calls through two
locks used as a baton: measured on the 2-core VM, a ``ThreadPoolExecutor`` submit + result cost
~55 us of CPU per call (queue, future, condition, semaphore) and this hand-off ~39 us (two
futex wake-ups are the floor); list-posts and get-user served ~10 % more requests per second.

A call that overruns keeps its helper: the helper is abandoned (it exits as soon as the call
returns) and the server thread starts a new one for its next call. At most
:data:`MAX_ABANDONED` abandoned helpers may be alive in a process; beyond that calls are
refused at once (:class:`TooManyStuckCalls`) instead of growing threads without bound behind a
function that never returns.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

#: Abandoned helpers (calls still running past their deadline) a process keeps at most.
MAX_ABANDONED = 32


class CallTimedOut(Exception):
    """The call did not return before its deadline (it goes on running on its own thread)."""


class TooManyStuckCalls(Exception):
    """:data:`MAX_ABANDONED` calls are still running past their deadlines: refuse new ones."""


_state = threading.Lock()
_abandoned = 0
_helpers = threading.local()


def abandoned() -> int:
    """How many calls of this process are still running after their deadline passed."""
    return _abandoned


class _Helper:
    """One helper thread serving one server thread's calls, one at a time."""

    def __init__(self) -> None:
        self._go = threading.Lock()
        self._go.acquire()
        self._done = threading.Lock()
        self._done.acquire()
        self._job: tuple[Callable[[], Any], contextvars.Context] | None = None
        self._result: tuple[bool, Any] = (False, None)
        self._abandoned = False
        threading.Thread(target=self._serve, name="function-call", daemon=True).start()

    def _serve(self) -> None:
        global _abandoned
        while True:
            self._go.acquire()
            assert self._job is not None
            call, context = self._job
            try:
                result: tuple[bool, Any] = (True, context.run(call))
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
                result = (False, exc)
            with _state:
                if self._abandoned:  # nobody waits any more: this thread's work is over
                    _abandoned -= 1
                    return
                self._result, self._job = result, None
                self._done.release()

    def call(self, call: Callable[[], T], timeout: float) -> T:
        global _abandoned
        self._job = (call, contextvars.copy_context())
        self._go.release()
        if not self._done.acquire(timeout=timeout):
            with _state:
                if not self._done.acquire(blocking=False):  # it did not finish meanwhile
                    self._abandoned = True
                    _abandoned += 1
                    raise CallTimedOut
        ok, value = self._result
        self._result = (False, None)
        if ok:
            return value  # type: ignore[no-any-return]
        raise value


def run(call: Callable[[], T], timeout: float) -> T:
    """``call()`` on this thread's helper (with this thread's context variables); its result or
    its exception. :class:`CallTimedOut` after ``timeout`` seconds, :class:`TooManyStuckCalls`
    when too many earlier calls are still running past their deadlines."""
    helper: _Helper | None = getattr(_helpers, "helper", None)
    if helper is None:
        if _abandoned >= MAX_ABANDONED:
            raise TooManyStuckCalls
        helper = _helpers.helper = _Helper()
    try:
        return helper.call(call, timeout)
    except CallTimedOut:
        _helpers.helper = None  # that one is busy with the stuck call; the next call gets a new one
        raise
