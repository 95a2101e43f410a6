"""The gateway's serving edge: an RSGI app (granian) in front of the WSGI :class:`~gateway.app.Gateway`.

Under granian's WSGI interface a request got a Python thread as soon as its headers arrived, and
kept it while the body trickled in: six connections sending ``Content-Length: 1000`` and then 10
bytes held every thread of a 3 x 2 gateway and stalled every function for a minute. Here the
slow part of a request costs no thread, and the threads that run functions are a bounded,
measured resource. Per request, on the worker process's event loop:

1. **Headers** are read by granian (Rust); a connection whose headers, or whose next request on
   a kept-alive connection, take longer than ``GATEWAY_READ_TIMEOUT`` is closed (there is no
   request yet to answer, so nothing is sent; nginx's ``client_header_timeout`` does the same).
2. **The body** is read on the event loop, no thread held: a declared length over the route's
   limit is refused at once (413), a body that has not fully arrived within
   ``GATEWAY_READ_TIMEOUT`` gets 408 and the connection is closed.
3. **A slot**: each process runs functions on ``GATEWAY_THREADS`` threads (:class:`Slots`). A
   call that finds them all busy waits, first come first served, up to ``GATEWAY_QUEUE_TIMEOUT``,
   then gets 503 with ``Retry-After`` (backpressure, not a stall). Calls running and waiting per
   function are the gauges ``gateway_function_invocation_inflight`` / ``_queued``.
4. **The call** runs on the slot's thread; one that outlives ``FUNCTION_TIMEOUT`` is answered 504
   and left to finish on its thread while a new thread takes its slot (at most
   :data:`MAX_STUCK_CALLS` such threads; beyond that calls are refused with 503).

``/healthz``, ``/metrics``, ``/system/*`` and ``/async-function/*`` run on two threads of their
own, so health checks and scrapes answer while every function slot is busy. A response without
a ``Content-Length`` (``/system/logs?follow=true``) is streamed from a thread of its own until
it ends or the client goes away.

Handing a call from the event loop to a thread and back costs ~18 us here, measured with a
trivial app (uvloop; ``concurrent.futures`` with ``run_in_executor`` cost ~45 us); the WSGI
server's thread hand-off for ``FUNCTION_TIMEOUT`` that this replaces cost about the same.
"""

from __future__ import annotations

import asyncio
import io
import logging
import math
import queue
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import suppress
from typing import Any, TypeVar

import redis

from minitwitter import cache, logs, metrics, ratelimit
from minitwitter.config import Config
from minitwitter.http import client_address, dumps, new_call_id
from minitwitter.runtime import WSGIEnv

from .app import Gateway
from .microcache import FLUSH_INTERVAL, HitCounts, MicroCache, wall_to_monotonic

log = logging.getLogger("minitwitter.gateway")

T = TypeVar("T")
Answer = tuple[str, list[tuple[str, str]], Any]  # status line, headers, bytes or an iterator

#: Threads per process for everything but ``/function/*`` (health, metrics, system API, async
#: submissions): apart, so that they answer while the function slots are all busy.
CONTROL_THREADS = 2
#: Calls still running past their deadline that a process keeps threads for.
MAX_STUCK_CALLS = 32
#: Responses streamed at once per process (each holds a thread while it lasts).
MAX_STREAMS = 8
#: What a refused request is told to wait before trying again (seconds).
RETRY_AFTER = 1
#: The body size limit of ``/async-function/*``, in multiples of ``MAX_BODY_BYTES``.
ASYNC_BODY_FACTOR = 16

FUNCTION_PREFIX = "/function/"
#: The micro-cache's name in ``minitwitter_cache_requests_total{cache}``.
MICROCACHE = "gateway_microcache"


class Overloaded(Exception):
    """No slot came free within the queue timeout."""


class CallTimedOut(Exception):
    """The call did not return before its deadline (it goes on running on its own thread)."""


class TooManyStuckCalls(Exception):
    """:data:`MAX_STUCK_CALLS` calls are still running past their deadlines."""


