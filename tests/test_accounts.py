"""register, login, get-user and update-user against real PostgreSQL and Redis."""

from __future__ import annotations

import re
from typing import Any

import jwt
import pytest

from minitwitter import db, invalidation
from minitwitter.config import set_config
from minitwitter.users import SENTIMENT_WINDOW
from tests.api import PASSWORD, Api

RFC3339_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
ACCOUNT_KEYS = {"id", "username", "display_name", "bio", "created_at", "posts_count",
                "followers_count", "following_count", "following", "followed_by",
                "sentiment_summary"}
#: Text that must never reach a client: SQL, driver names, tracebacks, hashes.
LEAKS = ("select ", "insert ", "update users", "delete from", "violates", "duplicate key",
         "pg8000", "sqlstate", "traceback", "$argon2", "relation \"")


def assert_clean(response: Any) -> None:
    """No SQL, driver text, traceback or password hash in a response body."""
    text = response.get_data(as_text=True).lower()
    for leak in LEAKS:
        assert leak not in text, (leak, text)


def add_posts(author_id: str, rows: list[tuple[str, str | None]]) -> None:
    """Insert posts (status, label) oldest first; posts.py is not under test here, so the
    account's cached view is dropped by hand, as a post write does."""
    for status, label in rows:
        db.run("INSERT INTO posts (author_id, content, sentiment_status, sentiment_label) "
               "VALUES (:a, 'text', :s, :l)", a=int(author_id), s=status, l=label)
    invalidation.invalidate_accounts(int(author_id))


# --- register -------------------------------------------------------------------------------

def test_register_creates_account(api: Api) -> None:
    response = api.register("Alice_1", display_name="  Alice  ", bio="hello")
    assert response.status_code == 201
    body = response.json
    assert set(body) == ACCOUNT_KEYS
    assert body["username"] == "alice_1"  # lower-cased
    assert body["display_name"] == "Alice"  # trimmed
    assert body["bio"] == "hello"
    assert isinstance(body["id"], str) and body["id"].isdigit()
    assert RFC3339_Z.match(body["created_at"])
    assert (body["posts_count"], body["followers_count"], body["following_count"]) == (0, 0, 0)
    assert body["following"] is False and body["followed_by"] is False
    assert response.headers["Location"] == "/function/get-user/alice_1"
    stored = db.one("SELECT username, password_hash FROM users WHERE id = :id", id=int(body["id"]))
    assert stored is not None and stored[0] == "alice_1"
    assert stored[1].startswith("$argon2id$") and PASSWORD not in stored[1]
    assert_clean(response)


@pytest.mark.parametrize("password", ["x" * 8, "p" * 128, "pässwörd", "😀" * 8, " spaced  "])
def test_register_accepts_password_bounds(api: Api, password: str) -> None:
    assert api.register("bounds", password).status_code == 201
    assert api.login("bounds", password).status_code == 200


@pytest.mark.parametrize("username", ["abc", "a" * 30, "under_score", "123", "MiXeD"])
def test_register_accepts_usernames(api: Api, username: str) -> None:
    response = api.register(username)
    assert response.status_code == 201
    assert response.json["username"] == username.lower()


