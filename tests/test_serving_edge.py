"""The gateway's serving edge (gateway/edge.py) against real sockets and a real granian server:
slow clients hold no function capacity, a full gateway answers 503 instead of stalling, and
deadlines end what overstays."""

from __future__ import annotations

import asyncio
import signal
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest

from gateway import edge
from minitwitter.config import REPO_ROOT, load_config

from .conftest import eventually

pytestmark = pytest.mark.slow

FIXTURE_STACK = str(REPO_ROOT / "tests" / "fixtures" / "stack.yml")
READ_TIMEOUT = 3.0


@pytest.fixture
def gw(start_gateway: Any) -> Any:
    return start_gateway(STACK_FILE=FIXTURE_STACK, GATEWAY_WORKERS="2", GATEWAY_THREADS="2",
                         GATEWAY_READ_TIMEOUT=str(READ_TIMEOUT), GATEWAY_QUEUE_TIMEOUT="1",
                         FUNCTION_TIMEOUT="4")


@contextmanager
def connections(port: int, count: int, first_bytes: bytes) -> Iterator[list[socket.socket]]:
    """``count`` connections that each sent ``first_bytes`` and then nothing more."""
    opened: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            sock.sendall(first_bytes)
            opened.append(sock)
        yield opened
    finally:
        for sock in opened:
            sock.close()


def read_until_closed(sock: socket.socket, timeout: float) -> bytes:
    """Everything the server sends until it closes the connection (fails if it does not)."""
    sock.settimeout(timeout)
    received = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return received
        received += chunk


SLOW_BODY = (b"POST /function/echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
             b"Content-Length: 1000\r\n\r\n" + b"x" * 10)
SLOW_HEADERS = b"GET /function/echo HTTP/1.1\r\nHost: x\r\nX-Slow: "


def test_slow_clients_hold_no_function_capacity(gw: Any) -> None:
    """200 connections stalled mid-body and 200 stalled mid-headers: health checks and
    functions answer as usual meanwhile; past the read deadline the stalled bodies get 408 and
    both kinds are closed."""
    with connections(gw.port, 200, SLOW_BODY) as bodies, connections(gw.port, 200, SLOW_HEADERS) as headers:
        with httpx.Client(base_url=gw.url, timeout=READ_TIMEOUT) as client:
            for _ in range(5):  # every server process and both slots, several times over
                assert client.get("/healthz").status_code == 200
                assert client.get("/function/echo/x").status_code == 200
                assert client.post("/function/echo", content=b"{}").status_code == 200
        answer = read_until_closed(bodies[0], timeout=READ_TIMEOUT + 10)
        assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
        assert b"request body not received in time" in answer
        assert read_until_closed(headers[0], timeout=READ_TIMEOUT + 10) == b""  # no request to answer
        for sock in (*bodies[1:], *headers[1:]):
            read_until_closed(sock, timeout=5)  # every one of them ended
    eventually(lambda: 'gateway_requests_refused_total{reason="read_timeout"} 200.0'
               in httpx.get(gw.url + "/metrics").text)  # each process applies its counts every 100 ms


SLOW_CHUNKED = (b"POST /function/echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n")


def test_both_ways_of_reading_a_body_keep_the_read_deadline(gw: Any) -> None:
    """A declared length is read in one piece, a chunked body chunk by chunk (gateway/edge.py,
    BodyReads): a stalled body of either kind gets 408 once the read deadline has passed, not
    before, and whole bodies of both kinds arrive intact."""
    body = b'{"text": "' + b"z" * 5000 + b'"}'
    assert httpx.post(gw.url + "/function/echo", content=body).json()["body"] == body.decode()
    streamed = httpx.post(gw.url + "/function/echo", content=iter([body[:7], body[7:]]))  # no length
    assert streamed.json()["body"] == body.decode()
    with connections(gw.port, 1, SLOW_CHUNKED) as (chunked,), connections(gw.port, 1, SLOW_BODY) as (declared,):
        started = time.monotonic()
        for sock in (chunked, declared):
            answer = read_until_closed(sock, timeout=READ_TIMEOUT + 10)
            assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
        assert time.monotonic() - started >= READ_TIMEOUT - 0.5  # not before the deadline


