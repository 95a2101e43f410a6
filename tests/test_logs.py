"""minitwitter.logs: one JSON line per record, on the stream and in PostgreSQL's ``logs`` table."""

from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pythonjsonlogger.orjson import OrjsonFormatter

from minitwitter import db, logs, logstore
from minitwitter.config import get_config, set_config
from tests.conftest import eventually

COLUMNS = "ts, level, logger, message, function, call_id, account_id, status, duration_ms, instance, extra"


@pytest.fixture
def sink() -> Iterator[logs.LogSink]:
    sink = logs.LogSink(io.StringIO(), capacity=100, store=logstore.store_batch)
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
    assert (row["status"], row["duration_ms"], row["instance"]) == (200, 1.25, logstore.INSTANCE)
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
        sink = logs.LogSink(stream)
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
    sink = logs.LogSink(BrokenStream(), capacity=100, store=logstore.store_batch)
    try:
        log = logger_for(sink)
        log.info("still stored")
        log.error("also stored")  # urgent: written at once, which fails quietly
        sink.flush()
        assert [r["message"] for r in stored_rows()] == ["still stored", "also stored"]
    finally:
        sink.close()


# -- JsonFormatter's two fast steps give python-json-logger's and datetime's results ------------

@pytest.mark.no_stores
@pytest.mark.parametrize("created", [
    1_764_547_200.0,  # a whole second
    1_764_547_200.1234565,  # half a microsecond: rounded half to even, as datetime does
    1_764_547_200.9999996,  # rounds up into the next second
    1_764_547_259.9999999,  # ... and the next minute
    1_767_225_599.9999997,  # ... and the next year
    951_782_400.5,  # 2000-02-29
    *(1_700_000_000 + i * 7_654.321_987_3 for i in range(50)),
])
def test_the_time_stamp_is_what_datetime_isoformat_writes(created: float) -> None:
    formatter = logs.JsonFormatter(**logs.FORMATTER_OPTIONS)
    record = logging.makeLogRecord({"created": created})
    expected = datetime.fromtimestamp(created, tz=UTC).isoformat(timespec="microseconds")
    assert formatter.formatTime(record) == expected
    assert formatter.formatTime(record) == expected  # from the second's cached stamp too


def _record(**attributes: Any) -> logging.LogRecord:
    msg = attributes.pop("msg", "hello %s")
    exc_info, stack_info = attributes.pop("exc_info", None), attributes.pop("stack_info", None)
    record = logging.getLogger("minitwitter.test").makeRecord(
        "minitwitter.test", logging.INFO, "(unknown file)", 0, msg,
        ("world",) if isinstance(msg, str) else (), exc_info, extra=attributes, sinfo=stack_info)
    # what format() sets before add_fields (python-json-logger leaves a dict message empty)
    record.message = record.getMessage() if isinstance(msg, str) else ""
    record.asctime = "now"
    return record


@pytest.mark.no_stores
@pytest.mark.parametrize("options", [
    logs.FORMATTER_OPTIONS,
    {**logs.FORMATTER_OPTIONS, "rename_fields": {"levelname": "level", "path": "route", "message": "msg"}},
    {"fmt": ["levelname", "name", "missing"], "rename_fields": {"missing": "absent"}},
    # options whose fields only python-json-logger's own add_fields adds: it is called
    {**logs.FORMATTER_OPTIONS, "static_fields": {"service": "minitwitter"}},
    {**logs.FORMATTER_OPTIONS, "defaults": {"status": 0}, "timestamp": True},
    {**logs.FORMATTER_OPTIONS, "rename_fields_keep_missing": True, "rename_fields": {"gone": "x"}},
])
@pytest.mark.parametrize("record", [
    _record(),
    _record(method="GET", path="/id/1", status=200, duration_ms=0.5, function="get-user",
            call_id="c", account_id=None),
    _record(_private="hidden", nested={"a": [1, 2]}, taskName="t"),
    _record(msg={"event": "dict message", "count": 2}),
    _record(exc_info=(ValueError, ValueError("boom"), None), stack_info="stack"),
], ids=["plain", "request", "private", "dict-message", "exception"])
def test_the_fields_are_python_json_loggers(options: dict[str, Any], record: logging.LogRecord) -> None:
    ours = logs.JsonFormatter(**options)
    theirs = OrjsonFormatter(**options)
    message_dict = {"exc_info": "formatted"} if record.exc_info else {}
    mine: dict[str, Any] = {}
    reference: dict[str, Any] = {}
    ours.add_fields(mine, record, message_dict)
    theirs.add_fields(reference, record, message_dict)
    assert list(mine.items()) == list(reference.items())  # the same fields, in the same order
    line, expected = json.loads(ours.format(record)), json.loads(theirs.format(record))
    for stamp in ("time", "asctime"):  # logging's own formatTime writes local time, another format
        if stamp in expected:
            expected[stamp] = line[stamp]
    assert line == expected