@pytest.mark.parametrize(("body", "field", "message"), [
    ({"password": PASSWORD}, "username", "is required"),
    ({"username": "alice"}, "password", "is required"),
    ({"username": "ab", "password": PASSWORD}, "username", "too short"),
    ({"username": "a" * 31, "password": PASSWORD}, "username", "too long"),
    ({"username": "al ice", "password": PASSWORD}, "username", "letters, digits"),
    ({"username": "al-ice", "password": PASSWORD}, "username", "letters, digits"),
    ({"username": "ålice", "password": PASSWORD}, "username", "letters, digits"),
    ({"username": " alice", "password": PASSWORD}, "username", "letters, digits"),
    ({"username": "me", "password": PASSWORD}, "username", "too short"),
    ({"username": "ME_", "password": PASSWORD}, None, None),
    ({"username": 123, "password": PASSWORD}, "username", "must be a string"),
    ({"username": None, "password": PASSWORD}, "username", "must not be null"),
    ({"username": "alice", "password": "short7!"}, "password", "too short"),
    ({"username": "alice", "password": "p" * 129}, "password", "too long"),
    ({"username": "alice", "password": ["x" * 8]}, "password", "must be a string"),
    ({"username": "alice", "password": PASSWORD, "display_name": "d" * 51}, "display_name", "too long"),
    ({"username": "alice", "password": PASSWORD, "display_name": 5}, "display_name", "must be a string"),
    ({"username": "alice", "password": PASSWORD, "bio": "b" * 161}, "bio", "too long"),
    ({"username": "alice", "password": PASSWORD, "is_admin": True}, "is_admin", "not a known field"),
    ({"username": "alice", "password": PASSWORD, "password_hash": "x"}, "password_hash", "not a known field"),
    ({"username": "alice", "password": PASSWORD, "id": "1"}, "id", "not a known field"),
    ({"username": "ali\x00ce", "password": PASSWORD}, "username", "NUL"),
])
def test_register_validation(api: Api, body: dict[str, Any], field: str | None, message: str | None) -> None:
    response = api.call("register", "POST", json=body)
    if field is None:  # control row: a valid body next to the invalid ones
        assert response.status_code == 201
        return
    assert response.status_code == 422
    assert response.json["error"] == "validation failed"
    assert any(message in m for m in response.json["details"][field]), response.json
    assert db.scalar("SELECT count(*) FROM users") == 0
    assert_clean(response)


def test_register_reports_every_invalid_field_at_once(api: Api) -> None:
    response = api.call("register", "POST", json={"username": "x", "password": "1", "color": "red"})
    assert response.status_code == 422
    assert set(response.json["details"]) == {"username", "password", "color"}


@pytest.mark.parametrize("taken", ["alice", "ALICE", "Alice"])
def test_register_taken_name_is_409_case_insensitive(api: Api, taken: str) -> None:
    assert api.register("alice").status_code == 201
    response = api.register(taken, "another password")
    assert response.status_code == 409
    assert response.json == {"error": "username is already taken",
                             "details": {"username": ["is already taken"]}}
    assert db.scalar("SELECT count(*) FROM users") == 1
    assert_clean(response)


@pytest.mark.parametrize(("data", "ctype", "status"), [
    (b"", "application/json", 400),
    (b"{not json", "application/json", 400),
    (b"[1, 2]", "application/json", 400),
    (b'"alice"', "application/json", 400),
    (b"username=alice", "application/x-www-form-urlencoded", 400),
    (b'{"username": "' + b"a" * 70000 + b'"}', "application/json", 413),
])
def test_register_malformed_bodies(api: Api, data: bytes, ctype: str, status: int) -> None:
    response = api.call("register", "POST", data=data, headers={"Content-Type": ctype})
    assert response.status_code == status
    assert set(response.json) == {"error", "details"}
    assert_clean(response)


def test_database_down_is_503_without_sql(api: Api, config: Any) -> None:
    from gateway.embedded import free_port

    set_config(config.with_overrides(
        database_url=f"postgresql://postgres@127.0.0.1:{free_port()}/nowhere", db_connect_timeout=1.0))
    db.close_connection()
    response = api.register("alice")
    assert response.status_code == 503
    assert response.headers["Retry-After"]
    assert_clean(response)


# --- login ----------------------------------------------------------------------------------

def test_login_returns_bearer_token(api: Api, config: Any) -> None:
    created = api.register("alice").json
    response = api.login("ALICE")  # usernames are case-insensitive at login too
    assert response.status_code == 200
    body = response.json
    assert set(body) == {"access_token", "token_type", "expires_in"}
    assert body["token_type"] == "Bearer" and body["expires_in"] == config.jwt_ttl_seconds
    assert response.headers["Cache-Control"] == "no-store"
    claims = jwt.decode(body["access_token"], config.jwt_secret, algorithms=["HS256"],
                        issuer=config.jwt_issuer)
    assert claims["sub"] == created["id"] and claims["tv"] == 0
    me = api.call("get-user", "GET", "/me", token=body["access_token"])
    assert me.status_code == 200 and me.json["id"] == created["id"]


