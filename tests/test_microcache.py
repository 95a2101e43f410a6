"""The gateway's micro-cache of anonymous public reads (gateway/microcache.py), through a real
gateway: what is cached and for whom, how stale it may be, and what a hit still does (rate
limits, the log line, metrics)."""

from __future__ import annotations

import concurrent.futures
import time
from typing import Any

import httpx
import pytest

from gateway.microcache import STALE_FOR, MicroCache
from minitwitter import db
from minitwitter.config import REPO_ROOT
from tests.conftest import eventually

pytestmark = pytest.mark.slow

TTL = 1.0


@pytest.fixture
def gw(start_gateway: Any) -> Any:
    return start_gateway(GATEWAY_MICROCACHE_TTL=str(TTL), GATEWAY_WORKERS="1")


def account(http: httpx.Client, name: str) -> dict[str, str]:
    creds = {"username": name, "password": "correct horse battery"}
    assert http.post("/function/register", json=creds).status_code == 201
    return {"Authorization": "Bearer " + http.post("/function/login", json=creds).json()["access_token"]}


def test_anonymous_reads_are_answered_from_the_cache_for_the_ttl_and_signed_in_ones_never(gw: Any) -> None:
    with httpx.Client(base_url=gw.url, timeout=30) as http:
        writer = account(http, "writer")
        first = http.get("/function/list-posts")
        assert (first.status_code, first.headers["X-Cache-Status"], first.json()) == (200, "MISS", [])
        post = http.post("/function/create-post", json={"content": "fresh news"}, headers=writer).json()
        # The writer, signed in, reads its own write at once; it is never stored.
        mine = http.get("/function/list-posts", headers=writer)
        assert mine.headers["X-Cache-Status"] == "BYPASS" and [p["id"] for p in mine.json()] == [post["id"]]
        # An anonymous reader gets the stored page for up to the TTL...
        stale = http.get("/function/list-posts")
        assert stale.headers["X-Cache-Status"] == "HIT" and stale.json() == []
        # ...with a call of its own, not the filler's, and not the filler's rate-limit headers.
        assert stale.headers["X-Call-Id"] != first.headers["X-Call-Id"]
        assert "X-RateLimit-Remaining" not in stale.headers
        assert stale.headers.get_list("X-Call-Id") == [stale.headers["X-Call-Id"]]
        # ...and then the new page.
        time.sleep(TTL + 0.1)
        fresh = http.get("/function/list-posts")
        assert fresh.headers["X-Cache-Status"] == "MISS" and [p["id"] for p in fresh.json()] == [post["id"]]
        # Other URLs, errors and writes are never answered from it.
        assert http.get("/function/list-posts?limit=1").headers["X-Cache-Status"] == "MISS"
        missing = [http.get("/function/get-post/999999") for _ in range(2)]
        assert [m.status_code for m in missing] == [404, 404]
        assert [m.headers["X-Cache-Status"] for m in missing] == ["MISS", "MISS"]
        assert http.post("/function/create-post", json={"content": "x"}).status_code == 401


def test_a_hit_is_logged_and_counted_like_any_request(gw: Any) -> None:
    with httpx.Client(base_url=gw.url, timeout=30) as http:
        http.get("/function/list-posts")
        hit = http.get("/function/list-posts", headers={"X-Call-Id": "hit-call-1"})
        assert hit.headers["X-Cache-Status"] == "HIT" and hit.headers["X-Call-Id"] == "hit-call-1"
        user, password = gw.auth()
        lines = eventually(lambda: http.get("/system/logs", params={"call_id": "hit-call-1"},
                                            auth=(user, password)).text.splitlines(), timeout=10)
    assert len(lines) == 1
    row = db.one("SELECT function, status, message, extra FROM logs WHERE call_id = 'hit-call-1'")
    assert row[:3] == ["list-posts", 200, "request"] and row[3]["cache"] == "hit"
    metrics = httpx.get(gw.url + "/metrics").text
    assert 'minitwitter_cache_requests_total{cache="gateway_microcache",result="hit"}' in metrics
    assert 'gateway_function_invocation_total{code="200",function_name="list-posts.openfaas-fn"} 2.0' in metrics