class _Job:
    """One call handed to a slot's thread; ``finished`` and ``abandoned`` change under the pool's lock."""

    __slots__ = ("abandoned", "call", "deadline", "finished", "future")

    def __init__(self, call: Callable[[], Any], future: asyncio.Future[Any], deadline: float) -> None:
        self.call = call
        self.future = future
        self.deadline = deadline  # loop.time() past which it is abandoned (inf: never)
        self.finished = False
        self.abandoned = False


def _settle(future: asyncio.Future[Any], ok: bool, value: Any) -> None:
    """Complete ``future`` on the event loop (unless whoever awaited it gave up meanwhile)."""
    if not future.done():
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)


#: Seconds between two checks of the running calls' deadlines (a call's 504 comes at most this
#: much after its ``FUNCTION_TIMEOUT``).
SWEEP_INTERVAL = 0.1


class Slots:
    """``size`` threads running calls for one event loop, and the queue of calls waiting for one.

    All bookkeeping (``busy``, the waiting queue, the running calls) happens on the loop's
    thread, so it needs no lock; a job's hand-over to a thread is a :class:`queue.SimpleQueue`
    put, its result comes back with ``call_soon_threadsafe``. Deadlines are checked by one
    sweep every :data:`SWEEP_INTERVAL` while calls run, not by a timer per call (``asyncio``'s
    timeout scope, with its timer handle, cost ~10 % of the edge's own work per request).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, size: int, queue_timeout: float,
                 name: str) -> None:
        self.loop = loop
        self.size = max(1, size)
        self.queue_timeout = queue_timeout
        self.name = name
        self.busy = 0
        self.stuck = 0
        self._waiting: deque[asyncio.Future[None]] = deque()
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads = 0
        self._running: set[_Job] = set()
        self._sweeping = False
        for _ in range(self.size):
            self._add_thread()

    def _add_thread(self) -> None:
        self._threads += 1
        threading.Thread(target=self._work, name=f"{self.name}-{self._threads}", daemon=True).start()

    def _work(self) -> None:
        jobs, settle_soon = self._jobs, self.loop.call_soon_threadsafe
        while True:
            job = jobs.get()
            if job is None:
                return
            try:
                ok, value = True, job.call()
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting coroutine
                ok, value = False, exc
            with self._lock:
                job.finished = True
                abandoned = job.abandoned
            try:
                if abandoned:  # its caller got a 504 long ago; a new thread took this one's place
                    settle_soon(self._stuck_call_ended)
                    return
                settle_soon(_settle, job.future, ok, value)
            except RuntimeError:  # the event loop is closed: the process is stopping
                return

    def _stuck_call_ended(self) -> None:
        self.stuck -= 1

    async def call(self, call: Callable[[], T], timeout: float | None, label: str | None = None) -> T:
        """``call()`` on one of the threads, once one is free; its result or exception.

        Raises :class:`Overloaded` after waiting ``queue_timeout`` for a free thread,
        :class:`TooManyStuckCalls` at once when too many earlier calls are stuck, and
        :class:`CallTimedOut` after ``timeout`` seconds (``None``: no deadline).
        """
        if self.stuck >= MAX_STUCK_CALLS:
            raise TooManyStuckCalls
        await self._acquire(label)
        running = metrics.child(metrics.GATEWAY_INFLIGHT, label) if label else None
        if running is not None:
            running.add(1)
        future: asyncio.Future[T] = self.loop.create_future()
        job = _Job(call, future, self.loop.time() + timeout if timeout else math.inf)
        self._jobs.put(job)
        if timeout:
            self._running.add(job)
            if not self._sweeping:
                self._sweeping = True
                self.loop.call_later(SWEEP_INTERVAL, self._sweep)
        try:
            return await future
        finally:
            self._running.discard(job)
            if running is not None:
                running.add(-1)
            self._release()

    def _sweep(self) -> None:
        """Abandon the running calls past their deadline (their callers get
        :class:`CallTimedOut`); check again while calls run."""
        now = self.loop.time()
        for job in [job for job in self._running if job.deadline <= now]:
            self._running.discard(job)
            with self._lock:
                if not job.finished:
                    job.abandoned = True
            if job.abandoned:  # (one that returned at this very moment keeps its thread)
                self.stuck += 1
                self._add_thread()  # the stuck thread leaves when its call returns
                if not job.future.done():
                    job.future.set_exception(CallTimedOut())
        if self._running:
            self.loop.call_later(SWEEP_INTERVAL, self._sweep)
        else:
            self._sweeping = False

    async def _acquire(self, label: str | None) -> None:
        if self.busy < self.size and not self._waiting:
            self.busy += 1
            return
        waiter: asyncio.Future[None] = self.loop.create_future()
        self._waiting.append(waiter)
        waiting = metrics.child(metrics.GATEWAY_QUEUED, label) if label else None
        if waiting is not None:
            waiting.add(1)
        try:
            async with asyncio.timeout(self.queue_timeout):
                await waiter
        except TimeoutError:
            if waiter.done() and not waiter.cancelled():
                self._release()  # the slot came at the very moment the wait ended: pass it on
            raise Overloaded from None
        finally:
            if waiting is not None:
                waiting.add(-1)

    def _release(self) -> None:
        """Hand the slot to the longest-waiting call, or free it."""
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self.busy -= 1

    def close(self) -> None:
        """Let the idle threads end (busy ones end after their call)."""
        for _ in range(self._threads):
            self._jobs.put(None)


class BodyTooLarge(Exception):
    pass


class ReadTimedOut(Exception):
    pass


class ClientGone(Exception):
    pass


class BodyReads:
    """The request bodies being read on one event loop, each with its deadline.

    One sweep every :data:`SWEEP_INTERVAL`, while any read runs, cancels the reads past their
    deadline, as :class:`Slots` does for calls: an ``asyncio.timeout`` per read (its ``Timeout``
    object and timer handle) and granian's body iterator (a future per chunk, then one more for
    the end) cost ~7 % of create-post's gateway CPU (docs/benchmarks.md, change 48).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        #: Each read's task and its deadline (``loop.time()``).
        self._reads: dict[asyncio.Task[Any], float] = {}
        #: The reads the sweep has cancelled, until they have ended.
        self._expired: set[asyncio.Task[Any]] = set()
        self._sweeping = False

    async def read(self, proto: Any, limit: int, timeout: float, declared: int | None) -> bytes:
        """The request body: :class:`BodyTooLarge` past ``limit`` bytes, :class:`ReadTimedOut`
        when it has not all arrived within ``timeout`` seconds, :class:`ClientGone` when the
        connection broke.

        ``declared``: the request's ``Content-Length`` when it is the body's framing (no
        ``Transfer-Encoding``) and within ``limit``; the server then reads exactly that many
        bytes in one piece. Without it the body is read chunk by chunk and counted.
        """
        task = asyncio.current_task()
        assert task is not None
        cancellations = task.cancelling()  # a cancel from elsewhere must not pass for our timeout
        self._reads[task] = self.loop.time() + timeout
        if not self._sweeping:
            self._sweeping = True
            self.loop.call_later(SWEEP_INTERVAL, self._sweep)
        try:
            return await (proto() if declared is not None else _read_chunks(proto, limit))
        except asyncio.CancelledError:
            if task in self._expired and task.uncancel() <= cancellations:
                raise ReadTimedOut from None
            raise  # (also when the server cancelled the task as the deadline passed)
        except BodyTooLarge:
            raise
        except Exception as exc:  # noqa: BLE001 - granian's protocol errors: the peer went away
            raise ClientGone from exc
        finally:
            self._reads.pop(task, None)
            self._expired.discard(task)

    def _sweep(self) -> None:
        now = self.loop.time()
        for task in [task for task, deadline in self._reads.items() if deadline <= now]:
            del self._reads[task]
            self._expired.add(task)
            task.cancel()
        if self._reads:
            self.loop.call_later(SWEEP_INTERVAL, self._sweep)
        else:
            self._sweeping = False


