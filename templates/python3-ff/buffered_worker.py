"""gunicorn's gthread worker, reading each request whole before a thread takes it.

gunicorn's gthread worker hands a connection to a pool thread as soon as any byte arrives; the
thread then blocks until the headers and the body are in. A client that sends half a header,
or ``Content-Length: 1000`` and ten bytes, holds that thread for as long as it likes: with
``WSGI_THREADS`` such clients the function stops answering (issue 19, measured: 6 slow clients,
4 threads, a normal request timed out).

This worker reads every request in its event loop instead, without a thread: headers up to
:data:`MAX_HEADER_BYTES`, then the body (``Content-Length`` or chunked) up to ``max_body``.
Only a complete request goes to the thread pool, with its bytes already in the parser's buffer,
so a pool thread never waits on a client. A request not complete within ``read_timeout``
seconds of its first byte (or of the connection, for the first request) gets ``408 Request
Timeout`` and the connection is closed; too large a header block gets 431, too large a body
413. Sends block at most ``write_timeout`` seconds each (``SO_SNDTIMEO``), so a client that
stops reading its response frees the thread too.

Everything else (keep-alive, graceful shutdown, the parser, the WSGI call) is gthread's own.
"""

from __future__ import annotations

import selectors
import socket
import struct
import time
from collections import deque
from functools import partial
from typing import Any

from gunicorn.workers.gthread import TConn, ThreadWorker

#: Request line and header fields together (gunicorn's own per-line limits still apply).
MAX_HEADER_BYTES = 64 * 1024
RECV_BYTES = 64 * 1024


def _reply(status: str) -> bytes:
    return (f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: 2\r\n"
            "Connection: close\r\n\r\n{}").encode("ascii")


TIMEOUT_REPLY = _reply("408 Request Timeout")
HEADERS_TOO_LARGE_REPLY = _reply("431 Request Header Fields Too Large")
BODY_TOO_LARGE_REPLY = _reply("413 Content Too Large")
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class TooLarge(Exception):
    """The request exceeds a size limit; ``reply`` says which."""

    def __init__(self, reply: bytes) -> None:
        super().__init__(reply)
        self.reply = reply


def _chunked_end(data: bytes | bytearray, start: int) -> int | None:
    """Offset just past a chunked body starting at ``start``, or None while incomplete."""
    pos = start
    while True:
        eol = data.find(b"\r\n", pos)
        if eol < 0:
            return None
        size_field = bytes(data[pos:eol]).split(b";", 1)[0].strip()
        try:
            size = int(size_field, 16)
        except ValueError:
            return len(data)  # malformed: let gunicorn's parser answer 400
        if size == 0:
            # Trailer fields, then an empty line.
            end = data.find(b"\r\n\r\n", eol)
            if data[eol:eol + 4] == b"\r\n\r\n":
                return eol + 4
            return None if end < 0 else end + 4
        pos = eol + 2 + size + 2
        if pos > len(data):
            return None


def request_end(data: bytes | bytearray, max_body: int) -> tuple[int | None, bool]:
    """(offset just past the first complete request, or None; whether it expects 100-continue).

    Raises :class:`TooLarge` when the header block or the declared body is over its limit.
    Anything this does not understand is treated as complete, for gunicorn's parser to refuse.
    """
    head_end = data.find(b"\r\n\r\n")
    if head_end < 0:
        if len(data) > MAX_HEADER_BYTES:
            raise TooLarge(HEADERS_TOO_LARGE_REPLY)
        return None, False
    if head_end > MAX_HEADER_BYTES:
        raise TooLarge(HEADERS_TOO_LARGE_REPLY)
    body_start = head_end + 4
    length: int | None = None
    chunked = expect = False
    for line in bytes(data[:head_end]).split(b"\r\n")[1:]:
        name, sep, value = line.partition(b":")
        if not sep:
            continue
        name = name.strip().lower()
        value = value.strip().lower()
        if name == b"content-length":
            try:
                length = int(value)
            except ValueError:
                return body_start, False
        elif name == b"transfer-encoding":
            chunked = chunked or value.endswith(b"chunked")
        elif name == b"expect":
            expect = value == b"100-continue"
    if chunked:
        end = _chunked_end(data, body_start)
        if end is None and len(data) - body_start > max_body:
            raise TooLarge(BODY_TOO_LARGE_REPLY)
        return end, expect
    if length is None or length <= 0:
        return body_start, False
    if length > max_body:
        raise TooLarge(BODY_TOO_LARGE_REPLY)
    end = body_start + length
    return (end if len(data) >= end else None), expect


class Reading:
    """A connection whose next request is still arriving."""

    __slots__ = ("buffer", "continued", "deadline")

    def __init__(self, buffer: bytes, deadline: float) -> None:
        self.buffer = bytearray(buffer)
        self.deadline = deadline
        self.continued = False


