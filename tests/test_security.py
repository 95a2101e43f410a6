"""Issue 20's guarantees, each proven here (the README's Security section lists them).

In-process tests call the functions as the runtime does (tests/api.py); the ones marked slow
start a real gateway (granian) and, where the guarantee crosses the queue, real RQ workers.
"""

from __future__ import annotations

import io
import json
import math
import re
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from minitwitter import cache, db
from minitwitter.config import REPO_ROOT, Config, load_config, set_config
from tests.api import PASSWORD, Api
from tests.callback_receiver import Receiver
from tests.conftest import Gateway, at_once, base_env, eventually
from tests.test_accounts import assert_clean


def signed(config: Config, **claims: Any) -> str:
    """A token signed with the service's own key: only its claims are wrong."""
    now = int(time.time())
    base: dict[str, Any] = {"sub": "1", "tv": 0, "iat": now, "exp": now + 600, "iss": config.jwt_issuer}
    base.update(claims)
    return jwt.encode({k: v for k, v in base.items() if v is not None}, config.jwt_secret,
                      algorithm="HS256")


# --- through a real gateway and real queue-workers -----------------------------------------

#: A loopback address that is not a trusted proxy: the test client, as an outside client.
CLIENT_ADDR = "127.0.0.2"
FUNCTIONS = REPO_ROOT / "functions"
ECHO_HANDLER = REPO_ROOT / "tests" / "fixtures" / "functions" / "echo"
GATEWAY_ENV = {"GATEWAY_WORKERS": "1", "GATEWAY_THREADS": "3", "RATE_LIMIT_ENABLED": "true",
               "RATE_LIMIT_LOGIN": "2", "RATE_LIMIT_REGISTER": "2", "LOGIN_FAILURE_LIMIT": "1000",
               "GATEWAY_STATE_TTL": "0.2"}