async def _read_chunks(proto: Any, limit: int) -> bytes:
    """A body of no declared length, chunk by chunk: :class:`BodyTooLarge` past ``limit``."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in proto:
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def environ_of(scope: Any, body: bytes) -> WSGIEnv:
    """A WSGI environ for an RSGI request whose body has been read (as granian's WSGI builds it:
    percent-decoded ``PATH_INFO`` as latin-1 text of its UTF-8 bytes, repeated headers joined
    with ``,``, the body's real length)."""
    host, _, port = scope.server.rpartition(":")
    client, _, client_port = scope.client.rpartition(":")
    environ: WSGIEnv = {
        "REQUEST_METHOD": scope.method,
        "SCRIPT_NAME": "",
        "PATH_INFO": scope.path.encode("utf-8", "surrogateescape").decode("latin-1"),
        "QUERY_STRING": scope.query_string,
        "SERVER_NAME": host.strip("[]"),
        "SERVER_PORT": port,
        "SERVER_PROTOCOL": f"HTTP/{scope.http_version}",
        "REMOTE_ADDR": client.strip("[]"),
        "REMOTE_PORT": client_port,
        "CONTENT_LENGTH": str(len(body)) if body else "",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": scope.scheme,
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }
    for key, value in scope.headers.items():
        if key == "content-type":
            environ["CONTENT_TYPE"] = value
        elif key == "content-length" or key == "transfer-encoding":
            continue  # the body is read: its length is the one above
        else:
            name = "HTTP_" + key.upper().replace("-", "_")
            previous = environ.get(name)
            environ[name] = value if previous is None else f"{previous},{value}"
    return environ


def _status_code(status: str) -> int:
    return int(status[:3])


def _error(status: int, message: str, details: dict[str, Any] | None = None,
           extra: list[tuple[str, str]] | None = None) -> tuple[int, list[tuple[str, str]], bytes]:
    body = dumps({"error": message, "details": details or {}})
    headers = [("content-type", "application/json"), *(extra or [])]
    return status, headers, body


class Edge:
    """The RSGI application: one per server process, around that process's :class:`Gateway`."""

    def __init__(self, gateway: Gateway, config: Config) -> None:
        self.gateway = gateway
        self.config = config
        self.function_body_limit = config.max_body_bytes
        self.other_body_limit = config.max_body_bytes * ASYNC_BODY_FACTOR
        self.functions: Slots | None = None
        self.control: Slots | None = None
        self.body_reads: BodyReads | None = None
        self.streams = 0
        self.loop: asyncio.AbstractEventLoop | None = None
        ttl = config.gateway_microcache_ttl
        self.microcache = MicroCache(ttl) if ttl > 0 else None
        self.hits = HitCounts()
        self._counting = False
        #: URLs whose entry one caller is refreshing now, and what the others wait on.
        self._refreshing: dict[str, asyncio.Future[None]] = {}

    # -- granian's RSGI hooks -----------------------------------------------------------------
    def __rsgi_init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.start(loop)

    def __rsgi_del__(self, loop: asyncio.AbstractEventLoop) -> None:  # noqa: ARG002 - RSGI's signature
        for slots in (self.functions, self.control):
            if slots is not None:
                slots.close()

    def stopping(self) -> None:
        """The server process was told to stop: end the open log streams now (a stop would
        otherwise wait for them until the drain deadline). Called from any thread."""
        self.gateway.close()

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Create this process's threads, bound to ``loop`` (granian calls it once per worker)."""
        self.loop = loop
        self.functions = Slots(loop, self.config.gateway_threads, self.config.gateway_queue_timeout,
                               "function-slot")
        self.control = Slots(loop, CONTROL_THREADS, self.config.gateway_queue_timeout, "control")
        self.body_reads = BodyReads(loop)

    async def __rsgi__(self, scope: Any, proto: Any) -> None:
        if scope.proto != "http":
            return
        try:
            status, headers, body = await self.answer(scope, proto)
        except ClientGone:
            return
        except Exception:  # noqa: BLE001 - never a traceback to a client
            log.exception("gateway error")
            status, headers, body = _error(500, "internal error")
        if isinstance(body, bytes):
            proto.response_bytes(status, headers, body)
        else:
            await self.stream(proto, status, headers, body)

    # -- one request ----------------------------------------------------------------------------
    async def answer(self, scope: Any, proto: Any) -> tuple[int, list[tuple[str, str]], Any]:
        """Read the request, run it on a slot, and return status, headers and body."""
        path: str = scope.path
        is_function = path.startswith(FUNCTION_PREFIX)
        body = b""
        headers = scope.headers
        declared = headers.get("content-length")
        cache_key: str | None = None
        refreshing: asyncio.Future[None] | None = None
        if (is_function and self.microcache is not None and scope.method == "GET"
                and "authorization" not in headers and declared is None and "transfer-encoding" not in headers):
            cache_key = f"{path}?{scope.query_string}"
            hit, refreshing = await self.answer_from_cache(scope, cache_key)
            if hit is not None:
                return hit
        if declared is not None or "transfer-encoding" in headers:
            limit = self.function_body_limit if is_function else self.other_body_limit
            length = int(declared) if declared is not None and declared.isascii() and declared.isdigit() else None
            if length is not None and length > limit:
                return self._refused("too_large", 413, "request body too large", {"max_bytes": limit})
            if "transfer-encoding" in headers:
                length = None  # chunked: the declared length is not the framing (RFC 9112 6.3)
            try:
                assert self.body_reads is not None
                body = await self.body_reads.read(proto, limit, self.config.gateway_read_timeout, length)
            except BodyTooLarge:
                return self._refused("too_large", 413, "request body too large", {"max_bytes": limit})
            except ReadTimedOut:
                return self._refused("read_timeout", 408, "request body not received in time",
                                     {"timeout_seconds": self.config.gateway_read_timeout})
        environ = environ_of(scope, body)
        assert self.functions is not None and self.control is not None
        if is_function:
            try:
                return await self.answer_function(scope, environ, cache_key)
            finally:
                if cache_key is not None and refreshing is not None:
                    self.refreshed(cache_key, refreshing)
        try:
            status, response_headers, response_body = await self.control.call(
                lambda: self.call_wsgi(environ), self.config.function_timeout or None)
        except (Overloaded, TooManyStuckCalls):
            return self._refused("overloaded", 503, "the gateway is busy", {},
                                 [("Retry-After", str(RETRY_AFTER))])
        except CallTimedOut:
            return _error(504, "the gateway did not answer in time")
        return _status_code(status), response_headers, response_body

    async def answer_function(self, scope: Any, environ: WSGIEnv,
                              cache_key: str | None) -> tuple[int, list[tuple[str, str]], bytes]:
        """A ``/function/*`` call on a slot (stored in the micro-cache when ``cache_key``)."""
        assert self.functions is not None
        gateway = self.gateway
        invocation = gateway.begin(environ, scope.path[len(FUNCTION_PREFIX):])
        try:
            answer = await self.functions.call(lambda: gateway.call(invocation, environ),
                                               self.config.function_timeout or None,
                                               invocation.function_name)
        except CallTimedOut:
            answer = gateway.timed_out(invocation)
        except Overloaded:
            metrics.child(metrics.GATEWAY_REFUSED, "overloaded").inc()
            answer = gateway.refused(invocation, "every function slot is busy",
                                     {"queue_timeout_seconds": self.config.gateway_queue_timeout},
                                     RETRY_AFTER)
        except TooManyStuckCalls:
            metrics.child(metrics.GATEWAY_REFUSED, "stuck_calls").inc()
            log.error("refused: too many timed-out calls still running",
                      extra={"function": invocation.name, "stuck_calls": self.functions.stuck})
            answer = gateway.refused(invocation, "too many timed-out function calls are still running",
                                     {"stuck_calls": self.functions.stuck}, RETRY_AFTER)
        status, response_headers, response_body = answer
        code = _status_code(status)
        if self.microcache is not None and self.loop is not None and scope.method == "GET":
            if cache_key is not None and code == 200:
                self.microcache.put(cache_key, response_headers, response_body, self.loop.time())
            response_headers.append(("X-Cache-Status", "MISS" if cache_key is not None else "BYPASS"))
        return code, response_headers, response_body

    # -- the micro-cache (gateway/microcache.py) ----------------------------------------------
    async def answer_from_cache(self, scope: Any, key: str) -> tuple[
            tuple[int, list[tuple[str, str]], bytes] | None, asyncio.Future[None] | None]:
        """``(page, None)``: a stored page for an anonymous GET, counted, logged and stamped as a
        call of its own. ``(None, refresh)``: the caller asks the function, and its answer
        refreshes ``key``; it must call :meth:`refreshed` with ``refresh`` when it has it.
        ``(None, None)``: the caller asks the function (its client is over budget)."""
        assert self.microcache is not None and self.loop is not None
        started = time.perf_counter()
        now = self.loop.time()
        entry = self.microcache.get(key, now)
        pending = self._refreshing.get(key)
        if entry is None and pending is not None:  # the refreshing caller's answer will be stored
            await asyncio.shield(pending)
            now = self.loop.time()
            entry = self.microcache.get(key, now)
            pending = self._refreshing.get(key)
        if entry is None or (entry.expires <= now and pending is None):
            metrics.child(metrics.CACHE_REQUESTS, MICROCACHE, "miss").inc()
            refresh: asyncio.Future[None] = self.loop.create_future()
            self._refreshing[key] = refresh
            return None, refresh
        if self.config.rate_limit_enabled:
            headers = scope.headers
            client = client_address(scope.client.rpartition(":")[0].strip("[]"),
                                    headers.get("x-forwarded-for") or "")
            if not self.hits.allows(client, now):
                return None, None
            self.count_hits_soon()
        metrics.child(metrics.CACHE_REQUESTS, MICROCACHE, "hit").inc()
        name, namespace, sub_path = self.gateway.split_target(scope.path[len(FUNCTION_PREFIX):])
        call_id = scope.headers.get("x-call-id") or new_call_id()
        duration = time.perf_counter() - started
        function_name = f"{name}.{namespace}"
        metrics.child(metrics.GATEWAY_INVOCATIONS, function_name, "200").inc()
        metrics.child(metrics.GATEWAY_SECONDS, function_name, "200").observe(duration)
        with logs.context(function=name, call_id=call_id):
            logs.log_request({"method": "GET", "path": sub_path, "status": 200,
                              "duration_ms": round(duration * 1000, 3), "cache": "hit"})
        status = "HIT" if entry.expires > now else "UPDATING"
        return (200, [*entry.headers, ("X-Call-Id", call_id), ("X-Start-Time", str(time.time_ns())),
                      ("X-Duration-Seconds", f"{duration:.6f}"), ("X-Cache-Status", status)],
                entry.body), None

    def refreshed(self, key: str, refresh: asyncio.Future[None]) -> None:
        """The caller refreshing ``key`` has its answer (stored if it was a 200), or gave up:
        release the callers waiting for it."""
        if self._refreshing.get(key) is refresh:
            del self._refreshing[key]
        if not refresh.done():
            refresh.set_result(None)

    def count_hits_soon(self) -> None:
        """Have the hits counted in Redis within :data:`FLUSH_INTERVAL` (one batch at a time)."""
        if not self._counting:
            assert self.loop is not None
            self._counting = True
            self.loop.call_later(FLUSH_INTERVAL, lambda: asyncio.ensure_future(self.count_hits()))

    async def count_hits(self) -> None:
        """Send the waiting hit counts on a control thread; refuse the clients over budget."""
        assert self.control is not None
        batch = self.hits.take()
        try:
            decisions = await self.control.call(lambda: ratelimit.add_ip_counts(batch), None) if batch else {}
        except (redis.RedisError, OSError) as exc:  # Redis down: hits go through, as every request
            cache.mark_down(exc)
            decisions = {}
        except (Overloaded, TooManyStuckCalls):
            decisions = {}
        for client, decision in decisions.items():
            if not decision.allowed:
                self.hits.refuse(client, wall_to_monotonic(decision.reset_at))
        self._counting = False
        if self.hits.pending:
            self.count_hits_soon()

    @staticmethod
    def _refused(reason: str, status: int, message: str, details: dict[str, Any],
                 extra: list[tuple[str, str]] | None = None) -> tuple[int, list[tuple[str, str]], bytes]:
        metrics.child(metrics.GATEWAY_REFUSED, reason).inc()
        if status in (408, 413):  # the rest of the body was not read: the connection cannot go on
            extra = [*(extra or []), ("connection", "close")]
        return _error(status, message, details, extra)

    def call_wsgi(self, environ: WSGIEnv) -> Answer:
        """The Gateway's WSGI answer; a response without ``Content-Length`` comes back as an
        iterator, to be streamed."""
        captured: list[Any] = []

        def start_response(status: str, headers: list[tuple[str, str]], _exc_info: Any = None) -> Any:
            captured[:] = [status, headers]
            return lambda _data: None

        result = self.gateway(environ, start_response)
        status, headers = captured
        if any(key.lower() == "content-length" for key, _ in headers):
            try:
                return status, headers, b"".join(result)
            finally:
                close = getattr(result, "close", None)
                if close is not None:
                    close()
        return status, headers, iter(result)

    # -- streamed responses -----------------------------------------------------------------------
    async def stream(self, proto: Any, status: int, headers: list[tuple[str, str]],
                     chunks: Iterator[bytes]) -> None:
        """Send ``chunks`` as they come, pulled from the iterator on a thread of their own, until
        it ends or the client disconnects (then the iterator is closed)."""
        if self.streams >= MAX_STREAMS:
            _close(chunks)
            code, extra, body = self._refused("overloaded", 503, "too many streams are open", {},
                                              [("Retry-After", str(RETRY_AFTER))])
            proto.response_bytes(code, extra, body)
            return
        self.streams += 1
        loop = asyncio.get_running_loop()
        arrived: asyncio.Queue[bytes | None] = asyncio.Queue()
        stop = threading.Event()

        def pull() -> None:
            # An empty chunk is a chance to notice that the client has gone (the iterator
            # yields one now and then while it has nothing to send).
            try:
                for chunk in chunks:
                    if stop.is_set():
                        break
                    if chunk:
                        loop.call_soon_threadsafe(arrived.put_nowait, chunk)
            except Exception:  # noqa: BLE001
                log.exception("streamed response failed")
            finally:
                _close(chunks)
                with suppress(RuntimeError):  # the event loop is closed: the process is stopping
                    loop.call_soon_threadsafe(arrived.put_nowait, None)

        transport = proto.response_stream(status, headers)
        threading.Thread(target=pull, name="stream", daemon=True).start()
        gone = asyncio.ensure_future(proto.client_disconnect())
        try:
            while True:
                next_chunk = asyncio.ensure_future(arrived.get())
                done, _ = await asyncio.wait((next_chunk, gone), return_when=asyncio.FIRST_COMPLETED)
                if gone in done:
                    next_chunk.cancel()
                    break
                chunk = next_chunk.result()
                if chunk is None:
                    break
                await transport.send_bytes(chunk)
        except Exception:  # noqa: BLE001 - the client went away mid-send
            pass
        finally:
            stop.set()
            gone.cancel()
            self.streams -= 1


def call_on_worker_stop(callback: Callable[[], None]) -> None:
    """Have granian call ``callback`` as soon as this server process is told to stop.

    A granian worker stops on SIGTERM/SIGINT through the ``WorkerSignal`` that
    ``granian._signals.set_loop_signals`` returns and sets from the event loop's signal
    handlers; the app has no hook of its own for that moment (``__rsgi_del__`` comes after
    in-flight requests, streams included, have ended) and the signal takes one callback, which
    granian sets. So that function is wrapped, before the worker calls it: its handlers are
    replaced by ones that call ``callback`` first, then set the signal as granian's do. Call
    it while the app module is imported (granian imports the app before it starts serving)."""
    import signal

    from granian import _signals

    original = _signals.set_loop_signals

    def set_loop_signals(loop: Any) -> Any:
        stop = original(loop)

        def handler(_signum: int, _frame: object) -> None:
            callback()
            stop.set()

        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, handler, signum, None)
        return stop

    _signals.set_loop_signals = set_loop_signals


def _close(chunks: Any) -> None:
    close = getattr(chunks, "close", None)
    if close is not None:
        close()
