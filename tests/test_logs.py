"""minitwitter.logs: one JSON line per record, on the stream and in PostgreSQL's ``logs`` table."""

from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from minitwitter import db, logs
from minitwitter.config import get_config, set_config
from tests.conftest import eventually

COLUMNS = "ts, level, logger, message, function, call_id, account_id, status, duration_ms, instance, extra"


@pytest.fixture
def sink() -> Iterator[logs.LogSink]:
    sink = logs.LogSink(io.StringIO(), capacity=100)
    yield sink
    sink.close()


def logger_for(sink: logs.LogSink, name: str = "minitwitter.test") -> logging.Logger:
    """A logger writing only through ``sink`` (the process's own handlers stay out of it)."""
    log = logging.getLogger(name)
    log.handlers[:] = [logs.JsonLogHandler(sink)]
    log.propagate = False
    log.setLevel(logging.INFO)
    return log


def stream_lines(sink: logs.LogSink) -> list[dict[str, Any]]:
    return [json.loads(line) for line in sink.stream.getvalue().splitlines()]


def stored_rows() -> list[dict[str, Any]]:
    names = [c.strip() for c in COLUMNS.split(",")]
    return [dict(zip(names, row, strict=True)) for row in db.run(f"SELECT {COLUMNS} FROM logs ORDER BY id")]


def test_a_record_becomes_one_line_on_the_stream_and_one_row_with_the_same_fields(sink):
    log = logger_for(sink)
    with logs.context(function="get-user", call_id="call-1", account_id=42):
        log.info("request", extra={"status": 200, "duration_ms": 1.25, "path": "/alice"})

    assert sink.stream.getvalue() == ""  # info lines wait for the background write
    sink.flush()

    [line] = stream_lines(sink)
    assert line["message"] == "request" and line["level"] == "INFO" and line["logger"] == "minitwitter.test"
    assert (line["function"], line["call_id"], line["account_id"]) == ("get-user", "call-1", 42)
    assert line["path"] == "/alice" and line["status"] == 200
    [row] = stored_rows()
    assert row["ts"] == datetime.fromisoformat(line["time"])  # to the microsecond
    assert (row["level"], row["logger"], row["message"]) == ("INFO", "minitwitter.test", "request")
    assert (row["function"], row["call_id"], row["account_id"]) == ("get-user", "call-1", 42)
    assert (row["status"], row["duration_ms"], row["instance"]) == (200, 1.25, logs.INSTANCE)
    assert row["extra"] == {"path": "/alice"}
    # Log rows commit without waiting for the WAL flush, but only they: the thread's session
    # (the one requests use) still commits durably.
    assert db.scalar("SHOW synchronous_commit") == "on"


def test_warnings_reach_the_stream_at_once_after_what_was_pending(sink):
    log = logger_for(sink)
    log.info("first")
    log.warning("second")

    assert [line["message"] for line in stream_lines(sink)] == ["first", "second"]


def test_the_background_thread_writes_and_stores_without_being_asked(sink):
    logger_for(sink).info("on its own", extra={"status": 201})

    eventually(lambda: [line["message"] for line in stream_lines(sink)] == ["on its own"])
    eventually(lambda: [(r["message"], r["status"]) for r in stored_rows()] == [("on its own", 201)])


def test_a_value_that_does_not_fit_its_column_stays_in_extra_and_loses_no_line(sink):
    log = logger_for(sink)
    log.info("odd", extra={"status": "ok", "duration_ms": "slow", "account_id": 2**63})
    log.info("plain", extra={"status": 204})
    sink.flush()

    odd, plain = stored_rows()
    assert (odd["status"], odd["duration_ms"], odd["account_id"]) == (None, None, None)
    assert odd["extra"] == {"status": "ok", "duration_ms": "slow", "account_id": 2**63}
    assert (plain["message"], plain["status"], plain["extra"]) == ("plain", 204, None)
    assert sink.dropped == 0


def test_lines_wait_while_postgresql_is_unreachable_and_the_buffer_stays_bounded(sink):
    log = logger_for(sink)
    config = get_config()
    unreachable = config.database_url.rsplit("@", 1)[0] + "@127.0.0.1:9/nowhere"
    set_config(config.__class__(**{**config.__dict__, "database_url": unreachable}))
    db.close_connection()
    try:
        for n in range(sink.capacity + 5):
            log.info(f"line {n}")
        sink.flush()  # PostgreSQL does not answer: the lines wait
        assert len(sink.unstored) == sink.capacity and sink.dropped == 5
    finally:
        set_config(config)
        db.close_connection()

    sink.flush()

    messages = [r["message"] for r in stored_rows()]
    assert messages == [f"line {n}" for n in range(sink.capacity)]
    assert len(stream_lines(sink)) == sink.capacity + 5  # the stream drops nothing


def test_a_forked_child_does_not_write_its_parents_pending_lines_again(tmp_path: Path):
    path = tmp_path / "stream.log"
    with open(path, "w") as stream:
        sink = logs.LogSink(stream, store=False)
        logger_for(sink).info("before the fork")
        pid = os.fork()
        if pid == 0:  # the child: whatever it flushes must not include the parent's line
            sink.flush()
            os._exit(0)
        os.waitpid(pid, 0)
        sink.close()

    assert [json.loads(line)["message"] for line in path.read_text().splitlines()] == ["before the fork"]


class BrokenStream(io.StringIO):
    def write(self, _text: str) -> int:
        raise OSError("the reader went away")


def test_a_broken_stream_loses_nothing_bound_for_postgresql():
    sink = logs.LogSink(BrokenStream(), capacity=100)
    try:
        log = logger_for(sink)
        log.info("still stored")
        log.error("also stored")  # urgent: written at once, which fails quietly
        sink.flush()
        assert [r["message"] for r in stored_rows()] == ["still stored", "also stored"]
    finally:
        sink.close()
