"""gateway/nginx.conf, proven with Debian's real nginx in front of two real gateway processes.

The production file is rendered with only these substitutions (``scripts/nginx.py``, which
``make bench --topology seed`` uses too): the two upstream servers (``gateway-1:8080`` /
``gateway-2:8080`` → two local granian gateways), the listen address, and the ``/tmp`` paths (→ a
private folder). Everything else (balancing, keepalive, timeouts, body limit, failover, headers,
error pages) runs exactly as shipped.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import json
import os
import shutil
import signal
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway import embedded
from minitwitter.config import REPO_ROOT
from scripts import nginx as nginx_tool
from scripts.nginx import NGINX_CONF, Nginx
from scripts.procfs import process_tree
from tests.conftest import eventually

ECHO_HANDLER = REPO_ROOT / "tests" / "fixtures" / "functions" / "echo"
SLEEPY_HANDLER = REPO_ROOT / "tests" / "fixtures" / "functions" / "sleepy"
#: The product's functions the micro-cache tests call through nginx.
PRODUCT_FUNCTIONS = ("register", "login", "create-post", "list-posts")
#: nginx's client_max_body_size in nginx.conf (1m).
NGINX_BODY_LIMIT = 1024 * 1024
#: The address the test client connects from: a loopback address that is NOT a trusted proxy.
CLIENT_ADDR = "127.0.0.2"

WHOAMI_HANDLER = '''"""Test function: the caller's address as minitwitter.http.client_ip sees it."""

import flask
from minitwitter.http import client_ip, endpoint, read_body, respond


@endpoint("whoami", ["GET", "POST"])
def handle(request: flask.Request) -> flask.Response:
    body = read_body(request)  # 413 (JSON) over MAX_BODY_BYTES
    return respond(200, {"client_ip": client_ip(request), "peer": request.remote_addr,
                         "forwarded_for": request.headers.get("X-Forwarded-For"),
                         "body_bytes": len(body)})