def test_a_body_over_the_limit_is_refused_before_it_is_read(gw: Any) -> None:
    limit = load_config(gw.env).max_body_bytes
    with connections(gw.port, 1, b"POST /function/echo HTTP/1.1\r\nHost: x\r\n"
                                 b"Content-Length: %d\r\n\r\n" % (limit + 1)) as (sock,):
        answer = read_until_closed(sock, timeout=5)
    assert answer.startswith(b"HTTP/1.1 413 ") and b'"max_bytes":%d' % limit in answer
    chunked = httpx.post(gw.url + "/function/echo", content=iter([b"y" * limit, b"y"]))  # no length
    assert chunked.status_code == 413 and chunked.json()["error"] == "request body too large"


def test_a_full_gateway_answers_503_with_retry_after_and_reports_its_queue(start_gateway: Any) -> None:
    """One process, one slot: a long call holds it, the next waits its queue timeout and gets 503
    with Retry-After; health checks answer meanwhile; the metrics showed the call running and
    the one waiting."""
    gw = start_gateway(STACK_FILE=FIXTURE_STACK, GATEWAY_WORKERS="1", GATEWAY_THREADS="1",
                       GATEWAY_QUEUE_TIMEOUT="1.5")
    results: dict[str, httpx.Response] = {}

    def call(name: str, seconds: float) -> None:
        results[name] = httpx.get(f"{gw.url}/function/sleepy?seconds={seconds}", timeout=30)

    long = threading.Thread(target=call, args=("long", 4))
    long.start()
    eventually(lambda: 'gateway_function_invocation_inflight{function_name="sleepy.openfaas-fn"} 1.0'
               in httpx.get(gw.url + "/metrics").text)
    waiting = threading.Thread(target=call, args=("waiting", 0))
    waiting.start()
    eventually(lambda: 'gateway_function_invocation_queued{function_name="sleepy.openfaas-fn"} 1.0'
               in httpx.get(gw.url + "/metrics").text)
    assert httpx.get(gw.url + "/healthz").status_code == 200  # apart from the function slots
    waiting.join()
    refused = results["waiting"]
    assert refused.status_code == 503 and refused.headers["Retry-After"] == "1"
    assert refused.json() == {"error": "every function slot is busy", "details": {"queue_timeout_seconds": 1.5}}
    assert refused.headers["X-Call-Id"]
    long.join()
    assert results["long"].status_code == 200
    metrics = httpx.get(gw.url + "/metrics").text
    assert 'gateway_function_invocation_total{code="503",function_name="sleepy.openfaas-fn"} 1.0' in metrics
    assert 'gateway_function_invocation_queued{function_name="sleepy.openfaas-fn"} 0.0' in metrics
    assert 'gateway_requests_refused_total{reason="overloaded"} 1.0' in metrics


def test_a_timed_out_call_gives_its_slot_to_a_new_thread(start_gateway: Any) -> None:
    """FUNCTION_TIMEOUT answers 504 while the call runs on; the only slot is free again at once."""
    gw = start_gateway(STACK_FILE=FIXTURE_STACK, GATEWAY_WORKERS="1", GATEWAY_THREADS="1",
                       FUNCTION_TIMEOUT="1", GATEWAY_QUEUE_TIMEOUT="0.5")
    stuck = httpx.get(f"{gw.url}/function/sleepy?seconds=5", timeout=30)
    assert stuck.status_code == 504 and stuck.json()["details"] == {"timeout_seconds": 1.0}
    quick = httpx.get(f"{gw.url}/function/sleepy?seconds=0", timeout=30)
    assert quick.status_code == 200  # not a 503: the stuck call's thread no longer counts


def test_the_gateway_listens_on_loopback_unless_told_otherwise() -> None:
    assert load_config({}).gateway_bind == "127.0.0.1"
    assert load_config({"GATEWAY_BIND": "0.0.0.0"}).gateway_bind == "0.0.0.0"
    with pytest.raises(ValueError, match="GATEWAY_READ_TIMEOUT must be a positive number"):
        load_config({"GATEWAY_READ_TIMEOUT": "0"})


# --- the slots, in-process ------------------------------------------------------------------------

