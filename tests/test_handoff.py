"""gateway.handoff: calls on a helper thread with a deadline (the gateway's 504), in-process."""

from __future__ import annotations

import contextvars
import threading
import time

import pytest

from gateway import handoff

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="none")


def wait_until(check, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def test_result_exception_and_context_cross_to_the_helper() -> None:
    request_id.set("r-1")
    callers: list[str] = []

    def call() -> str:
        callers.append(threading.current_thread().name)
        return request_id.get()

    assert handoff.run(call, timeout=5) == "r-1"
    assert handoff.run(call, timeout=5) == "r-1"
    assert callers == ["function-call", "function-call"]  # not this thread, one helper reused
    with pytest.raises(KeyError, match="boom"):
        handoff.run(lambda: {}["boom"], timeout=5)


def test_a_blocked_call_times_out_at_its_deadline_and_is_abandoned() -> None:
    release = threading.Event()
    finished = threading.Event()

    def stuck() -> None:
        release.wait(30)  # blocked in C, as a sleeping or hung function would be
        finished.set()

    started = time.monotonic()
    with pytest.raises(handoff.CallTimedOut):
        handoff.run(stuck, timeout=0.3)
    assert 0.25 <= time.monotonic() - started < 2.0
    assert handoff.abandoned() == 1 and not finished.is_set()
    assert handoff.run(lambda: "next", timeout=5) == "next"  # a new helper serves this thread
    release.set()
    wait_until(lambda: handoff.abandoned() == 0)  # the abandoned helper exits once its call returns
    assert finished.is_set()


def test_stuck_calls_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(handoff, "MAX_ABANDONED", 1)
    release = threading.Event()
    with pytest.raises(handoff.CallTimedOut):
        handoff.run(lambda: release.wait(30), timeout=0.1)
    with pytest.raises(handoff.TooManyStuckCalls):
        handoff.run(lambda: "refused", timeout=5)
    release.set()
    wait_until(lambda: handoff.abandoned() == 0)
    assert handoff.run(lambda: "served", timeout=5) == "served"