@pytest.mark.parametrize(("username", "password"), [
    ("alice", "wrong password"), ("nobody", PASSWORD), ("al-ice", PASSWORD), ("alice", PASSWORD.upper()),
])
def test_login_bad_credentials_are_one_401(api: Api, username: str, password: str) -> None:
    api.register("alice")
    response = api.login(username, password)
    assert response.status_code == 401
    assert response.json == {"error": "invalid username or password", "details": {}}
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert_clean(response)


@pytest.mark.parametrize(("body", "field"), [
    ({"password": PASSWORD}, "username"),
    ({"username": "alice"}, "password"),
    ({"username": "alice", "password": ""}, "password"),
    ({"username": "alice", "password": "p" * 129}, "password"),
    ({"username": "alice", "password": PASSWORD, "remember": True}, "remember"),
    ({"username": 1, "password": PASSWORD}, "username"),
])
def test_login_validation(api: Api, body: dict[str, Any], field: str) -> None:
    api.register("alice")
    response = api.call("login", "POST", json=body)
    assert response.status_code == 422
    assert field in response.json["details"]


# --- get-user -------------------------------------------------------------------------------

def test_get_user_anonymous_by_name_and_id(api: Api) -> None:
    alice = api.account("alice")
    by_name = api.call("get-user", "GET", "/Alice")
    assert by_name.status_code == 200
    assert set(by_name.json) == ACCOUNT_KEYS and by_name.json["id"] == alice.id
    assert by_name.json["following"] is False
    by_id = api.call("get-user", "GET", f"/id/{alice.id}")
    assert by_id.status_code == 200 and by_id.json == by_name.json


def test_get_user_me_requires_token(api: Api) -> None:
    response = api.call("get-user", "GET", "/me")
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize("path", ["/nobody", "/al-ice", "/x", "/" + "a" * 31, "/id/abc", "/id/0",
                                  "/id/99999", "/id/99999999999999999999", "/id/-1", "/",
                                  "/alice/extra", "/id/1/2", "/%C3%A5lice"])
def test_get_user_not_found(api: Api, path: str) -> None:
    api.account("alice")
    response = api.call("get-user", "GET", path)
    assert response.status_code == 404
    assert response.json == {"error": "account not found", "details": {}}
    assert_clean(response)


def test_get_user_counts_and_viewer_relationship(api: Api) -> None:
    alice, bob = api.account("alice"), api.account("bob")
    add_posts(alice.id, [("pending", None)] * 3)
    assert api.call("follow-user", "POST", "/alice", token=bob.token).status_code == 200
    as_bob = api.call("get-user", "GET", "/alice", token=bob.token).json
    assert (as_bob["posts_count"], as_bob["followers_count"], as_bob["following_count"]) == (3, 1, 0)
    assert as_bob["following"] is True and as_bob["followed_by"] is False
    as_alice = api.call("get-user", "GET", "/bob", token=alice.token).json
    assert as_alice["following"] is False and as_alice["followed_by"] is True
    assert as_alice["following_count"] == 1
    anonymous = api.call("get-user", "GET", "/alice").json
    assert anonymous["following"] is False and anonymous["followed_by"] is False


