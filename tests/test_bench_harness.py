"""The benchmark harness (``scripts/bench.py``): wrk output parsing, targets, seeding, Lua script.

Not a timed assertion: these check that the harness measures what it says it measures.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from minitwitter import db
from scripts import bench, instructions

WRK_OUTPUT = """\
Running 10s test @ http://127.0.0.1:8080/function/list-posts?limit=100
  2 threads and 10 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     2.21ms  612.40us  14.93ms   83.10%
    Req/Sec     2.29k   180.52     2.61k    71.00%
  Latency Distribution
     50%    2.09ms
     75%  750.00us
     90%    2.88ms
     99%    1.02s
  45612 requests in 10.01s, 1.12GB read
  Socket errors: connect 0, read 3, write 1, timeout 2
  Non-2xx or 3xx responses: 7
Requests/sec:   4556.71
Transfer/sec:    114.21MB
"""


@pytest.mark.no_stores
def test_parse_wrk_reads_rate_percentiles_and_errors() -> None:
    result = bench.parse_wrk(WRK_OUTPUT)
    assert result.requests == 45612
    assert result.seconds == pytest.approx(10.01)
    assert result.rps == pytest.approx(4556.71)
    assert result.p50_ms == pytest.approx(2.09)
    assert result.p90_ms == pytest.approx(2.88)
    assert result.p99_ms == pytest.approx(1020.0)  # seconds are converted
    assert result.non_2xx == 7
    assert result.socket_errors == 6
    assert result.errors == 13


@pytest.mark.no_stores
def test_parse_wrk_without_error_lines_counts_zero() -> None:
    clean = "\n".join(line for line in WRK_OUTPUT.splitlines()
                      if not line.lstrip().startswith(("Socket errors", "Non-2xx")))
    result = bench.parse_wrk(clean)
    assert (result.non_2xx, result.socket_errors) == (0, 0)
    assert result.errors == 0


@pytest.mark.no_stores
@pytest.mark.parametrize("broken", [
    "", "unable to connect to 127.0.0.1:1 Connection refused",
    WRK_OUTPUT.replace("Requests/sec:   4556.71", ""),
    WRK_OUTPUT.replace("     99%    1.02s\n", ""),
])
def test_parse_wrk_rejects_incomplete_output(broken: str) -> None:
    with pytest.raises(ValueError, match="unrecognised wrk output"):
        bench.parse_wrk(broken)


@pytest.mark.no_stores
def test_medians_and_targets() -> None:
    runs = [bench.WrkResult(100, 10, rps, p50, p50 * 2, p99, non_2xx=err)
            for rps, p50, p99, err in [(5000, 1.0, 8.0, 0), (4000, 3.0, 12.0, 0), (4600, 2.0, 9.0, 0)]]
    summary = bench.median_result(runs)
    assert summary["rps"] == 4600 and summary["p50_ms"] == 2.0 and summary["p99_ms"] == 9.0
    assert summary["errors"] == 0 and summary["requests"] == 300
    verdicts = {v["scenario"]: v["passed"] for v in bench.check_targets({
        "list-posts limit=100 c10": summary,
        "get-user c10": {**summary, "rps": 6000.0, "p99_ms": 9.5},
        "create-post c10": {**summary, "rps": 2000.0, "p99_ms": 5.0, "errors": 1},
    })}
    assert verdicts == {"list-posts limit=100 c10": True, "get-user c10": False, "create-post c10": False}


@pytest.mark.slow
def test_seed_creates_accounts_posts_follows_and_likes_through_the_api(start_gateway: Any) -> None:
    gateway = start_gateway()
    with httpx.Client(base_url=gateway.url, timeout=30) as client:
        seeded = bench.seed(client, users=3, posts=6)
        assert len(seeded.tokens) == 3 and len(seeded.post_ids) == 6
        assert db.scalar("SELECT count(*) FROM users") == 3
        assert db.scalar("SELECT count(*) FROM posts") == 6
        # each account follows the other two; each likes every one of the six posts
        assert seeded.follows == db.scalar("SELECT count(*) FROM follows") == 6
        assert seeded.likes == db.scalar("SELECT count(*) FROM likes") == 18
        assert db.scalar("SELECT sum(likes_count) FROM posts") == 18
        home = client.get("/function/home-timeline?limit=100", headers=bench.bearer(seeded.tokens[0]))
        assert home.status_code == 200 and len(home.json()) == 6
        # a reused stack: existing accounts are logged into, not re-registered
        again = bench.seed(client, users=3, posts=0)
        assert again.user_ids == seeded.user_ids
        assert db.scalar("SELECT count(*) FROM users") == 3


@pytest.mark.slow
def test_create_post_lua_script_rotates_tokens(start_gateway: Any, tmp_path: Path) -> None:
    gateway = start_gateway()
    with httpx.Client(base_url=gateway.url, timeout=30) as client:
        seeded = bench.seed(client, users=3, posts=0)
    tokens = tmp_path / "tokens.txt"
    tokens.write_text("\n".join(seeded.tokens) + "\n")
    scenario = bench.Scenario("create-post c2", "/function/create-post", 2, script="create_post.lua")
    result = bench.run_wrk(gateway.url, scenario, 1, 2, seeded.tokens[0], tokens)
    assert result.requests > 0 and result.errors == 0
    # One snapshot: a request still in flight when wrk stopped may commit between two queries.
    created, from_script, authors = db.one(
        "SELECT count(*), count(*) FILTER (WHERE content LIKE 'wrk load post %'),"
        " count(DISTINCT author_id) FROM posts")
    assert created >= result.requests  # wrk counts completed responses only
    assert authors == 3 if created >= 3 else authors >= 1
    assert from_script == created


@pytest.mark.no_stores
def test_instruction_counts_are_read_from_valgrinds_summary() -> None:
    stderr = "==12== Events    : Ir\n==12== Collected : 3106192100\n==12==\n==12== I   refs:      3,106,192,100\n"
    assert instructions.COLLECTED.findall(stderr) == ["3106192100"]


def test_instruction_count_runs_seed_and_scenarios_in_process(stores: dict[str, str], tmp_path: Path) -> None:
    """What ``scripts/instructions.py`` runs under valgrind, run without it: the seed through the
    functions, then one process's warm-up of every scenario (each must answer 2xx) and N
    requests of one."""
    from tests.conftest import base_env

    seed_file = tmp_path / "seed.json"
    env = base_env(stores, INSTR_SEED_FILE=str(seed_file))
    instructions.run_python(["--seed", str(seed_file)], env)
    seed = json.loads(seed_file.read_text())
    assert (len(seed["user_ids"]), len(seed["post_ids"]), len(seed["tokens"])) == (10, bench.SEED_POSTS, 10)
    instructions.run_python(["--child", "create-post", "5"], env)
    assert db.scalar("SELECT count(*) FROM posts") == bench.SEED_POSTS + instructions.WARMUP + 5
