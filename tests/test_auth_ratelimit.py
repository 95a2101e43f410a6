"""Tokens (forged, expired, revoked), rate limits per IP/account/scope, and Redis outages."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from gateway import embedded
from minitwitter import auth, cache, db
from minitwitter.config import Config, set_config
from tests.api import PASSWORD, Api
from tests.conftest import record_redis_writes
from tests.test_accounts import assert_clean


def claims(config: Config, **changes: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {"sub": "1", "tv": 0, "iat": now, "exp": now + 600, "iss": config.jwt_issuer}
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


def me(api: Api, token: str) -> Any:
    return api.call("get-user", "GET", "/me", token=token)


# --- tokens ---------------------------------------------------------------------------------

def test_valid_handmade_token_is_accepted(api: Api, config: Config) -> None:
    alice = api.account("alice")
    token = jwt.encode(claims(config, sub=alice.id), config.jwt_secret, algorithm="HS256")
    assert me(api, token).status_code == 200


@pytest.mark.parametrize(("case", "message"), [
    ("other_secret", "invalid token"),
    ("alg_none", "invalid token"),
    ("expired", "token expired"),
    ("wrong_issuer", "invalid token"),
    ("no_exp", "invalid token"),
    ("sub_not_int", "invalid token"),
    ("wrong_version", "token revoked"),
    ("no_version", "token revoked"),
    ("unknown_account", "token revoked"),
    ("tampered", "invalid token"),
])
def test_bad_tokens_are_401(api: Api, config: Config, case: str, message: str) -> None:
    alice = api.account("alice")
    secret = config.jwt_secret
    good = claims(config, sub=alice.id)
    token = {
        "other_secret": lambda: jwt.encode(good, "x" * 48, algorithm="HS256"),
        "alg_none": lambda: jwt.encode(good, None, algorithm="none"),
        "expired": lambda: jwt.encode(claims(config, sub=alice.id, iat=int(time.time()) - 7200,
                                             exp=int(time.time()) - 3600), secret, algorithm="HS256"),
        "wrong_issuer": lambda: jwt.encode({**good, "iss": "someone-else"}, secret, algorithm="HS256"),
        "no_exp": lambda: jwt.encode(claims(config, sub=alice.id, exp=None), secret, algorithm="HS256"),
        "sub_not_int": lambda: jwt.encode({**good, "sub": "alice"}, secret, algorithm="HS256"),
        "wrong_version": lambda: jwt.encode({**good, "tv": 7}, secret, algorithm="HS256"),
        "no_version": lambda: jwt.encode(claims(config, sub=alice.id, tv=None), secret, algorithm="HS256"),
        "unknown_account": lambda: jwt.encode({**good, "sub": "999999"}, secret, algorithm="HS256"),
        "tampered": lambda: alice.token[:-4] + ("AAAA" if not alice.token.endswith("AAAA") else "BBBB"),
    }[case]()
    for function, method, path in (("get-user", "GET", "/me"), ("get-user", "GET", "/alice"),
                                   ("update-user", "PATCH", "/me"), ("follow-user", "POST", "/alice")):
        response = api.call(function, method, path, token=token, json={"bio": "x"})
        assert response.status_code == 401, (function, response.json)
        assert response.json == {"error": message, "details": {}}
        assert_clean(response)
    assert db.scalar("SELECT bio FROM users") == ""


def test_verified_token_memo_never_outlives_expiry_or_key(api: Api, config: Config,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Verification is memoised per token, but expiry is checked on every use and the memo is
    keyed by the signing key: a rotated secret rejects tokens verified under the old one."""
    alice = api.account("alice")
    now = time.time()
    token = jwt.encode(claims(config, sub=alice.id, exp=int(now) + 30), config.jwt_secret, algorithm="HS256")
    assert me(api, token).status_code == 200
    assert me(api, token).status_code == 200  # served from the memo
    monkeypatch.setattr(auth.time, "time", lambda: now + 31)
    response = me(api, token)
    assert response.status_code == 401 and response.json["error"] == "token expired"
    monkeypatch.setattr(auth.time, "time", lambda: now)
    assert me(api, token).status_code == 200
    set_config(config.__class__(**{**config.__dict__, "jwt_secret": "r" * 48}))
    try:
        response = me(api, token)
        assert response.status_code == 401 and response.json["error"] == "invalid token"
    finally:
        set_config(config)


def test_revoked_token_cache_is_written_through(api: Api) -> None:
    alice = api.account("alice")
    assert me(api, alice.token).status_code == 200  # caches version 0
    key = auth.token_version_key(int(alice.id))
    assert cache.client().get(key) == b"0"
    api.call("update-user", "PATCH", "/me", token=alice.token,
             json={"password": "a new password", "current_password": PASSWORD})
    assert cache.client().get(key) == b"1"
    # A reader that fetched version 0 from PostgreSQL before the commit cannot re-cache it.
    assert auth.current_token_version(int(alice.id)) == 1
    cache.client().set(key, 0, ex=60, nx=True)
    assert cache.client().get(key) == b"1"
    assert me(api, alice.token).status_code == 401