def test_get_user_sentiment_summary_covers_latest_posts(api: Api) -> None:
    alice = api.account("alice")
    # The oldest 10 are negative and fall outside the window of the latest 50.
    add_posts(alice.id, [("done", "negative")] * 10 + [("done", "positive")] * 20
              + [("done", "neutral")] * 15 + [("done", "negative")] * 5
              + [("failed", None)] * 4 + [("pending", None)] * 6)
    summary = api.call("get-user", "GET", "/alice").json["sentiment_summary"]
    assert summary == {"window": SENTIMENT_WINDOW, "posts": 50, "pending": 6, "failed": 4,
                       "positive": 20, "neutral": 15, "negative": 5, "dominant": "positive"}
    # Five newer neutral posts push the five oldest positive ones out of the window.
    add_posts(alice.id, [("done", "neutral")] * 5)
    summary = api.call("get-user", "GET", "/alice").json["sentiment_summary"]
    assert (summary["positive"], summary["neutral"], summary["dominant"]) == (15, 20, "neutral")


def test_get_user_sentiment_summary_tie_has_no_dominant(api: Api) -> None:
    alice = api.account("alice")
    add_posts(alice.id, [("done", "positive"), ("done", "negative"), ("pending", None)])
    summary = api.call("get-user", "GET", "/alice").json["sentiment_summary"]
    assert (summary["posts"], summary["positive"], summary["negative"]) == (3, 1, 1)
    assert summary["dominant"] is None


def test_get_user_sentiment_summary_empty(api: Api) -> None:
    api.account("alice")
    summary = api.call("get-user", "GET", "/alice").json["sentiment_summary"]
    assert summary["posts"] == 0 and summary["dominant"] is None


# --- update-user ----------------------------------------------------------------------------

def test_update_profile_visible_on_next_read(api: Api) -> None:
    alice = api.account("alice")
    response = api.call("update-user", "PATCH", "/me", token=alice.token,
                        json={"display_name": " Alice A. ", "bio": "likes tea"})
    assert response.status_code == 200
    assert (response.json["display_name"], response.json["bio"]) == ("Alice A.", "likes tea")
    read = api.call("get-user", "GET", "/alice").json
    assert (read["display_name"], read["bio"]) == ("Alice A.", "likes tea")
    cleared = api.call("update-user", "PATCH", "/me", token=alice.token, json={"bio": ""})
    assert cleared.json["bio"] == "" and cleared.json["display_name"] == "Alice A."
    assert api.call("get-user", "GET", "/me", token=alice.token).json["bio"] == ""


@pytest.mark.parametrize(("body", "field", "message"), [
    ({}, "body", "at least one"),
    ({"display_name": "d" * 51}, "display_name", "too long"),
    ({"bio": "b" * 161}, "bio", "too long"),
    ({"bio": None}, "bio", "must not be null"),
    ({"username": "other"}, "username", "not a known field"),
    ({"token_version": 0, "bio": "x"}, "token_version", "not a known field"),
    ({"password": "new password"}, "current_password", "required"),
    ({"password": "new password", "current_password": "wrong one"}, "current_password", "incorrect"),
    ({"password": "short", "current_password": PASSWORD}, "password", "too short"),
    ({"password": "p" * 129, "current_password": PASSWORD}, "password", "too long"),
    ({"current_password": PASSWORD, "bio": "x"}, "current_password", "only used with password"),
])
def test_update_validation(api: Api, body: dict[str, Any], field: str, message: str) -> None:
    alice = api.account("alice")
    response = api.call("update-user", "PATCH", "/me", token=alice.token, json=body)
    assert response.status_code == 422
    assert any(message in m for m in response.json["details"][field]), response.json
    unchanged = db.one("SELECT bio, token_version FROM users WHERE id = :id", id=int(alice.id))
    assert unchanged == ["", 0]
    assert api.call("get-user", "GET", "/me", token=alice.token).status_code == 200


@pytest.mark.parametrize(("who", "path", "status"), [
    ("anonymous", "/me", 401),
    ("anonymous", "/bob", 401),
    ("other", "/bob", 404),       # alice cannot address bob's account at all
    ("other", f"/id/{2}", 404),
    ("owner", "/me", 200),
])
def test_update_authorization_matrix(api: Api, who: str, path: str, status: int) -> None:
    alice, bob = api.account("alice"), api.account("bob")
    token = {"anonymous": None, "other": alice.token, "owner": bob.token}[who]
    response = api.call("update-user", "PATCH", path, token=token, json={"bio": "changed"})
    assert response.status_code == status
    bob_bio = db.scalar("SELECT bio FROM users WHERE id = :id", id=int(bob.id))
    assert bob_bio == ("changed" if who == "owner" else "")
    assert db.scalar("SELECT bio FROM users WHERE id = :id", id=int(alice.id)) == ""