'''

pytestmark = pytest.mark.slow


@pytest.fixture
def nginx_dir() -> Iterator[Path]:
    # Not pytest's tmp_path: nginx's workers run as "nobody" when the test runs as root, and they
    # must be able to reach the temp folders.
    path = nginx_tool.private_dir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def start_nginx(nginx_dir: Path) -> Iterator[Any]:
    """Factory: run nginx in the foreground in front of two upstream addresses."""
    running: list[Nginx] = []

    def start(upstreams: tuple[str, str]) -> Nginx:
        port = embedded.free_port()
        conf = nginx_tool.render_conf(NGINX_CONF.read_text(), upstreams, f"127.0.0.1:{port}", nginx_dir)
        try:
            server = nginx_tool.start(conf, nginx_dir, port, nginx_dir / "nginx.out")
        except RuntimeError as exc:  # nginx missing or the config rejected: fail, never skip
            pytest.fail(str(exc))
        running.append(server)
        return server

    yield start
    nginx_tool.stop(running)  # graceful (SIGQUIT)


@pytest.fixture
def stack_file(tmp_path: Path) -> Path:
    """A stack with the fixture ``echo`` function and a ``whoami`` function (client_ip)."""
    whoami = tmp_path / "functions" / "whoami"
    whoami.mkdir(parents=True)
    (whoami / "handler.py").write_text(WHOAMI_HANDLER)
    stack = tmp_path / "stack.yml"
    stack.write_text(
        "version: 1.0\nprovider:\n  name: openfaas\n  gateway: http://127.0.0.1:8080\n"
        "functions:\n"
        f"  echo:\n    lang: python3-ff\n    handler: {ECHO_HANDLER}\n    image: test/echo:latest\n"
        f"  sleepy:\n    lang: python3-ff\n    handler: {SLEEPY_HANDLER}\n    image: test/sleepy:latest\n"
        f"  whoami:\n    lang: python3-ff\n    handler: ./functions/whoami\n    image: test/whoami:latest\n"
        + "".join(f"  {name}:\n    lang: python3-ff\n    handler: {REPO_ROOT / 'functions' / name}\n"
                  f"    image: test/{name}:latest\n" for name in PRODUCT_FUNCTIONS))
    return stack


@pytest.fixture
def cluster(start_gateway: Any, start_nginx: Any, stack_file: Path) -> tuple[Nginx, list[Any]]:
    """nginx in front of two gateway replicas that trust only 127.0.0.1 (nginx) as a proxy, and
    name themselves in X-Gateway-Instance (opted in: off by default)."""
    env = {"STACK_FILE": str(stack_file), "TRUSTED_PROXIES": "127.0.0.1/32", "GATEWAY_WORKERS": "1",
           "GATEWAY_IDENTITY_HEADERS": "true"}
    gateways = [start_gateway(**env), start_gateway(**env)]
    nginx = start_nginx(tuple(f"127.0.0.1:{gw.port}" for gw in gateways))
    return nginx, gateways


def instances(gateways: list[Any]) -> list[str]:
    """The X-Gateway-Instance value of each replica (asked directly)."""
    return [httpx.get(gw.url + "/healthz", timeout=30.0).headers["X-Gateway-Instance"] for gw in gateways]


def client(nginx: Nginx) -> httpx.Client:
    transport = httpx.HTTPTransport(local_address=CLIENT_ADDR)
    return httpx.Client(base_url=nginx.url, transport=transport, timeout=30.0)


def kill_tree(pid: int) -> None:
    """SIGKILL a process and its children: a replica crashing, not shutting down politely."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            children.append(int(stat.parent.name))
    for victim in [pid, *children]:
        try:
            os.kill(victim, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_round_robin_alternates_between_replicas(cluster: tuple[Nginx, list[Any]]) -> None:
    nginx, gateways = cluster
    ids = instances(gateways)
    assert ids[0] != ids[1]
    with client(nginx) as http:  # one keepalive connection: one nginx worker, one round-robin
        seen = []
        for _ in range(20):
            # signed in: an anonymous GET would come from the micro-cache
            response = http.get("/function/echo", headers={"Authorization": "Bearer round-robin"})
            assert response.status_code == 200, response.text
            seen.append(response.headers["X-Gateway-Instance"])
    assert set(seen) == set(ids)
    assert all(a != b for a, b in itertools.pairwise(seen)), seen
    assert Counter(seen) == {ids[0]: 10, ids[1]: 10}


def test_health_and_metrics_locations(cluster: tuple[Nginx, list[Any]]) -> None:
    nginx, _ = cluster
    with client(nginx) as http:
        own = http.get("/nginx-health")
        assert own.status_code == 200 and own.json() == {"status": "ok"}
        assert "X-Gateway-Instance" not in own.headers
        proxied = http.get("/healthz")
        assert proxied.status_code == 200 and proxied.json()["checks"] == {"postgres": "ok", "redis": "ok"}
        assert "X-Gateway-Instance" in proxied.headers
        blocked = http.get("/metrics")
        assert blocked.status_code == 404 and blocked.json()["error"] == "not found"


@pytest.mark.parametrize("how", ["stop", "crash"])
def test_killing_a_replica_loses_no_request(cluster: tuple[Nginx, list[Any]], how: str) -> None:
    """A replica stopped (SIGTERM, ``docker stop``) or crashing (SIGKILL, ``docker kill``) in the
    middle of a request loop: nginx retries on the other replica, nothing is lost.

    The one thing no proxy can retry is a response the dying replica had already started to send
    (headers out, body cut by the crash): on a crash, only those may fail, and at most one per
    client connection in flight at that instant.
    """
    nginx, gateways = cluster
    ids = instances(gateways)
    victim = gateways[1]
    total, threads = 240, 4
    done = Counter[str]()
    lock = threading.Lock()
    failures: list[tuple[str, BaseException | int]] = []
    killed = threading.Event()
    after_kill: list[str] = []

    def kill() -> None:
        assert victim.proc is not None
        if how == "stop":
            victim.proc.send_signal(signal.SIGTERM)  # granian drains, then exits
        else:
            kill_tree(victim.proc.pid)
        killed.set()

    def run(worker: int) -> None:
        with client(nginx) as http:
            for i in range(total // threads):
                try:
                    response = http.get("/function/echo", params={"n": f"{worker}-{i}"})
                except httpx.HTTPError as exc:
                    failures.append((f"{worker}-{i}", exc))
                    continue
                if response.status_code != 200:
                    failures.append((f"{worker}-{i}", response.status_code))
                    continue
                with lock:
                    done[response.headers["X-Gateway-Instance"]] += 1
                    count = sum(done.values())
                    if killed.is_set():
                        after_kill.append(response.headers["X-Gateway-Instance"])
                if count == total // 3 and not killed.is_set():
                    kill()

    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        list(pool.map(run, range(threads)))
    elapsed = time.monotonic() - started
    assert killed.is_set()
    if how == "stop":
        assert failures == []
        assert victim.proc is not None and victim.proc.wait(30) == 0
    else:
        assert len(failures) <= threads, failures
        for _, error in failures:  # only bodies cut mid-response, never a refused or 5xx request
            assert isinstance(error, httpx.RemoteProtocolError), failures
            assert "without sending complete message body" in str(error), failures
    assert sum(done.values()) + len(failures) == total
    assert done[ids[0]] > 0 and done[ids[1]] > 0
    # Once nginx noticed, only the survivor answers.
    assert after_kill[-20:] == [ids[0]] * 20
    assert elapsed < 60, f"{total} requests took {elapsed:.1f}s"
    # The access log (JSON lines) shows the failover: requests that tried both replicas.
    entries = [json.loads(line) for line in nginx.output().splitlines() if line.startswith("{")]
    retried = [e for e in entries if ", " in e["upstream"]]
    assert retried and all(e["status"] == 200 for e in retried), retried[:3]


def test_oversized_body_gets_413_from_nginx(cluster: tuple[Nginx, list[Any]]) -> None:
    nginx, _ = cluster
    with client(nginx) as http:
        too_big = http.post("/function/echo", content=b"x" * (NGINX_BODY_LIMIT + 1),
                            headers={"Content-Type": "text/plain"})
        assert too_big.status_code == 413
        assert too_big.headers["Content-Type"] == "application/json"
        assert too_big.json() == {"error": "request body too large", "details": {"max_bytes": NGINX_BODY_LIMIT}}
        assert "X-Gateway-Instance" not in too_big.headers  # no replica saw it
        # Under nginx's limit but over the function's MAX_BODY_BYTES: the function's own 413.
        over_function = http.post("/function/whoami", content=b"x" * (200 * 1024),
                                  headers={"Content-Type": "text/plain"})
        assert over_function.status_code == 413  # a replica's limit, not nginx's
        assert over_function.json() == {"error": "request body too large", "details": {"max_bytes": 64 * 1024}}
        fits = http.post("/function/whoami", content=b"x" * (64 * 1024), headers={"Content-Type": "text/plain"})
        assert fits.status_code == 200 and fits.json()["body_bytes"] == 64 * 1024


def test_forwarded_for_reaches_functions_as_client_ip_expects(cluster: tuple[Nginx, list[Any]]) -> None:
    nginx, gateways = cluster
    with client(nginx) as http:
        echoed = http.get("/function/echo").json()
        assert echoed["forwarded_for"] == CLIENT_ADDR  # nginx appended the client's address
        seen = http.get("/function/whoami").json()
        assert seen == {"client_ip": CLIENT_ADDR, "peer": "127.0.0.1", "forwarded_for": CLIENT_ADDR,
                        "body_bytes": 0}
        # A client forging X-Forwarded-For: nginx appends the real address, and client_ip walks
        # the chain from the right, stopping at the first address that is not a trusted proxy.
        forged = http.get("/function/whoami?forged", headers={"X-Forwarded-For": "203.0.113.9"}).json()
        assert forged["forwarded_for"] == f"203.0.113.9, {CLIENT_ADDR}"
        assert forged["client_ip"] == CLIENT_ADDR
    # Without nginx in the way, the same forged header from an untrusted peer is ignored too.
    direct = httpx.Client(transport=httpx.HTTPTransport(local_address=CLIENT_ADDR), timeout=30.0)
    with direct:
        seen = direct.get(gateways[0].url + "/function/whoami",
                          headers={"X-Forwarded-For": "203.0.113.9"}).json()
    assert seen["peer"] == CLIENT_ADDR and seen["client_ip"] == CLIENT_ADDR


@pytest.mark.no_stores
def test_all_replicas_down_gives_json_503(start_nginx: Any) -> None:
    dead = (f"127.0.0.1:{embedded.free_port()}", f"127.0.0.1:{embedded.free_port()}")
    nginx = start_nginx(dead)
    response = httpx.get(nginx.url + "/function/echo", timeout=30.0)
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "5"
    assert response.json() == {"error": "no gateway replica is available", "details": {}}


@pytest.mark.no_stores
def test_one_worker_process_serves_everything(start_nginx: Any) -> None:
    """compose gives nginx half a core: nginx.conf runs one worker (not one per host core),
    with the connections two workers had."""
    dead = (f"127.0.0.1:{embedded.free_port()}", f"127.0.0.1:{embedded.free_port()}")
    nginx = start_nginx(dead)
    titles = [Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
              for pid in process_tree(nginx.proc.pid)]
    assert titles.count("nginx: worker process") == 1, titles
    conf = NGINX_CONF.read_text()
    assert "worker_processes 1;" in conf and "worker_connections 8192;" in conf


def test_slow_clients_end_at_nginx_and_never_reach_a_gateway(cluster: tuple[Nginx, list[Any]]) -> None:
    """nginx reads a whole body before proxying it (proxy_request_buffering) and gives a client
    10 s between two reads: it closes stalled uploads (logging a 408), the replicas never see them."""
    nginx, gateways = cluster
    port = int(nginx.url.rsplit(":", 1)[1])
    stalled = []
    for _ in range(50):
        sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        sock.sendall(b"POST /function/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n" + b"x" * 10)
        stalled.append(sock)
    try:
        with client(nginx) as http:
            assert http.post("/function/echo", content=b"{}").status_code == 200
        for sock in stalled:
            assert sock.recv(65536) == b""  # closed after client_body_timeout, nothing sent
        assert '"status":408' in nginx.output()
    finally:
        for sock in stalled:
            sock.close()
    for gw in gateways:
        assert 'gateway_requests_refused_total{reason="read_timeout"} 0.0' in httpx.get(gw.url + "/metrics").text



# --- the micro-cache of anonymous reads ---------------------------------------------------------

def test_anonymous_reads_are_cached_for_a_second_and_signed_in_ones_never(cluster: tuple[Nginx, list[Any]]) -> None:
    """echo answers with the call id of each request: equal bodies mean one upstream call."""
    nginx, _ = cluster
    with client(nginx) as http:
        first, second = http.get("/function/echo/page"), http.get("/function/echo/page")
        assert (first.headers["X-Cache-Status"], second.headers["X-Cache-Status"]) == ("MISS", "HIT")
        assert second.json()["call_id"] == first.json()["call_id"]  # served from the cache
        assert second.headers["X-Call-Id"] == first.headers["X-Call-Id"]
        other = http.get("/function/echo/page?x=1")  # another URL, another entry
        assert other.headers["X-Cache-Status"] == "MISS"
        signed = [http.get("/function/echo/page", headers={"Authorization": "Bearer t"}) for _ in range(2)]
        assert [r.headers["X-Cache-Status"] for r in signed] == ["BYPASS", "BYPASS"]
        assert len({r.json()["call_id"] for r in signed} | {first.json()["call_id"]}) == 3
        posted = [http.post("/function/echo/page", content=b"{}") for _ in range(2)]
        assert posted[0].json()["call_id"] != posted[1].json()["call_id"]  # writes never cached
        failing = [http.get("/function/echo/err?status=404") for _ in range(2)]
        assert failing[0].json()["call_id"] != failing[1].json()["call_id"]  # only 200s are kept
        time.sleep(2.1)  # nginx counts validity in whole seconds: "1 s" ends within 2 s
        noticed = http.get("/function/echo/page")  # expired: its first reader gets a new page
        assert noticed.headers["X-Cache-Status"] == "EXPIRED"
        assert noticed.json()["call_id"] != first.json()["call_id"]
        again = http.get("/function/echo/page")
        assert again.headers["X-Cache-Status"] == "HIT" and again.json()["call_id"] == noticed.json()["call_id"]
    assert '"cache":"HIT"' in nginx.output()  # hits are in nginx's access log


def test_readers_of_a_page_idle_past_its_second_wait_only_for_the_one_refreshing_it(
        cluster: tuple[Nginx, list[Any]]) -> None:
    """A page read, then left alone for 11 s (past its 1-2 s, and past the 10 s after which
    nginx.conf used to drop an unused entry), then read by several callers at once: the first
    asks a replica and gets the new page (EXPIRED); the others, arriving while it waits, get the
    stored page at once (UPDATING). Had the entry been dropped, they would queue behind the
    cache lock (MISS, then HITs), which nginx re-checks only every 500 ms. ``sleepy`` answers
    after 1 s, so the refresh is still in flight when the others arrive."""
    nginx, _ = cluster
    url = "/function/sleepy?seconds=1"

    def read() -> httpx.Response:
        with client(nginx) as http:
            return http.get(url)

    stored = read()
    assert stored.status_code == 200 and stored.headers["X-Cache-Status"] == "MISS"
    time.sleep(11)
    with concurrent.futures.ThreadPoolExecutor(max_workers=6) as pool:
        refreshing = pool.submit(read)
        time.sleep(0.3)  # the refresh is in flight: the replica sleeps 1 s
        others = [pool.submit(read) for _ in range(5)]
        refreshed, served = refreshing.result(), [f.result() for f in others]
    assert refreshed.headers["X-Cache-Status"] == "EXPIRED"
    assert refreshed.headers["X-Call-Id"] != stored.headers["X-Call-Id"]  # a new page
    assert [r.headers["X-Cache-Status"] for r in served] == ["UPDATING"] * 5
    assert {r.headers["X-Call-Id"] for r in served} == {stored.headers["X-Call-Id"]}  # the stored one
    assert all(r.status_code == 200 and r.json() == {"slept": 1.0} for r in [refreshed, *served])


def test_a_writer_reads_its_own_write_at_once_and_anonymous_readers_within_two_seconds(
        cluster: tuple[Nginx, list[Any]]) -> None:
    nginx, _ = cluster
    with client(nginx) as http:
        creds = {"username": "writer", "password": "correct horse battery"}
        assert http.post("/function/register", json=creds).status_code == 201
        auth = {"Authorization": "Bearer " + http.post("/function/login", json=creds).json()["access_token"]}
        assert http.get("/function/list-posts").json() == []  # an anonymous reader fills the cache
        assert http.get("/function/list-posts").headers["X-Cache-Status"] == "HIT"
        post = http.post("/function/create-post", json={"content": "fresh news"}, headers=auth).json()
        mine = http.get("/function/list-posts", headers=auth)
        assert mine.headers["X-Cache-Status"] == "BYPASS" and [p["id"] for p in mine.json()] == [post["id"]]
        stale = http.get("/function/list-posts")  # anonymous: the cached page, at most ~2 s old
        assert stale.headers["X-Cache-Status"] == "HIT" and stale.json() == []
        eventually(lambda: [p["id"] for p in http.get("/function/list-posts").json()] == [post["id"]],
                   timeout=3, interval=0.2)
