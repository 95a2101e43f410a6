"""The embedded default: PostgreSQL and Redis from pip packages start, serve and stop."""

from __future__ import annotations

from pathlib import Path

import pg8000.native
import pytest
import redis

from gateway import embedded
from minitwitter import migrate

pytestmark = [pytest.mark.slow, pytest.mark.no_stores]


def test_embedded_postgres_and_redis_start_serve_and_stop(tmp_path: Path):
    pg = embedded.start_postgres(tmp_path / "pg")
    rd = embedded.start_redis(tmp_path / "redis")
    try:
        assert pg.port != 5432 and rd.port != 6379
        migrate.ensure_database(pg.url.rsplit("/", 1)[0] + "/minitwitter")
        conn = pg8000.native.Connection(user="postgres", host="127.0.0.1", port=pg.port,
                                        database="minitwitter")
        assert conn.run("SELECT 1")[0][0] == 1
        conn.close()
        client = redis.Redis(port=rd.port)
        client.set("k", "v")
        assert client.get("k") == b"v"
        client.close()
    finally:
        pg.stop()
        rd.stop()
    assert not embedded.port_open("127.0.0.1", pg.port)
    assert not embedded.port_open("127.0.0.1", rd.port)