@pytest.fixture(scope="module")
def gw(stores: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Any:
    """One gateway (1 process, 3 threads) for the module: the account functions and echo, rate
    limits on (login and register: 2 per minute per client)."""
    tmp = tmp_path_factory.mktemp("security-gw")
    stack = tmp / "stack.yml"
    functions = {name: FUNCTIONS / name for name in ("register", "login", "get-user", "create-post")}
    functions["echo"] = ECHO_HANDLER
    stack.write_text("version: 1.0\nprovider:\n  name: openfaas\n  gateway: http://127.0.0.1:8080\n"
                     "functions:\n" + "".join(
                         f"  {name}:\n    lang: python3-ff\n    handler: {path}\n    image: test/{name}:latest\n"
                         for name, path in functions.items()))
    set_config(load_config(base_env(stores)))
    db.run("DELETE FROM gateway_functions")
    gateway = Gateway(base_env(stores, STACK_FILE=str(stack), **GATEWAY_ENV), tmp / "gateway.log")
    gateway.start()
    yield gateway
    gateway.stop()


def outside(gw: Any) -> httpx.Client:
    """A client connecting from CLIENT_ADDR (not a trusted proxy)."""
    return httpx.Client(base_url=gw.url, transport=httpx.HTTPTransport(local_address=CLIENT_ADDR),
                        timeout=30.0)


def callbacks_of(receiver: Receiver, count: int, timeout: float = 30.0) -> list[dict[str, Any]]:
    """The first ``count`` callbacks the receiver got (waits for them)."""
    eventually(lambda: len(receiver.received) >= count, timeout=timeout)
    return receiver.received[:count]


def function_status(callback: dict[str, Any]) -> int:
    return int({k.lower(): v for k, v in callback["headers"].items()}["x-function-status"])


# --- 1. async invocations count against their client's own budgets --------------------------

@pytest.mark.slow
def test_a_client_at_429_stays_at_429_through_async_function(gw: Any, start_workers: Any) -> None:
    start_workers(GATEWAY_URL=gw.url, WORKER_COUNT="1")
    login = {"username": "alice", "password": "wrong password"}
    with outside(gw) as http, Receiver() as receiver:
        assert http.post("/function/register", json={"username": "alice", "password": PASSWORD}).status_code == 201
        assert [http.post("/function/login", json=login).status_code for _ in range(3)] == [401, 401, 429]
        # Through the queue, with and without a forged X-Forwarded-For: the worker's calls come
        # from 127.0.0.1, a trusted proxy, which used to make each of them a fresh client.
        spoofed = [{}, {"X-Forwarded-For": "203.0.113.7"}, {"X-Forwarded-For": "198.51.100.1, 127.0.0.1"},
                   {"X-Minitwitter-Client": "203.0.113.8 9999999999 " + "0" * 64}]
        for headers in spoofed:
            queued = http.post("/async-function/login", json=login,
                               headers={"X-Callback-Url": receiver.url, **headers})
            assert queued.status_code == 202
        results = callbacks_of(receiver, len(spoofed))
        assert [function_status(c) for c in results] == [429] * len(spoofed)
        assert all(json.loads(c["body"])["error"] == "rate limit exceeded" for c in results)
        # register's budget holds the same way
        assert http.post("/function/register", json={"username": "bob", "password": PASSWORD}).status_code == 201
        assert http.post("/async-function/register", json={"username": "carol", "password": PASSWORD},
                         headers={"X-Callback-Url": receiver.url,
                                  "X-Forwarded-For": "203.0.113.9"}).status_code == 202
        assert function_status(callbacks_of(receiver, len(spoofed) + 1)[-1]) == 429
    assert db.scalar("SELECT count(*) FROM users WHERE username = 'carol'") == 0
    # Another client's async call is its own: counted in its bucket, not refused.
    with httpx.Client(base_url=gw.url, transport=httpx.HTTPTransport(local_address="127.0.0.3"),
                      timeout=30.0) as other, Receiver() as receiver:
        assert other.post("/async-function/login", json=login,
                          headers={"X-Callback-Url": receiver.url}).status_code == 202
        assert function_status(callbacks_of(receiver, 1)[0]) == 401


@pytest.mark.no_stores
def test_the_carried_client_address_cannot_be_forged() -> None:
    from minitwitter import identity

    value = identity.sign("198.51.100.4", "call-1", "k" * 32)
    assert identity.verify(value, "call-1", "k" * 32) == "198.51.100.4"
    assert identity.verify(value, "call-2", "k" * 32) is None  # bound to its call
    assert identity.verify(value, "call-1", "x" * 32) is None  # another key
    assert identity.verify(value.replace("198.51.100.4", "198.51.100.5"), "call-1", "k" * 32) is None
    assert identity.verify(value, "call-1", "k" * 32, now=time.time() + identity.VALID_SECONDS + 1) is None
    assert identity.verify(value, "call-1", "") is None  # no key, no trust
    for junk in ("", "x", "1.2.3.4 5", "1.2.3.4 -5 ab", "not-an-ip 9999999999 ab"):
        assert identity.verify(junk, "call-1", "k" * 32) is None
    environ = {identity.ENVIRON_HEADER: value, identity.ENVIRON_KEY: "10.0.0.1"}
    identity.accept(environ, "call-2", "k" * 32)
    assert environ == {}  # a header that does not verify is dropped, with anything claimed before



# --- 2. failed logins per account ----------------------------------------------------------

@pytest.fixture
def failures(config: Config) -> Any:
    """Rate limits on, generous per-IP budgets, ``failures(limit, window)`` failed logins allowed."""

    def apply(limit: int = 5, window: int = 900) -> Config:
        cfg = config.with_overrides(rate_limit_enabled=True, rate_limit_login=1000, rate_limit_ip=1000,
                                    login_failure_limit=limit, login_failure_window=window)
        set_config(cfg)
        return cfg

    return apply


def guess(api: Api, name: str, ip: str, password: str = "wrong password") -> Any:
    return api.call("login", "POST", json={"username": name, "password": password}, remote_addr=ip)


def argon2_verifications(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record every argon2 verification (the work a login does per guess)."""
    from minitwitter import auth

    seen: list[str] = []
    hasher = auth._hasher

    class Recording:
        def verify(self, hash_: str, password: str) -> bool:
            seen.append(password)
            return hasher.verify(hash_, password)

        def hash(self, password: str) -> str:
            return hasher.hash(password)

    monkeypatch.setattr(auth, "_hasher", Recording())
    return seen


def test_failed_logins_from_rotating_addresses_are_limited_per_account(
        api: Api, failures: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    api.account("alice")
    failures(limit=5, window=900)
    checked = argon2_verifications(monkeypatch)
    statuses = [guess(api, "alice", f"198.51.100.{i}").status_code for i in range(60)]
    assert statuses == [401] * 5 + [429] * 55
    assert len(checked) == 5  # refused attempts are not even checked
    refused = guess(api, "alice", "203.0.113.1", PASSWORD)  # even the right password waits
    assert refused.status_code == 429
    assert 1 <= int(refused.headers["Retry-After"]) <= 900
    assert refused.json == {"error": "rate limit exceeded",
                            "details": {"retry_after": int(refused.headers["Retry-After"])}}
    # other accounts are untouched
    api.register("bob")
    assert guess(api, "bob", "198.51.100.1", PASSWORD).status_code == 200


def test_parallel_guesses_cannot_slip_past_the_limit(api: Api, failures: Any) -> None:
    api.account("alice")
    failures(limit=3)
    statuses = at_once(lambda: guess(api, "alice", "198.51.100.7").status_code, 12)
    assert sorted(statuses) == [401] * 3 + [429] * 9


def test_unknown_usernames_are_answered_the_same_way_after_the_same_work(
        api: Api, failures: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    api.account("alice")
    failures(limit=2)
    checked = argon2_verifications(monkeypatch)

    def shape(response: Any) -> tuple[Any, ...]:
        """Everything but the call id and the seconds left (the clock moves between calls)."""
        headers = {k: v for k, v in response.headers.items() if k not in ("X-Call-Id", "Retry-After")}
        body = response.json
        body["details"].pop("retry_after", None)
        return response.status_code, body, headers

    known = [shape(guess(api, "alice", "198.51.100.1")) for _ in range(4)]
    known_checks = len(checked)
    unknown = [shape(guess(api, "nobody", "198.51.100.2")) for _ in range(4)]
    assert [s for s, _, _ in known] == [401, 401, 429, 429]
    assert unknown == known
    assert len(checked) - known_checks == known_checks == 2


def test_the_owner_is_never_locked_out_for_longer_than_the_window(
        api: Api, failures: Any) -> None:
    """The refusal ends with the window; and from an address the owner logged in from before,
    the owner gets in even while the account is under attack."""
    api.account("alice")  # logged in once from 127.0.0.1
    failures(limit=2, window=3)
    assert guess(api, "alice", "127.0.0.1", PASSWORD).status_code == 200  # a known address now
    while int(time.time()) % 3:  # start at a window's beginning: the refusals below share it
        time.sleep(0.05)
    statuses = [guess(api, "alice", f"198.51.100.{i}").status_code for i in range(4)]
    assert statuses == [401, 401, 429, 429]
    assert guess(api, "alice", "198.51.100.9", PASSWORD).status_code == 429
    assert guess(api, "alice", "127.0.0.1", PASSWORD).status_code == 200  # known address
    time.sleep(3 - time.time() % 3 + 0.05)  # the window is over
    assert guess(api, "alice", "198.51.100.9", PASSWORD).status_code == 200


def test_a_successful_login_gives_its_place_back(api: Api, failures: Any) -> None:
    api.account("alice")
    failures(limit=2)
    for _ in range(5):
        assert guess(api, "alice", "198.51.100.1", PASSWORD).status_code == 200
    assert [guess(api, "alice", "198.51.100.2").status_code for _ in range(3)] == [401, 401, 429]


# --- 3. /system/* basic auth: failed attempts limited per client address ------------------------

@pytest.mark.slow
def test_system_basic_auth_guesses_are_limited_per_client(gw: Any) -> None:
    """RATE_LIMIT_LOGIN (2 here) failed attempts per client address and window, as login."""
    user, password = gw.auth()
    with outside(gw) as http:
        statuses = [http.get("/system/functions", auth=(user, f"guess-{i}"),
                             headers={"X-Forwarded-For": f"203.0.113.{i}"}).status_code for i in range(20)]
        assert statuses == [401, 401] + [429] * 18
        refused = http.get("/system/functions", auth=(user, password))  # unchecked until the window ends
        assert refused.status_code == 429 and 1 <= int(refused.headers["Retry-After"]) <= 60
        assert refused.json() == {"error": "rate limit exceeded",
                                  "details": {"retry_after": int(refused.headers["Retry-After"])}}
        assert http.get("/function/echo").status_code == 200  # the functions are not affected
    with httpx.Client(base_url=gw.url, transport=httpx.HTTPTransport(local_address="127.0.0.3")) as other:
        # another client, and successes, which give their place back
        assert [other.get("/system/info", auth=(user, password)).status_code for _ in range(5)] == [200] * 5
        assert other.get("/system/info", auth=(user, "wrong")).status_code == 401
        assert other.get("/system/info").status_code == 401  # no credentials: not a guess
        assert other.get("/system/info", auth=(user, password)).status_code == 200


# --- 4. malformed or out-of-range claims of a validly signed token: 401 ----------------------

@pytest.mark.parametrize("claims", [
    {"sub": "1" * 40},                      # beyond bigint: reached PostgreSQL (500)
    {"sub": "9223372036854775808"},         # 2**63
    {"sub": "0"}, {"sub": "-1"}, {"sub": " 1"}, {"sub": "1.0"}, {"sub": "\u0661"},  # Arabic-Indic 1
    {"sub": ""}, {"sub": "1e3"},
    {"tv": "0"}, {"tv": True}, {"tv": 10**40}, {"tv": [0]}, {"tv": None},
    {"exp": math.nan}, {"exp": math.inf}, {"exp": 10**40},
    {"iat": "yesterday"}, {"iat": math.nan}, {"iat": math.inf}, {"iat": True},
    {"iat": int(time.time()) - 7200},      # a lifetime longer than any token issued here
])
def test_malformed_or_out_of_range_claims_are_401(api: Api, config: Config, claims: dict[str, Any]) -> None:
    api.account("alice")
    token = signed(config, **claims)
    for function, method, path in (("get-user", "GET", "/me"), ("get-user", "GET", "/alice"),
                                   ("create-post", "POST", "/")):
        response = api.call(function, method, path, token=token, json={"content": "x"})
        assert response.status_code == 401, (claims, function, response.get_data(as_text=True))
        assert set(response.json) == {"error", "details"}
        assert_clean(response)


# --- 5. each header once, the gateway's value winning ------------------------------------------

def repeated(raw: list[tuple[Any, Any]]) -> list[str]:
    """Header names (any case) that occur more than once in a raw header list."""
    names = Counter((k.decode() if isinstance(k, bytes) else k).lower() for k, _ in raw)
    return sorted(name for name, count in names.items() if count > 1)


@pytest.mark.slow
def test_sync_responses_carry_each_header_once(gw: Any) -> None:
    with httpx.Client(base_url=gw.url, timeout=30.0) as http:
        assert http.post("/function/register", json={"username": "alice", "password": PASSWORD}).status_code == 201
        responses = [http.get("/function/get-user/alice"),  # an endpoint: it sets X-Call-Id too
                     http.get("/function/get-user/alice", headers={"X-Call-Id": "mine"}),
                     http.get("/function/get-user/nobody"),
                     http.get("/function/nope"),
                     http.get("/function/echo")]
        for response in responses:
            assert repeated(response.headers.raw) == [], (response.request.url, response.headers.raw)
            assert len(response.headers.get_list("X-Call-Id")) == 1
        assert responses[1].headers["X-Call-Id"] == "mine"
        # A function's own values of the gateway's headers give way to the gateway's.
        forged = http.get("/function/echo", params=[("set_header", "X-Call-Id:forged"),
                                                    ("set_header", "x-duration-seconds:999"),
                                                    ("set_header", "X-Start-Time:1")])
    assert repeated(forged.headers.raw) == []
    assert forged.headers["X-Call-Id"] == forged.json()["call_id"] != "forged"
    assert forged.headers["X-Start-Time"] == forged.json()["start_time"] != "1"
    assert float(forged.headers["X-Duration-Seconds"]) < 999


@pytest.mark.slow
def test_async_callbacks_carry_each_header_once(gw: Any, start_workers: Any) -> None:
    start_workers(GATEWAY_URL=gw.url, WORKER_COUNT="1")
    with Receiver() as receiver:
        plain = httpx.post(f"{gw.url}/async-function/echo", content=b"x",
                           headers={"X-Callback-Url": receiver.url})
        forged = httpx.post(f"{gw.url}/async-function/echo?status=404&set_header=Content-Type:text/plain"
                            "&set_header=X-Function-Status:200&set_header=x-call-id:forged",
                            content=b"x", headers={"X-Callback-Url": receiver.url})
        received = {c["headers"]["X-Call-Id"]: c for c in callbacks_of(receiver, 2)}
    for queued in (plain, forged):
        callback = received[queued.headers["X-Call-Id"]]
        assert repeated(callback["raw_headers"]) == [], callback["raw_headers"]
    got = {k.lower(): v for k, v in received[forged.headers["X-Call-Id"]]["raw_headers"]}
    assert got["content-type"] == "text/plain"  # the function's: it describes the body
    assert got["x-function-status"] == "404"  # the worker's
    assert float(got["x-duration-seconds"]) >= 0


# --- 6. /system/logs?follow=true streams new lines until the client goes away -------------------

class Follower:
    """A real streaming HTTP client of ``/system/logs?follow=true`` reading on its own thread."""

    def __init__(self, gw: Any, **params: str) -> None:
        self.lines: list[dict[str, Any]] = []
        self.blank = 0
        self.client = httpx.Client(base_url=gw.url, auth=gw.auth(), timeout=30.0)
        self.stream = self.client.stream("GET", "/system/logs", params={"follow": "true", **params})
        self.response = self.stream.__enter__()
        self.ended = threading.Event()
        self.thread = threading.Thread(target=self.read, daemon=True)
        if self.response.status_code == 200:
            self.thread.start()

    def read(self) -> None:
        try:
            for line in self.response.iter_lines():
                if line:
                    self.lines.append(json.loads(line))
                else:
                    self.blank += 1
        except httpx.HTTPError:
            pass
        finally:
            self.ended.set()

    def texts(self) -> list[dict[str, Any]]:
        return [json.loads(line["text"]) for line in self.lines]

    def close(self) -> None:
        """Go away: close the connection mid-stream."""
        self.client.close()


def stream_end_reasons() -> list[str]:
    from minitwitter import logstore

    return [json.loads(line["text"])["reason"] for line in logstore.query(tail=100)
            if json.loads(line["text"])["message"] == "log stream ended"]


@pytest.mark.slow
def test_logs_follow_streams_new_lines_until_the_client_goes_away(gw: Any) -> None:
    with httpx.Client(base_url=gw.url, timeout=30.0) as http:
        http.get("/function/get-user/before", headers={"X-Call-Id": "before-the-stream"})
        first, second = Follower(gw, name="get-user"), Follower(gw, name="get-user")
        try:
            assert first.response.status_code == second.response.status_code == 200
            assert first.response.headers["content-type"].startswith("application/x-ndjson")
            eventually(lambda: "before-the-stream" in [t["call_id"] for t in first.texts()])
            for n in range(3):  # lines stored after the stream opened arrive on it, each once
                http.get(f"/function/get-user/u{n}", headers={"X-Call-Id": f"followed-{n}"})
            want = [f"followed-{n}" for n in range(3)]
            eventually(lambda: [c for c in (t["call_id"] for t in first.texts()) if c in want] == want)
            assert all(line["name"] == "get-user" for line in first.lines)
            # GATEWAY_THREADS=3: two streams at most, the third thread keeps serving requests
            third = Follower(gw, name="get-user")
            assert third.response.status_code == 503 and int(third.response.headers["Retry-After"]) > 0
            third.close()
            assert http.get("/function/echo").status_code == 200
            eventually(lambda: first.blank > 0, timeout=10)  # heartbeats while nothing happens
        finally:
            first.close()
        # The server noticed the client went away: the stream ended and its thread is free again.
        eventually(lambda: "client gone" in stream_end_reasons(), timeout=15)
        replacement = Follower(gw, name="get-user")
        try:
            assert replacement.response.status_code == 200
        finally:
            replacement.close()
            second.close()


def test_a_log_stream_ends_after_its_time_and_when_the_gateway_closes(config: Config) -> None:
    from gateway import logstream
    from minitwitter import logstore

    def store(message: str) -> None:
        logstore.store_lines([json.dumps({"level": "INFO", "logger": "t", "message": message, "function": "fn"})])

    def messages(chunks: list[bytes]) -> list[str]:
        return [json.loads(json.loads(line)["text"])["message"]
                for chunk in chunks for line in chunk.splitlines() if line]

    store("already there")
    released: list[int] = []
    stop = threading.Event()
    stream = logstream.follow({"name": "fn"}, tail=None, max_seconds=1.5, stop=stop,
                              release=lambda: released.append(1))
    started = time.monotonic()
    chunks = [next(stream)]
    store("stored meanwhile")
    chunks += list(stream)
    assert 1.5 <= time.monotonic() - started < 4 and released == [1]
    assert messages(chunks) == ["already there", "stored meanwhile"]

    stream = logstream.follow({"name": "fn"}, tail=0, max_seconds=60, stop=stop, release=lambda: released.append(2))
    assert next(stream) == b"\n"  # opened with nothing to show yet
    threading.Timer(0.3, stop.set).start()
    started = time.monotonic()
    assert list(stream) == [] and time.monotonic() - started < 2 and released == [1, 2]


# --- 7. callbacks the worker would refuse are refused at submission -------------------------

@pytest.mark.slow
@pytest.mark.parametrize("url, reason", [
    ("http://127.0.0.2:8000/hook", "address 127.0.0.2 is not allowed"),  # loopback, not allowed
    ("http://10.1.2.3/hook", "address 10.1.2.3 is not allowed"),
    ("http://192.168.0.1/hook", "address 192.168.0.1 is not allowed"),
    ("http://169.254.169.254/latest/meta-data", "address 169.254.169.254 is not allowed"),
    ("http://[fd00::1]/hook", "address fd00::1 is not allowed"),
    ("http://0.0.0.0/hook", "address 0.0.0.0 is not allowed"),
    ("http://127.0.0.1/" + "x" * 2048, "must be an http(s) URL of at most 2048 characters"),
    ("ftp://127.0.0.1/hook", "must be an absolute http or https URL"),
    ("javascript:alert(1)", "must be an absolute http or https URL"),
    ("http://user:secret@127.0.0.1/hook", "must not contain credentials"),
    ("http://127.0.0.1:99999/hook", "has an invalid port"),
])
def test_async_callback_the_worker_would_refuse_is_a_400_with_the_reason(gw: Any, url: str, reason: str) -> None:
    from rq import Queue

    response = httpx.post(f"{gw.url}/async-function/echo", content=b"x", headers={"X-Callback-Url": url})
    assert response.status_code == 400, response.text
    assert response.json() == {"error": "X-Callback-Url refused", "details": {"X-Callback-Url": [reason]}}
    assert len(Queue("faas-request", connection=cache.client())) == 0  # nothing was queued


@pytest.mark.slow
def test_an_allowed_callback_is_accepted(gw: Any) -> None:
    """127.0.0.1 is in CALLBACK_ALLOW_HOSTS here (tests/conftest.py's base_env)."""
    response = httpx.post(f"{gw.url}/async-function/echo", content=b"x",
                          headers={"X-Callback-Url": "http://127.0.0.1:9/hook"})
    assert response.status_code == 202


# --- 8. the contract: empty cursors are malformed -------------------------------------------

@pytest.mark.parametrize("param", ["max_id", "since_id", "min_id", "limit"])
@pytest.mark.parametrize("function, path", [("list-posts", "/"), ("home-timeline", "/"),
                                            ("list-comments", "/{post}")])
def test_empty_cursor_or_limit_is_400(api: Api, param: str, function: str, path: str) -> None:
    alice = api.account("alice")
    post = api.call("create-post", "POST", json={"content": "hello"}, token=alice.token).json
    response = api.call(function, "GET", path.format(post=post["id"]), query=f"{param}=",
                        token=alice.token)
    assert response.status_code == 400, response.get_data(as_text=True)
    assert response.json["error"] == "invalid pagination parameters"
    assert list(response.json["details"]) == [param]


# --- 8. /healthz and /metrics answer GET and HEAD only ---------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("path", ["/healthz", "/metrics"])
def test_health_and_metrics_refuse_other_methods_with_405(gw: Any, path: str) -> None:
    assert httpx.get(gw.url + path).status_code == 200
    head = httpx.head(gw.url + path)
    assert head.status_code == 200 and head.content == b""
    for method in ("POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE"):
        response = httpx.request(method, gw.url + path)
        assert response.status_code == 405, method
        assert response.headers["Allow"] == "GET, HEAD"
        assert response.json() == {"error": "method not allowed", "details": {"allowed": ["GET", "HEAD"]}}


# --- 9. log lines holding NUL are stored, nothing dropped -------------------------------------

def test_log_lines_with_nul_are_stored_with_every_field(config: Config) -> None:
    """PostgreSQL's text and jsonb cannot hold NUL (22P05): it was refusing the batch, then the
    line. Each field is stored, the NUL written as the six characters ``\\u0000``."""
    from minitwitter import logs, logstore
    from tests.test_logs import logger_for

    sink = logs.LogSink(io.StringIO(), capacity=100, store=logstore.store_batch)
    try:
        log = logger_for(sink)
        with logs.context(function="get-user\x00", call_id="call\x00id"):
            log.info("request\x00", extra={"path": "/\x00", "method": "GET", "status": 404,
                                           "literal": "\\u0000 stays as it was"})
            log.info("a line without NUL in the same batch")
        sink.flush()
    finally:
        sink.close()
    assert sink.dropped == 0
    rows = db.run("SELECT message, function, call_id, status, extra FROM logs ORDER BY id")
    assert rows == [
        ["request\\u0000", "get-user\\u0000", "call\\u0000id", 404,
         {"path": "/\\u0000", "method": "GET", "literal": "\\u0000 stays as it was"}],
        ["a line without NUL in the same batch", "get-user\\u0000", "call\\u0000id", None, None],
    ]


# --- 9, through the gateway: /function/get-user/%00 is logged ------------------------------------

@pytest.mark.slow
def test_a_request_for_a_nul_path_is_logged(gw: Any) -> None:
    response = httpx.get(f"{gw.url}/function/get-user/%00", headers={"X-Call-Id": "nul-path"})
    assert response.status_code == 404 and response.json()["error"] == "account not found"

    def stored() -> list[dict[str, Any]]:
        lines = httpx.get(f"{gw.url}/system/logs", params={"call_id": "nul-path"}, auth=gw.auth()).text
        return [json.loads(json.loads(line)["text"]) for line in lines.splitlines() if line]

    [line] = eventually(stored)
    assert line["path"] == "/\\u0000" and line["status"] == 404 and line["function"] == "get-user"


# --- 10. credentials are kept only while needed, never in job records ---------------------------

def redis_holding(*secrets: str) -> list[str]:
    """Keys of the test Redis whose values hold any of ``secrets``: plain, zlib-compressed (RQ's
    job data), and, for RQ jobs, in their decoded arguments with base64 strings decoded."""
    import base64
    import binascii
    import zlib

    from rq.exceptions import NoSuchJobError
    from rq.job import Job

    r = cache.client()

    def texts(value: Any) -> list[bytes]:
        if isinstance(value, (list, tuple)):
            return [t for v in value for t in texts(v)]
        if isinstance(value, dict):
            return [t for kv in value.items() for t in texts(kv)]
        raw = value if isinstance(value, bytes) else str(value).encode()
        found = [raw]
        try:
            found.append(zlib.decompress(raw))
        except zlib.error:
            pass
        try:
            found.append(base64.b64decode(raw, validate=True))
        except (binascii.Error, ValueError):
            pass
        return found

    holding = []
    for key in r.scan_iter(count=1000):
        kind = r.type(key)
        read = {b"string": ("GET",), b"hash": ("HGETALL",), b"list": ("LRANGE", 0, -1),
                b"set": ("SMEMBERS",), b"zset": ("ZRANGE", 0, -1)}.get(kind)
        found = texts(r.execute_command(read[0], key, *read[1:])) if read else []
        if key.startswith(b"rq:job:") and kind == b"hash":
            try:
                job = Job.fetch(key[len(b"rq:job:"):].decode(), connection=r)
            except NoSuchJobError:
                pass  # it finished between the scan and this read: what it held was read above
            else:
                found += texts([job.args, job.kwargs, job.meta])
        if any(secret.encode() in t for t in found for secret in secrets):
            holding.append(key.decode())
    return holding


@pytest.mark.slow
def test_async_credentials_are_kept_only_until_the_worker_takes_them(gw: Any, start_workers: Any) -> None:
    from rq import Queue

    with outside(gw) as http, Receiver() as receiver:
        assert http.post("/function/register", json={"username": "alice", "password": PASSWORD}).status_code == 201
        token = http.post("/function/login", json={"username": "alice", "password": PASSWORD}).json()["access_token"]
        post = http.post("/async-function/create-post", json={"content": "through the queue"},
                         headers={"X-Callback-Url": receiver.url, "Authorization": f"Bearer {token}",
                                  "Cookie": "session=cookie-secret"})
        login = http.post("/async-function/login", json={"username": "alice", "password": PASSWORD},
                          headers={"X-Callback-Url": receiver.url})
        assert post.status_code == login.status_code == 202
        # Queued: the job records hold none of it; the keys holding it expire with the jobs.
        job_keys = [f"rq:job:{job_id}" for job_id in Queue("faas-request", connection=cache.client()).job_ids]
        assert len(job_keys) == 2
        holding = redis_holding(token, "cookie-secret", PASSWORD)
        assert holding and not set(holding) & set(job_keys)
        assert all(0 < cache.client().ttl(key) <= 3600 for key in holding)
        start_workers(GATEWAY_URL=gw.url, WORKER_COUNT="1")
        answers = {c["headers"]["X-Call-Id"]: json.loads(c["body"]) for c in callbacks_of(receiver, 2)}
    assert answers[post.headers["X-Call-Id"]]["content"] == "through the queue"  # the token reached it
    issued = answers[login.headers["X-Call-Id"]]["access_token"]  # and the password
    eventually(lambda: not redis_holding(token, "cookie-secret", PASSWORD, issued))


@pytest.mark.slow
def test_failed_callback_jobs_keep_no_credentials(gw: Any, start_workers: Any) -> None:
    from rq.registry import FailedJobRegistry

    start_workers(GATEWAY_URL=gw.url, WORKER_COUNT="1", ASYNC_CALLBACK_ATTEMPTS="1")  # no retry to wait for
    with outside(gw) as http, Receiver(fail_first=100) as receiver:
        assert http.post("/function/register", json={"username": "alice", "password": PASSWORD}).status_code == 201
        assert http.post("/async-function/login", json={"username": "alice", "password": PASSWORD},
                         headers={"X-Callback-Url": receiver.url}).status_code == 202
        failed = FailedJobRegistry("callbacks", connection=cache.client())
        eventually(lambda: failed.count == 1, timeout=30)
        assert receiver.attempts == 1
    assert redis_holding(PASSWORD, "access_token") == []


# --- 11. the host and exact versions are named only when opted in -----------------------------

def identity_leaks(response: httpx.Response) -> list[str]:
    """Headers naming the answering host or an exact version (the HTTP server's ``Server:
    granian``, without a version, is its own)."""
    from gateway.app import VERSION

    host = socket.gethostname()
    return [f"{k}: {v}" for k, v in response.headers.multi_items()
            if k.lower() in ("x-gateway-instance", "x-served-by", "x-powered-by")
            or (k.lower() == "server" and any(c.isdigit() for c in v)) or VERSION in v or host in v]


@pytest.mark.slow
def test_host_and_versions_are_not_named_by_default(gw: Any, stores: dict[str, str], tmp_path: Any) -> None:
    def probe(url: str) -> list[httpx.Response]:
        return [httpx.get(f"{url}/function/echo"), httpx.get(f"{url}/function/echo.openfaas-fn/x"),
                httpx.post(f"{url}/async-function/echo", content=b"x"), httpx.get(f"{url}/healthz"),
                httpx.get(f"{url}/metrics"), httpx.get(f"{url}/system/info"), httpx.get(f"{url}/nothing"),
                httpx.get(f"{url}/function/nope")]

    for response in probe(gw.url):
        assert identity_leaks(response) == [], response.request.url
    opted_in = Gateway(base_env(stores, **{**gw.env, "GATEWAY_IDENTITY_HEADERS": "true"}),
                       tmp_path / "opted-in.log").start()
    try:
        answers = probe(opted_in.url)
    finally:
        opted_in.stop()
    assert all(r.headers["X-Gateway-Instance"] == f"{socket.gethostname()}:{opted_in.port}" for r in answers)
    assert answers[0].headers["X-Served-By"].startswith("openfaas-ce/")
    assert answers[2].headers["X-Served-By"].startswith("openfaas-ce/")


# --- 12. the sentiment evaluation CLI -------------------------------------------------------------

#: Texts a tweet benchmark holds: a leading '#', and characters str.splitlines() splits at.
AWKWARD = ["#blessed what a great day", "line\u2028separator, I love it", "next\x85line is bad",
           "form\x0cfeed, neutral enough", "a lone\rcarriage return, awful", "tab\tinside, good"]
LABELS = ["positive", "positive", "negative", "neutral", "negative", "positive"]


def evaluate(stores: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m minitwitter.sentiment.evaluate`` with the test stores configured (where an
    evaluation must write nothing)."""
    return subprocess.run([sys.executable, "-m", "minitwitter.sentiment.evaluate", *args],
                          capture_output=True, text=True, cwd=REPO_ROOT, timeout=120,
                          env=base_env(stores, SENTIMENT_BACKEND="vader"))


def per_item(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line]


@pytest.mark.parametrize("fmt", ["tsv", "jsonl"])
def test_evaluate_reads_every_item_of_an_explicit_format(stores: dict[str, str], tmp_path: Path, fmt: str) -> None:
    data = tmp_path / f"items.{fmt}"
    if fmt == "tsv":
        data.write_bytes(("text\tlabel\n" + "".join(f"{t}\t{label}\n" for t, label in zip(AWKWARD, LABELS, strict=True))
                          ).encode())
    else:
        data.write_bytes("".join(json.dumps({"text": t, "label": label}) + "\n"
                                 for t, label in zip(AWKWARD, LABELS, strict=True)).encode())
    out = tmp_path / "predictions.jsonl"
    result = evaluate(stores, str(data), "--backend", "vader", "--output", str(out))
    assert result.returncode == 0, result.stderr
    assert f"items: {len(AWKWARD)}  errors: 0" in result.stdout
    assert re.search(r"items/s: \d+\.\d", result.stdout)
    rows = per_item(out)
    assert [r["text"] for r in rows] == AWKWARD and [r["gold"] for r in rows] == LABELS
    assert all(r["predicted"] in ("positive", "neutral", "negative") and r["error"] is None for r in rows)


@pytest.mark.parametrize("content, fmt, message", [
    ("good\tpositive\n", "tsv", "items.tsv:1: expected the header row text<TAB>label"),
    ("text\tlabel\ngood\tpositive\n\nbad\tnegative\n", "tsv", "items.tsv:3: expected text<TAB>label"),
    ("text\tlabel\n# a comment?\n", "tsv", "items.tsv:2: expected text<TAB>label"),
    ("text\tlabel\ngood\tsplendid\n", "tsv", "items.tsv:2: unknown label 'splendid'"),
    ('{"text": "good", "label": "positive"}\n\n', "jsonl", "items.jsonl:2: not a JSON object"),
    ('{"text": "good"}\n', "jsonl", "items.jsonl:1: unknown label None"),
    ("good\tpositive\n", "txt", "say --format tsv or --format jsonl"),
])
def test_evaluate_refuses_a_malformed_file_naming_the_line(stores: dict[str, str], tmp_path: Path,
                                                           content: str, fmt: str, message: str) -> None:
    data = tmp_path / f"items.{fmt}"
    data.write_text(content)
    result = evaluate(stores, str(data))
    assert result.returncode == 2
    assert message in result.stderr and "accuracy" not in result.stdout


def test_evaluate_exits_with_the_reason_when_the_backend_is_unavailable(stores: dict[str, str]) -> None:
    from tests.fake_ollama import FakeOllama

    sample = REPO_ROOT / "shared" / "minitwitter" / "sentiment" / "data" / "sample.tsv"
    down = evaluate(stores, str(sample), "--backend", "ollama", "--host", "http://127.0.0.1:9")
    assert down.returncode == 2
    assert "the backend is unavailable: Ollama at http://127.0.0.1:9" in down.stderr
    assert "accuracy" not in down.stdout
    with FakeOllama() as fake:
        fake.mode = "error"  # it answers /api/tags, then fails every classification
        failing = evaluate(stores, str(sample), "--backend", "ollama", "--host", fake.url, "--limit", "3")
    assert failing.returncode == 1
    assert "errors: 3" in failing.stdout
    assert re.search(r"error: 3 item\(s\) not classified: .+", failing.stderr), failing.stderr


def test_an_evaluation_writes_nothing_to_the_applications_stores(stores: dict[str, str]) -> None:
    from tests.fake_ollama import FakeOllama

    sample = REPO_ROOT / "shared" / "minitwitter" / "sentiment" / "data" / "sample.tsv"
    logs_before = db.scalar("SELECT count(*) FROM logs")
    with FakeOllama() as fake:
        result = evaluate(stores, str(sample), "--backend", "ollama", "--host", fake.url)
        assert len(fake.chats) == 60  # every item was asked, none read from a cache
    assert result.returncode == 0, result.stderr
    assert cache.client().dbsize() == 0  # no verdict cache entries (the app's Redis)
    assert db.scalar("SELECT count(*) FROM logs") == logs_before