@pytest.mark.no_stores
@pytest.mark.parametrize("fields", [
    {"method": "GET", "path": "/id/7", "status": 200, "duration_ms": 1.234},
    {"method": "POST", "path": "/caf\u00e9/\u0000", "status": 422, "duration_ms": 0.5},
])
def test_the_request_line_built_directly_is_the_line_logging_writes(monkeypatch: pytest.MonkeyPatch,
                                                                    fields: dict[str, Any]) -> None:
    """``logs.log_request`` skips the logging machinery when this module's handler is the only
    one; its line is the one ``logging`` writes for the same record, byte for byte (but the
    time, which differs between the two calls)."""
    sink = logs.LogSink(io.StringIO(), capacity=100)
    handler = logs.JsonLogHandler(sink)
    monkeypatch.setattr(logging.root, "handlers", [handler])
    monkeypatch.setattr(logs, "_handler", handler)
    monkeypatch.setattr(logging.getLogger(logs.REQUEST_LOGGER), "level", logging.INFO)
    with logs.context(function="get-user", call_id="c-1", account_id=7):
        logs.log_request(fields)                                          # the direct line
        logging.getLogger(logs.REQUEST_LOGGER).info("request", extra=fields)  # the ordinary one
    sink.flush()
    direct, ordinary = sink.stream.getvalue().splitlines()
    strip = lambda line: {k: v for k, v in json.loads(line).items() if k != "time"}  # noqa: E731
    assert strip(direct) == strip(ordinary)
    assert list(json.loads(direct)) == list(json.loads(ordinary))  # same keys, same order
    datetime.fromisoformat(json.loads(direct)["time"])


@pytest.mark.no_stores
def test_the_request_line_takes_the_ordinary_path_when_another_handler_listens(
        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger=logs.REQUEST_LOGGER):
        logs.log_request({"method": "GET", "path": "/", "status": 200, "duration_ms": 1.0})
    assert [(r.name, r.getMessage(), r.status) for r in caplog.records] == [(logs.REQUEST_LOGGER, "request", 200)]


@pytest.mark.no_stores
def test_fast_successful_reads_are_stored_one_in_n_and_everything_else_always(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The documented sampling rule: every request line reaches the stream; PostgreSQL gets one
    in LOG_STORE_READS_ONE_IN of the fast successful GETs and every error, slow request and write."""
    stored: list[str] = []
    sink = logs.LogSink(io.StringIO(), capacity=1000, store=lambda batch: stored.extend(batch) or len(batch))
    handler = logs.JsonLogHandler(sink)
    monkeypatch.setattr(logging.root, "handlers", [handler])
    monkeypatch.setattr(logs, "_handler", handler)
    monkeypatch.setattr(logging.getLogger(logs.REQUEST_LOGGER), "level", logging.INFO)
    monkeypatch.setattr(logs, "_store_reads_one_in", 10)
    monkeypatch.setattr(logs, "_slow_ms", 100.0)
    requests = ([{"method": "GET", "path": "/fast", "status": 200, "duration_ms": 1.0}] * 100
                + [{"method": "GET", "path": "/missing", "status": 404, "duration_ms": 1.0}] * 7
                + [{"method": "GET", "path": "/slow", "status": 200, "duration_ms": 150.0}] * 5
                + [{"method": "POST", "path": "/", "status": 201, "duration_ms": 1.0}] * 6)
    for fields in requests:
        logs.log_request(fields)
    sink.flush()
    assert len(sink.stream.getvalue().splitlines()) == len(requests)  # the stream: every line
    paths = [json.loads(line)["path"] for line in stored]
    assert paths.count("/fast") == 10  # one in ten
    assert (paths.count("/missing"), paths.count("/slow"), paths.count("/")) == (7, 5, 6)  # always