def test_password_change_revokes_old_tokens(api: Api) -> None:
    alice = api.account("alice")
    second = api.login("alice").json["access_token"]
    # Warm the token-version cache so revocation is proven through it, not around it.
    assert api.call("get-user", "GET", "/me", token=second).status_code == 200
    response = api.call("update-user", "PATCH", "/me", token=alice.token,
                        json={"password": "brand new password", "current_password": PASSWORD})
    assert response.status_code == 200
    assert_clean(response)
    for old in (alice.token, second):
        revoked = api.call("get-user", "GET", "/me", token=old)
        assert revoked.status_code == 401 and revoked.json["error"] == "token revoked"
        assert api.call("follow-user", "POST", "/alice", token=old).status_code == 401
    assert api.login("alice").status_code == 401
    fresh = api.login("alice", "brand new password")
    assert fresh.status_code == 200
    assert api.call("get-user", "GET", "/me", token=fresh.json["access_token"]).status_code == 200
    assert db.scalar("SELECT token_version FROM users WHERE id = :id", id=int(alice.id)) == 1


def test_profile_update_keeps_tokens(api: Api) -> None:
    alice = api.account("alice")
    api.call("update-user", "PATCH", "/me", token=alice.token, json={"display_name": "A"})
    assert api.call("get-user", "GET", "/me", token=alice.token).status_code == 200


# --- shared behaviour -----------------------------------------------------------------------

@pytest.mark.parametrize(("function", "method", "allow"), [
    ("register", "GET", "POST"), ("register", "PUT", "POST"), ("login", "GET", "POST"),
    ("login", "DELETE", "POST"), ("get-user", "POST", "GET"), ("get-user", "DELETE", "GET"),
    ("update-user", "GET", "PATCH"), ("update-user", "POST", "PATCH"), ("update-user", "PUT", "PATCH"),
    ("follow-user", "GET", "DELETE, POST"), ("follow-user", "PATCH", "DELETE, POST"),
])
def test_wrong_method_is_405_with_allow(api: Api, function: str, method: str, allow: str) -> None:
    response = api.call(function, method, "/me")
    assert response.status_code == 405
    assert response.headers["Allow"] == allow
    assert response.json["error"] == "method not allowed"


def test_password_hash_never_in_any_response(api: Api) -> None:
    alice, bob = api.account("alice"), api.account("bob")
    hashes = [row[0] for row in db.run("SELECT password_hash FROM users")]
    responses = [
        api.register("carol", display_name="C"),
        api.register("carol"),
        api.register("x", "y"),
        api.login("alice"),
        api.login("alice", "wrong password"),
        api.call("get-user", "GET", "/alice"),
        api.call("get-user", "GET", "/me", token=alice.token),
        api.call("get-user", "GET", f"/id/{bob.id}", token=alice.token),
        api.call("follow-user", "POST", "/bob", token=alice.token),
        api.call("follow-user", "DELETE", "/bob", token=alice.token),
        api.call("update-user", "PATCH", "/me", token=bob.token, json={"bio": "b"}),
        api.call("update-user", "PATCH", "/me", token=bob.token,
                 json={"password": "another password", "current_password": PASSWORD}),
    ]
    hashes += [row[0] for row in db.run("SELECT password_hash FROM users")]
    for response in responses:
        text = response.get_data(as_text=True)
        assert "password_hash" not in text and "$argon2" not in text  # no echoed field here
        assert not any(h in text for h in hashes)
        assert PASSWORD not in text and "another password" not in text