def test_hits_count_against_the_clients_rate_limit(start_gateway: Any) -> None:
    """A client over its per-IP budget gets 429s, cached page or not. Hits are counted in
    batches (every 100 ms), so a batch's worth may pass beyond the budget first."""
    gw = start_gateway(GATEWAY_MICROCACHE_TTL="30", GATEWAY_WORKERS="1", RATE_LIMIT_ENABLED="true",
                       RATE_LIMIT_IP="40", RATE_LIMIT_WINDOW="3600")
    with httpx.Client(base_url=gw.url, timeout=30) as http:
        answers = []
        for _ in range(300):
            answers.append(http.get("/function/list-posts"))
            time.sleep(0.002)
    statuses = [a.status_code for a in answers]
    hits = [a for a in answers if a.headers.get("X-Cache-Status") == "HIT"]
    assert len(hits) >= 30, statuses
    first_refused = statuses.index(429)
    assert 40 <= first_refused < 40 + 100, statuses  # the budget, plus at most ~a batch
    assert set(statuses[first_refused:]) == {429}, statuses  # then refused for the window
    assert int(answers[-1].headers["Retry-After"]) > 0


def test_one_caller_per_page_reaches_the_function_the_others_wait_or_get_the_old_page(
        start_gateway: Any) -> None:
    """Concurrent anonymous readers of one URL: with nothing stored, one calls the function and
    the others wait for its answer; once it has expired, one refreshes it and the others get
    the expired page meanwhile (UPDATING). sleepy answers after ?seconds=."""
    gw = start_gateway(GATEWAY_MICROCACHE_TTL="1", GATEWAY_WORKERS="1", GATEWAY_THREADS="2",
                       STACK_FILE=str(REPO_ROOT / "tests" / "fixtures" / "stack.yml"))
    url = gw.url + "/function/sleepy?seconds=0.5"

    def calls() -> float:
        metrics = httpx.get(gw.url + "/metrics").text
        line = next((x for x in metrics.splitlines() if x.startswith(
            'gateway_function_invocation_started_total{function_name="sleepy.openfaas-fn"}')), None)
        return float(line.rsplit(" ", 1)[1]) if line else 0.0

    def together(n: int) -> list[httpx.Response]:
        with concurrent.futures.ThreadPoolExecutor(n) as pool:
            return list(pool.map(lambda _: httpx.get(url, timeout=30), range(n)))

    first = together(8)
    assert [r.status_code for r in first] == [200] * 8
    assert sorted(r.headers["X-Cache-Status"] for r in first) == ["HIT"] * 7 + ["MISS"]
    eventually(lambda: calls() == 1.0)  # one function call for eight readers
    time.sleep(1.2)  # expired
    second = together(8)
    assert sorted(r.headers["X-Cache-Status"] for r in second) == ["MISS"] + ["UPDATING"] * 7
    eventually(lambda: calls() == 2.0)


@pytest.mark.no_stores
def test_entries_expire_and_the_cache_stays_within_its_bounds() -> None:
    cache = MicroCache(ttl=1.0, max_entries=3, max_bytes=4000)
    headers = [("Content-Type", "application/json"), ("X-Call-Id", "c"), ("X-RateLimit-Remaining", "9")]
    cache.put("/a?", headers, b"a" * 500, now=0.0)
    entry = cache.get("/a?", now=0.5)
    assert entry is not None and entry.body == b"a" * 500
    assert entry.headers == [("Content-Type", "application/json")]  # per-request headers dropped
    stale = cache.get("/a?", now=1.5)  # expired: still there, to serve while it is refreshed
    assert stale is not None and stale.expires <= 1.5
    assert cache.get("/a?", now=1.0 + STALE_FOR) is None and cache.size == 0  # then gone
    for key in "bcde":
        cache.put(f"/{key}?", headers, b"x" * 900, now=2.0)
    assert [k for k in "bcde" if cache.get(f"/{k}?", now=2.1)] == ["c", "d", "e"]  # oldest out
    cache.put("/big?", headers, b"y" * 1001, now=2.0)  # over a quarter of the byte budget: not kept
    assert cache.get("/big?", now=2.1) is None and cache.size <= 4000