class BufferedThreadWorker(ThreadWorker):  # type: ignore[misc] - gunicorn is untyped
    """gthread, with requests read whole in the event loop (see the module docstring)."""

    #: Set by index.py from WSGI_READ_TIMEOUT / WSGI_WRITE_TIMEOUT / WSGI_MAX_BODY_BYTES.
    read_timeout = 10.0
    write_timeout = 30.0
    max_body = 1024 * 1024

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.reading: dict[Any, Reading] = {}
        self.reading_order: deque[Any] = deque()  # by deadline: every deadline is now + read_timeout

    def accept(self, listener: Any) -> None:
        try:
            client, address = listener.accept()
        except OSError:  # EAGAIN: another worker took it; ECONNABORTED: the client gave up
            return
        # Bound every blocking send of this connection (a client that stops reading).
        timeval = struct.pack("ll", int(self.write_timeout), int(self.write_timeout % 1 * 1e6))
        client.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
        self.nr_conns += 1
        self.enqueue_req(TConn(self.cfg, client, address, listener.getsockname()))

    def enqueue_req(self, conn: Any) -> None:
        """Read the connection's next request in the event loop; a pool thread gets it whole."""
        leftover = conn.parser.unreader.take_buffered() if conn.parser is not None else b""
        state = Reading(leftover, time.monotonic() + self.read_timeout)
        self.reading[conn] = state
        self.reading_order.append(conn)
        conn.sock.setblocking(False)
        if not self._progress(conn, state, receive=not leftover):
            return
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._on_readable, conn))

    def _on_readable(self, conn: Any, _sock: Any) -> None:
        state = self.reading.get(conn)
        if state is None:
            return
        self._progress(conn, state, receive=True)

    def _progress(self, conn: Any, state: Reading, *, receive: bool) -> bool:
        """Take what has arrived; True while the request is still incomplete."""
        if receive:
            try:
                data = conn.sock.recv(RECV_BYTES)
            except (BlockingIOError, InterruptedError):
                return True
            except OSError:
                self._drop(conn)
                return False
            if not data:
                self._drop(conn)
                return False
            state.buffer += data
        try:
            end, expect = request_end(state.buffer, self.max_body)
        except TooLarge as too_large:
            self._refuse(conn, too_large.reply)
            return False
        if end is None:
            if expect and not state.continued:
                state.continued = True
                _send_quietly(conn.sock, CONTINUE)
            return True
        self._dispatch(conn, bytes(state.buffer))
        return False

    def _dispatch(self, conn: Any, data: bytes) -> None:
        self._unregister(conn)
        self._forget(conn)
        conn.data_ready = True  # gthread must not wait for data: it is all here
        conn.sock.setblocking(True)
        conn.init()
        conn.parser.unreader.unread(data)
        super().enqueue_req(conn)

    def _forget(self, conn: Any) -> None:
        self.reading.pop(conn, None)
        try:
            self.reading_order.remove(conn)
        except ValueError:
            pass

    def _unregister(self, conn: Any) -> None:
        try:
            self.poller.unregister(conn.sock)
        except (KeyError, ValueError, OSError):
            pass

    def _drop(self, conn: Any) -> None:
        self._unregister(conn)  # before close: a closed socket cannot be looked up any more
        self._forget(conn)
        self.nr_conns -= 1
        conn.close()

    def _refuse(self, conn: Any, reply: bytes) -> None:
        _send_quietly(conn.sock, reply)
        self._drop(conn)

    def murder_pending(self) -> None:
        """gthread's expiry of idle connections, plus requests past ``read_timeout``: 408."""
        super().murder_pending()
        now = time.monotonic()
        while self.reading_order:
            conn = self.reading_order[0]
            state = self.reading.get(conn)
            if state is not None and state.deadline > now:
                break
            self._refuse(conn, TIMEOUT_REPLY)

    def murder_keepalived(self, force: bool = False) -> None:
        super().murder_keepalived(force)
        if force:  # the worker is exiting: requests still arriving will not be served
            for conn in list(self.reading_order):
                self._refuse(conn, _reply("503 Service Unavailable"))


def _send_quietly(sock: socket.socket, data: bytes) -> None:
    """Best effort on a non-blocking socket: a client that does not read gets nothing."""
    try:
        blocking = sock.getblocking()
        sock.setblocking(False)
        sock.send(data)
        sock.setblocking(blocking)
    except OSError:
        pass


def configured(read_timeout: float, write_timeout: float, max_body: int) -> type[BufferedThreadWorker]:
    """The worker class with these limits (gunicorn's ``worker_class`` setting takes a class)."""
    return type("BufferedThreadWorker", (BufferedThreadWorker,), {
        "read_timeout": read_timeout, "write_timeout": write_timeout, "max_body": max_body})