# --- rate limits ----------------------------------------------------------------------------

@pytest.fixture
def limits(config: Config) -> Any:
    """Enable rate limits with small budgets: ``limits(ip=3, ...)``."""

    def apply(**budgets: int) -> Config:
        cfg = config.with_overrides(rate_limit_enabled=True, rate_limit_window=60,
                                    trusted_proxies=("127.0.0.1/32", "::1/128"),
                                    **{f"rate_limit_{k}": v for k, v in budgets.items()})
        set_config(cfg)
        return cfg

    return apply


def test_headers_and_429_with_retry_after(api: Api, limits: Any) -> None:
    api.account("alice")
    limits(ip=3)
    seen = []
    for _ in range(3):
        response = api.call("get-user", "GET", "/alice")
        assert response.status_code == 200
        assert response.headers["X-RateLimit-Limit"] == "3"
        seen.append(int(response.headers["X-RateLimit-Remaining"]))
        reset = int(response.headers["X-RateLimit-Reset"])
        assert time.time() - 1 <= reset <= time.time() + 61
    assert seen == [2, 1, 0]
    refused = api.call("get-user", "GET", "/alice")
    assert refused.status_code == 429
    assert 1 <= int(refused.headers["Retry-After"]) <= 61
    assert refused.headers["X-RateLimit-Remaining"] == "0"
    assert refused.json["error"] == "rate limit exceeded"
    assert refused.json["details"]["retry_after"] == int(refused.headers["Retry-After"])


def test_ip_buckets_are_separate(api: Api, limits: Any) -> None:
    api.account("alice")
    limits(ip=2)
    for _ in range(2):
        assert api.call("get-user", "GET", "/alice", remote_addr="10.0.0.1").status_code == 200
    assert api.call("get-user", "GET", "/alice", remote_addr="10.0.0.1").status_code == 429
    other = api.call("get-user", "GET", "/alice", remote_addr="10.0.0.2")
    assert other.status_code == 200 and other.headers["X-RateLimit-Remaining"] == "1"
    v6 = api.call("get-user", "GET", "/alice", remote_addr="2001:db8::1")
    assert v6.status_code == 200


def test_forwarded_for_trusted_only_from_trusted_proxy(api: Api, limits: Any) -> None:
    api.account("alice")
    limits(ip=2)
    # Through the trusted proxy (127.0.0.1 by default) each forwarded client has its own bucket.
    for client in ("198.51.100.1", "198.51.100.2"):
        for _ in range(2):
            response = api.call("get-user", "GET", "/alice", headers={"X-Forwarded-For": client})
            assert response.status_code == 200
        assert api.call("get-user", "GET", "/alice",
                        headers={"X-Forwarded-For": client}).status_code == 429
    # A client cannot escape its bucket by prepending a forged address: the rightmost
    # untrusted hop (what the proxy saw) counts.
    forged = api.call("get-user", "GET", "/alice",
                      headers={"X-Forwarded-For": "203.0.113.9, 198.51.100.1"})
    assert forged.status_code == 429
    # From an untrusted peer the header is ignored: rotating it does not help.
    statuses = [api.call("get-user", "GET", "/alice", remote_addr="192.0.2.7",
                         headers={"X-Forwarded-For": f"203.0.113.{i}"}).status_code
                for i in range(3)]
    assert statuses == [200, 200, 429]


def test_account_bucket_follows_the_account_across_ips(api: Api, limits: Any) -> None:
    alice, bob = api.account("alice"), api.account("bob")
    limits(ip=100, account=2)
    for ip in ("10.0.0.1", "10.0.0.2"):
        response = api.call("get-user", "GET", "/me", token=alice.token, remote_addr=ip)
        assert response.status_code == 200
    response = api.call("get-user", "GET", "/me", token=alice.token, remote_addr="10.0.0.3")
    assert response.status_code == 429 and response.headers["X-RateLimit-Limit"] == "2"
    assert api.call("follow-user", "POST", "/bob", token=alice.token,
                    remote_addr="10.0.0.4").status_code == 429
    # bob, and anonymous callers from alice's addresses, are unaffected
    assert api.call("get-user", "GET", "/me", token=bob.token, remote_addr="10.0.0.1").status_code == 200
    assert api.call("get-user", "GET", "/alice", remote_addr="10.0.0.3").status_code == 200


