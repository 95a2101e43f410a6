"""``GET /system/logs?follow=true``: the stored log lines, then new ones as they are stored.

What ``faas-cli logs NAME`` asks for by default, as the OpenFaaS logs API answers it: NDJSON,
one line per log record, kept open. The body is a generator the WSGI server iterates on one of
its threads: it polls the ``logs`` table every :data:`POLL_SECONDS` (one indexed query on the
thread's own connection, no transaction or lock held in between) and writes a bare newline,
which NDJSON readers skip, when :data:`HEARTBEAT_SECONDS` passed without a line, so a client
that went away is noticed (the server then closes the generator) and proxies keep the
connection. A stream ends after ``LOGS_FOLLOW_MAX_SECONDS`` or when the gateway closes it.

Rows are read by id. A row is visible once its batch commits, and batches from several processes
commit out of id order, so each poll reads again the ids of the last :data:`OVERLAP_SECONDS` and
sends only the ones it has not sent: a line whose batch committed late still arrives, once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

import orjson

from minitwitter import errors, logstore

log = logging.getLogger("minitwitter.gateway")

POLL_SECONDS = 0.5
HEARTBEAT_SECONDS = 2.0
OVERLAP_SECONDS = 2.0


def once(release: Callable[[], Any]) -> Callable[[], None]:
    """``release``, made safe to call more than once (only the first call runs it)."""
    lock = threading.Lock()
    done = False

    def run() -> None:
        nonlocal done
        with lock:
            if done:
                return
            done = True
        release()

    return run


def ndjson(lines: list[tuple[int, dict[str, Any]]]) -> bytes:
    return b"".join(orjson.dumps(line) + b"\n" for _, line in lines)


def follow(filters: dict[str, Any], *, tail: int | None, max_seconds: float, stop: threading.Event,
           release: Callable[[], None] | None = None) -> Iterator[bytes]:
    """The lines matching ``filters`` (the newest ``tail``), then each new one as it is stored.

    ``release`` is called once the stream ends, however it ends (the client gone, the time up,
    ``stop`` set, the store failing).
    """
    try:
        top = logstore.newest_id()
        first = logstore.query_rows(tail=tail, **filters)
    except BaseException:
        if release is not None:
            release()
        raise
    return _stream(first, top, filters, max_seconds, stop, release)


def _stream(first: list[tuple[int, dict[str, Any]]], top: int, filters: dict[str, Any],
            max_seconds: float, stop: threading.Event, release: Callable[[], None] | None) -> Iterator[bytes]:
    sent = {row_id for row_id, _ in first if row_id > top}
    history = deque([(time.monotonic(), top)])  # (when, highest id seen then)
    deadline = time.monotonic() + max_seconds
    reason = "time is up"
    try:
        yield ndjson(first) or b"\n"  # something at once: the client knows the stream is open
        written = time.monotonic()
        while time.monotonic() < deadline:
            if stop.wait(POLL_SECONDS):
                reason = "gateway closing"
                break
            now = time.monotonic()
            while len(history) > 1 and history[1][0] <= now - OVERLAP_SECONDS:
                history.popleft()
            floor = history[0][1]  # the highest id seen OVERLAP_SECONDS ago
            try:
                rows = logstore.rows_after(floor, **filters)
            except errors.DependencyUnavailable:
                rows = []  # PostgreSQL away: the stream waits (heartbeats) for it
            fresh = [(row_id, line) for row_id, line in rows if row_id not in sent]
            history.append((now, max([history[-1][1], *(row_id for row_id, _ in rows)])))
            sent = {row_id for row_id in sent if row_id > floor} | {row_id for row_id, _ in fresh}
            if fresh:
                yield ndjson(fresh)
                written = now
            elif now - written >= HEARTBEAT_SECONDS:
                yield b"\n"
                written = now
    except GeneratorExit:
        reason = "client gone"
        raise
    finally:
        if release is not None:
            release()
        log.info("log stream ended", extra={"reason": reason})