@pytest.mark.no_stores
def test_slots_serve_in_order_refuse_after_the_queue_timeout_and_replace_stuck_threads() -> None:
    async def scenario() -> dict[str, Any]:
        slots = edge.Slots(asyncio.get_running_loop(), 1, queue_timeout=0.3, name="t")
        release = threading.Event()
        first = asyncio.ensure_future(slots.call(lambda: release.wait(5) and "first", None))
        await asyncio.sleep(0.05)
        order: list[int] = []
        queued = [asyncio.ensure_future(slots.call(lambda i=i: order.append(i) or i, None)) for i in range(3)]
        await asyncio.sleep(0.05)
        release.set()
        done = await asyncio.gather(first, *queued)
        blocker = threading.Event()
        hold = asyncio.ensure_future(slots.call(lambda: blocker.wait(5), None))
        await asyncio.sleep(0.05)
        with pytest.raises(edge.Overloaded):
            await slots.call(lambda: "never", None)
        blocker.set()
        await hold
        with pytest.raises(edge.CallTimedOut):
            await slots.call(lambda: time.sleep(0.5), timeout=0.1)
        after_timeout = await slots.call(lambda: "free again", None)
        stuck_then = slots.stuck
        await asyncio.sleep(0.6)
        with pytest.raises(KeyError):
            await slots.call(lambda: {}["boom"], None)  # an exception reaches the caller
        return {"done": done, "order": order, "after_timeout": after_timeout, "stuck_then": stuck_then,
                "stuck_now": slots.stuck, "busy": slots.busy}

    result = asyncio.run(scenario())
    assert result["done"] == ["first", 0, 1, 2] and result["order"] == [0, 1, 2]  # first come, first served
    assert result["after_timeout"] == "free again" and result["stuck_then"] == 1
    assert result["stuck_now"] == 0 and result["busy"] == 0


def test_a_stop_ends_open_log_streams_at_once(gw: Any) -> None:
    """``faas-cli logs`` follows until the client leaves; a server told to stop ends the stream
    itself instead of waiting for it until its drain deadline (GATEWAY_DRAIN_TIMEOUT, 10 s)."""
    user, password = gw.auth()
    ended: list[float] = []

    def follow() -> None:
        with httpx.stream("GET", gw.url + "/system/logs?follow=true&name=echo", auth=(user, password),
                          timeout=60) as response:
            assert response.status_code == 200
            try:
                for _ in response.iter_bytes():
                    pass
            except httpx.RemoteProtocolError:  # the server went away with the stream still open
                pass
        ended.append(time.monotonic())

    reader = threading.Thread(target=follow)
    reader.start()
    time.sleep(1)  # the stream is open
    started = time.monotonic()
    gw.proc.send_signal(signal.SIGTERM)
    assert gw.proc.wait(30) == 0
    reader.join(30)
    assert ended and ended[0] - started < 5
    assert time.monotonic() - started < 5


class _StalledBody:
    """An RSGI protocol whose body never arrives."""

    async def __call__(self) -> bytes:
        await asyncio.Event().wait()
        return b""


def test_a_read_past_its_deadline_times_out_but_a_cancel_from_elsewhere_is_kept() -> None:
    """BodyReads turns its own cancellation of an overdue read into ReadTimedOut; a cancel the
    task also got from elsewhere (a server stopping) in the same moment still cancels it."""
    async def scenario() -> tuple[str, str]:
        loop = asyncio.get_running_loop()
        reads = edge.BodyReads(loop)

        async def read() -> str:
            try:
                await reads.read(_StalledBody(), 100, 0.05, 10)
            except edge.ReadTimedOut:
                return "timed out"
            except asyncio.CancelledError:
                return "cancelled"
            return "read"

        alone = await asyncio.create_task(read())  # the sweep finds it overdue
        task = asyncio.create_task(read())
        await asyncio.sleep(0)  # reading now
        reads._reads[task] = 0.0  # noqa: SLF001 - overdue at once
        reads._sweep()  # noqa: SLF001 - the sweep cancels it ...
        task.cancel()  # ... and so does something else, before the task runs again
        return alone, await task

    assert asyncio.run(scenario()) == ("timed out", "cancelled")
