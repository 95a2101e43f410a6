"""like-post: idempotent like/unlike returning the post, counts kept by the trigger."""

from __future__ import annotations

import pytest

from minitwitter import db
from tests.api import Api
from tests.conftest import at_once
from tests.test_posts import assert_clean_error, create


def test_like_and_unlike_are_idempotent(api: Api) -> None:
    alice, bob = api.account("alice"), api.account("bob")
    post = create(api, alice)
    path = f"/{post['id']}"
    for _ in range(3):
        liked = api.call("like-post", "POST", path, token=bob.token)
        assert liked.status_code == 200
        assert (liked.json["id"], liked.json["liked"], liked.json["likes_count"]) == (post["id"], True, 1)
    assert db.scalar("SELECT count(*) FROM likes") == 1
    assert db.scalar("SELECT likes_count FROM posts WHERE id = :id", id=int(post["id"])) == 1
    mine = api.call("like-post", "POST", path, token=alice.token).json
    assert (mine["liked"], mine["likes_count"]) == (True, 2)
    for _ in range(3):
        unliked = api.call("like-post", "DELETE", path, token=bob.token)
        assert unliked.status_code == 200
        assert (unliked.json["liked"], unliked.json["likes_count"]) == (False, 1)
    assert db.run("SELECT user_id FROM likes") == [[int(alice.id)]]


def test_concurrent_likes_count_once_per_account(api: Api) -> None:
    alice = api.account("alice")
    post = create(api, alice)
    results = at_once(lambda: api.call("like-post", "POST", f"/{post['id']}", token=alice.token).status_code, 8)
    assert results == [200] * 8
    assert db.scalar("SELECT likes_count FROM posts WHERE id = :id", id=int(post["id"])) == 1


@pytest.mark.parametrize("method", ["POST", "DELETE"])
@pytest.mark.parametrize(("path", "status"), [("/424242", 404), ("/abc", 404), ("/", 404), ("/1/2", 404)])
def test_like_errors(api: Api, method: str, path: str, status: int) -> None:
    alice = api.account("alice")
    assert_clean_error(api.call("like-post", method, path, token=alice.token), status)


@pytest.mark.parametrize("method", ["POST", "DELETE"])
@pytest.mark.parametrize("who", ["anonymous", "other", "owner"])
def test_like_authorization_matrix(api: Api, method: str, who: str) -> None:
    """Anyone signed in may like any post (their own included); anonymous callers may not."""
    alice, bob = api.account("alice"), api.account("bob")
    post = create(api, alice)
    token = {"anonymous": None, "other": bob.token, "owner": alice.token}[who]
    response = api.call("like-post", method, f"/{post['id']}", token=token)
    if who == "anonymous":
        assert_clean_error(response, 401)
        return
    assert response.status_code == 200
    assert response.json["liked"] is (method == "POST")
    assert db.scalar("SELECT count(*) FROM likes") == (1 if method == "POST" else 0)
