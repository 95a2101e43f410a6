"""follow-user: idempotent follow/unfollow, counters, errors, authorization and feed hooks."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from minitwitter import db, homefeed
from tests.api import Api
from tests.test_accounts import assert_clean


def counts(api: Api, username: str) -> tuple[int, int]:
    body = api.call("get-user", "GET", f"/{username}").json
    return body["followers_count"], body["following_count"]


def follow_rows() -> list[list[int]]:
    return db.run("SELECT follower_id, followee_id FROM follows ORDER BY 1, 2")


def test_follow_is_idempotent_and_visible_on_next_read(api: Api) -> None:
    alice, bob = api.account("alice"), api.account("bob")
    for _ in range(3):
        response = api.call("follow-user", "POST", "/bob", token=alice.token)
        assert response.status_code == 200
        assert response.json == {"id": bob.id, "username": "bob", "following": True,
                                 "followed_by": False}
        assert counts(api, "bob") == (1, 0) and counts(api, "alice") == (0, 1)
    assert follow_rows() == [[int(alice.id), int(bob.id)]]
    me = api.call("get-user", "GET", "/bob", token=alice.token).json
    assert me["following"] is True


def test_unfollow_is_idempotent(api: Api) -> None:
    alice, bob = api.account("alice"), api.account("bob")
    api.call("follow-user", "POST", "/bob", token=alice.token)
    for _ in range(2):
        response = api.call("follow-user", "DELETE", "/bob", token=alice.token)
        assert response.status_code == 200
        assert response.json == {"id": bob.id, "username": "bob", "following": False,
                                 "followed_by": False}
        assert counts(api, "bob") == (0, 0) and counts(api, "alice") == (0, 0)
    assert follow_rows() == []


def test_unfollow_without_following_is_a_no_op(api: Api) -> None:
    alice, bob = api.account("alice"), api.account("bob")
    api.call("follow-user", "POST", "/alice", token=bob.token)
    response = api.call("follow-user", "DELETE", "/bob", token=alice.token)
    assert response.status_code == 200
    assert response.json["following"] is False and response.json["followed_by"] is True
    assert counts(api, "alice") == (1, 0)


def test_mutual_follow_relationship(api: Api) -> None:
    alice, bob = api.account("alice"), api.account("bob")
    api.call("follow-user", "POST", "/bob", token=alice.token)
    response = api.call("follow-user", "POST", "/ALICE", token=bob.token)  # any case
    assert response.json == {"id": alice.id, "username": "alice", "following": True,
                             "followed_by": True}
    assert counts(api, "alice") == (1, 1) and counts(api, "bob") == (1, 1)


@pytest.mark.parametrize("method", ["POST", "DELETE"])
def test_self_follow_is_422(api: Api, method: str) -> None:
    alice = api.account("alice")
    response = api.call("follow-user", method, "/Alice", token=alice.token)
    assert response.status_code == 422
    assert response.json["details"] == {"username": ["cannot be your own account"]}
    assert follow_rows() == [] and counts(api, "alice") == (0, 0)


@pytest.mark.parametrize("method", ["POST", "DELETE"])
@pytest.mark.parametrize("path", ["/nobody", "/no-body", "/ab", "/", "/bob/extra", "/%00bob"])
def test_unknown_account_is_404(api: Api, method: str, path: str) -> None:
    alice = api.account("alice")
    api.account("bob")
    response = api.call("follow-user", method, path, token=alice.token)
    assert response.status_code == 404
    assert response.json == {"error": "account not found", "details": {}}
    assert follow_rows() == []
    assert_clean(response)


@pytest.mark.parametrize("method", ["POST", "DELETE"])
@pytest.mark.parametrize("authorization", [None, "Bearer", "Bearer not-a-jwt", "Basic YWxpY2U6eA==",
                                           "Token abc"])
def test_follow_requires_valid_token(api: Api, method: str, authorization: str | None) -> None:
    api.account("alice")
    headers = {"Authorization": authorization} if authorization else {}
    response = api.call("follow-user", method, "/alice", headers=headers)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert follow_rows() == []


def test_authorization_matrix_only_the_caller_relationship_changes(api: Api) -> None:
    alice, bob, carol = api.account("alice"), api.account("bob"), api.account("carol")
    assert api.call("follow-user", "POST", "/carol", token=alice.token).status_code == 200
    # anonymous: refused, nothing changes
    assert api.call("follow-user", "DELETE", "/carol").status_code == 401
    # another account: its DELETE affects only its own (absent) relationship
    other = api.call("follow-user", "DELETE", "/carol", token=bob.token)
    assert other.status_code == 200 and other.json["following"] is False
    assert follow_rows() == [[int(alice.id), int(carol.id)]]
    # the owner of the relationship can undo it
    owner = api.call("follow-user", "DELETE", "/carol", token=alice.token)
    assert owner.status_code == 200 and owner.json["following"] is False
    assert follow_rows() == []


def test_concurrent_follow_and_unfollow_keep_counters_exact(api: Api) -> None:
    alice, _ = api.account("alice"), api.account("bob")
    errors: list[Any] = []

    def worker(method: str) -> None:
        try:
            for _ in range(10):
                response = api.call("follow-user", method, "/bob", token=alice.token)
                if response.status_code != 200:
                    errors.append(response.json)
        except Exception as exc:  # noqa: BLE001 - surfaced by the assertion below
            errors.append(exc)
        finally:
            db.close_connection()

    threads = [threading.Thread(target=worker, args=(m,)) for m in ("POST", "POST", "DELETE", "DELETE")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    rows = len(follow_rows())
    assert counts(api, "bob") == (rows, 0) and counts(api, "alice") == (0, rows)


@pytest.fixture
def feed_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int, int]]:
    """The home feeds' hooks, recording their calls instead."""
    calls: list[tuple[str, int, int]] = []
    monkeypatch.setattr(homefeed, "on_follow", lambda f, t: calls.append(("follow", f, t)))
    monkeypatch.setattr(homefeed, "on_unfollow", lambda f, t: calls.append(("unfollow", f, t)))
    return calls


def test_feed_hooks_are_called(api: Api, feed_calls: list[tuple[str, int, int]]) -> None:
    alice, bob = api.account("alice"), api.account("bob")
    api.call("follow-user", "POST", "/bob", token=alice.token)
    api.call("follow-user", "DELETE", "/bob", token=alice.token)
    assert feed_calls == [("follow", int(alice.id), int(bob.id)),
                          ("unfollow", int(alice.id), int(bob.id))]


def test_feed_hook_failure_does_not_fail_the_follow(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_ids: int) -> None:
        raise RuntimeError("redis exploded")

    monkeypatch.setattr(homefeed, "on_follow", broken)
    monkeypatch.setattr(homefeed, "on_unfollow", broken)
    alice, _ = api.account("alice"), api.account("bob")
    response = api.call("follow-user", "POST", "/bob", token=alice.token)
    assert response.status_code == 200 and response.json["following"] is True
    assert "redis exploded" not in response.get_data(as_text=True)
    assert api.call("follow-user", "DELETE", "/bob", token=alice.token).status_code == 200
    assert follow_rows() == []