def test_revoked_tokens_do_not_spend_the_accounts_budget(api: Api, limits: Any) -> None:
    """The account count goes out with the token-version read, before the token is known to be
    valid; Redis makes it only while the cached version is the token's, so a revoked token's
    requests (401) leave the account's budget to its owner."""
    alice = api.account("alice")
    limits(ip=100, account=3)
    old_token = alice.token
    assert me(api, old_token).status_code == 200  # counted: 1 of 3
    api.call("update-user", "PATCH", "/me", token=old_token,  # counted: 2 of 3; revokes it
             json={"password": "a new password", "current_password": PASSWORD})
    for _ in range(5):
        assert me(api, old_token).status_code == 401
    new_token = api.call("login", "POST", json={"username": "alice", "password": "a new password"}).json
    response = me(api, new_token["access_token"])
    assert response.status_code == 200 and response.headers["X-RateLimit-Remaining"] == "0"
    assert me(api, new_token["access_token"]).status_code == 429


def test_an_authenticated_request_counts_its_account_in_its_first_round_trip(
        api: Api, limits: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """create-post with a cached token version: the IP and account counts and the version read in
    one write, the post-commit cache writes in a second; none alone."""
    alice = api.account("alice")
    limits(ip=100, account=100)
    assert api.call("create-post", "POST", json={"content": "warm"}, token=alice.token).status_code == 201
    writes = record_redis_writes(monkeypatch)
    response = api.call("create-post", "POST", json={"content": "counted"}, token=alice.token)
    assert response.status_code == 201 and response.headers["X-RateLimit-Remaining"] == "98"
    first = writes[0]
    assert first.count(b"EVALSHA") == 2 and auth.token_version_key(int(alice.id)).encode() in first
    assert len([w for w in writes if b"rl:" in w]) == 1  # no count travelled alone
    assert len(writes) == 2, writes


def test_login_has_a_stricter_separate_budget(api: Api, limits: Any) -> None:
    api.account("alice")
    limits(ip=100, login=2)
    assert [api.login("alice").status_code for _ in range(2)] == [200, 200]
    refused = api.login("alice")
    assert refused.status_code == 429 and refused.headers["X-RateLimit-Limit"] == "2"
    assert int(refused.headers["Retry-After"]) >= 1
    assert api.login("alice", "wrong password").status_code == 429  # guessing is counted too
    assert api.call("get-user", "GET", "/alice").status_code == 200  # api budget untouched
    assert api.call("login", "POST", remote_addr="10.1.1.1",
                    json={"username": "alice", "password": PASSWORD}).status_code == 200


def test_register_has_a_stricter_separate_budget(api: Api, limits: Any) -> None:
    limits(ip=100, register=2, login=100)
    statuses = [api.register(f"user{i}").status_code for i in range(3)]
    assert statuses == [201, 201, 429]
    assert db.scalar("SELECT count(*) FROM users") == 2
    assert api.login("user0").status_code == 200
    assert api.call("register", "POST", remote_addr="10.2.2.2",
                    json={"username": "user9", "password": PASSWORD}).status_code == 201


def test_rejected_body_still_counts(api: Api, limits: Any) -> None:
    limits(register=1)
    assert api.call("register", "POST", json={"username": "x"}).status_code == 422
    assert api.register("alice").status_code == 429


def test_rate_limit_count_rides_with_the_first_read(api: Api, limits: Any,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """An anonymous get-post of a cached post is one Redis round trip: the request's count goes
    out in the same write as the post read, and its decision still reaches the headers."""
    alice = api.account("alice")
    post = api.call("create-post", "POST", json={"content": "counted"}, token=alice.token).json
    limits(ip=100)
    assert api.call("get-post", "GET", f"/{post['id']}").status_code == 200  # caches the post
    writes = record_redis_writes(monkeypatch)
    response = api.call("get-post", "GET", f"/{post['id']}")
    assert response.status_code == 200 and response.json["content"] == "counted"
    assert response.headers["X-RateLimit-Remaining"] == "98"
    assert len(writes) == 1
    assert b"EVALSHA" in writes[0] and b"HMGET" in writes[0]


def test_count_is_settled_before_a_write_reaches_postgres(api: Api, limits: Any) -> None:
    """A handler that goes to PostgreSQL first (no Redis read to ride along with) still gets
    its refusal before the query: nothing is written over budget."""
    alice = api.account("alice")
    limits(ip=100, account=1)
    assert api.call("create-post", "POST", json={"content": "one"}, token=alice.token).status_code == 201
    refused = api.call("create-post", "POST", json={"content": "two"}, token=alice.token)
    assert refused.status_code == 429
    assert db.scalar("SELECT count(*) FROM posts WHERE author_id = :a", a=int(alice.id)) == 1


def test_deferred_script_survives_a_script_flush(api: Api, limits: Any) -> None:
    """A Redis that lost its scripts (restart, SCRIPT FLUSH) answers NOSCRIPT to the deferred
    count; the script is loaded and the count still made."""
    api.account("alice")
    limits(ip=3)
    assert api.call("get-user", "GET", "/alice").headers["X-RateLimit-Remaining"] == "2"
    cache.client().script_flush()
    assert api.call("get-user", "GET", "/alice").headers["X-RateLimit-Remaining"] == "1"


def test_reply_handler_failure_surfaces_after_every_reply_is_settled() -> None:
    """Two deferred commands whose first handler raises: the second handler still gets its
    reply, the failure is raised once every reply is settled, and the connection stays in step."""
    seen: list[Any] = []

    def refuse(_reply: Any) -> None:
        raise RuntimeError("refused")

    cache.client().set("defer:test", b"v")
    cache.defer(("INCR", "defer:n"), refuse)
    cache.defer(("INCR", "defer:n"), seen.append)
    with pytest.raises(RuntimeError, match="refused"):
        cache.read("GET", "defer:test")
    assert seen == [2]
    assert cache.read("GET", "defer:test") == b"v"  # the connection is still in step
    cache.client().delete("defer:test", "defer:n")


# --- Redis stopped --------------------------------------------------------------------------

@pytest.fixture
def own_redis(tmp_path: Path, config: Config) -> Iterator[Any]:
    """A private redis-server for this test; the config points at it (rate limits on)."""
    binary = embedded.system_redis_binary() or embedded.redis_server_binary()
    server = embedded.start_redis(tmp_path / "redis", binary=binary)
    set_config(config.with_overrides(redis_url=server.url, rate_limit_enabled=True))
    cache.reset()
    yield server
    server.stop()
    cache.reset()


@pytest.mark.slow
def test_accounts_work_from_postgres_with_redis_stopped(api: Api, own_redis: Any) -> None:
    alice = api.account("alice")
    assert me(api, alice.token).headers["X-RateLimit-Limit"]  # Redis is in use
    assert cache.client().get(auth.token_version_key(int(alice.id))) == b"0"
    own_redis.process.kill()
    own_redis.process.wait(5)

    started = time.perf_counter()
    bob = api.account("bob")  # register + login
    registered_and_logged_in = time.perf_counter() - started
    assert registered_and_logged_in < 5
    response = me(api, alice.token)
    assert response.status_code == 200 and "X-RateLimit-Limit" not in response.headers
    follow = api.call("follow-user", "POST", "/bob", token=alice.token)
    assert follow.status_code == 200 and follow.json["following"] is True
    profile = api.call("get-user", "GET", "/bob", token=alice.token).json
    assert profile["followers_count"] == 1 and profile["following"] is True
    assert api.call("follow-user", "DELETE", "/bob", token=alice.token).json["following"] is False
    assert api.call("get-user", "GET", "/bob").json["followers_count"] == 0
    # Revocation still holds: the version comes from PostgreSQL while Redis is down.
    changed = api.call("update-user", "PATCH", "/me", token=bob.token,
                       json={"password": "a new password", "current_password": PASSWORD})
    assert changed.status_code == 200
    assert me(api, bob.token).status_code == 401
    time.sleep(cache.DOWN_BACKOFF_SECONDS + 0.1)  # past the back-off: Redis is retried, still down
    assert me(api, alice.token).status_code == 200
    assert api.login("bob", "a new password").status_code == 200


# --- through the real gateway ---------------------------------------------------------------

@pytest.mark.slow
def test_account_flow_and_login_limit_through_the_gateway(start_gateway: Any) -> None:
    gw = start_gateway(RATE_LIMIT_ENABLED="true", RATE_LIMIT_LOGIN="2", RATE_LIMIT_REGISTER="5")
    with httpx.Client(base_url=gw.url + "/function", timeout=10) as http:
        for name in ("alice", "bob"):
            created = http.post("/register", json={"username": name, "password": PASSWORD})
            assert created.status_code == 201, created.text
            assert created.headers["X-RateLimit-Limit"] == "5"
        login = http.post("/login", json={"username": "alice", "password": PASSWORD})
        assert login.status_code == 200
        token = {"Authorization": "Bearer " + login.json()["access_token"]}
        assert http.post("/follow-user/bob", headers=token).json()["following"] is True
        assert http.get("/get-user/me", headers=token).json()["following_count"] == 1
        assert http.get("/get-user.openfaas-fn/bob").json()["followers_count"] == 1
        assert http.put("/get-user/bob").headers["Allow"] == "GET"
        assert http.post("/login", json={"username": "alice", "password": "x" * 8}).status_code == 401
        refused = http.post("/login", json={"username": "alice", "password": PASSWORD})
        assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 1
        # The caller is on loopback, a trusted proxy: its X-Forwarded-For names the client.
        other = http.post("/login", json={"username": "alice", "password": PASSWORD},
                          headers={"X-Forwarded-For": "198.51.100.20"})
        assert other.status_code == 200, other.text
