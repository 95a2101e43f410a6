"""add-comment and list-comments against real PostgreSQL and Redis."""

from __future__ import annotations

import re
from typing import Any

import pytest

from minitwitter import cache, db, jobs
from tests.api import Account, Api
from tests.conftest import at_once, writing_meanwhile
from tests.test_posts import TS, assert_clean_error, create, ids_of, links, walk_pages


def comment(api: Api, account: Account, post_id: str, content: str = "nice", **kw: Any) -> dict[str, Any]:
    response = api.call("add-comment", "POST", f"/{post_id}", json={"content": content},
                        token=account.token, **kw)
    assert response.status_code == 201, response.get_data(as_text=True)
    return response.json


def test_add_comment_returns_it_and_counts_it(api: Api) -> None:
    alice, bob = api.account("alice"), api.account("bob")
    post = create(api, alice)
    made = comment(api, bob, post["id"], "  great post  ")
    assert made["content"] == "great post" and made["post_id"] == post["id"]
    assert made["author"] == {"id": bob.id, "username": "bob", "display_name": ""}
    assert TS.match(made["created_at"]) and made["id"].isdigit()
    assert made["sentiment"] == {"status": "pending", "label": None, "score": None, "model": None}
    assert api.call("get-post", "GET", f"/{post['id']}").json["comments_count"] == 1
    tokens = [t.decode() for t in cache.client().lrange(jobs.TODO_KEY, 0, -1)]
    assert any(t.startswith(f"comment:{made['id']}:1:") for t in tokens)


@pytest.mark.parametrize(("body", "field"), [
    ({}, "content"), ({"content": ""}, "content"), ({"content": " "}, "content"),
    ({"content": "y" * 281}, "content"), ({"content": 1}, "content"),
    ({"content": "ok", "post_id": "1"}, "post_id"),
    ({"content": "ok", "callback_url": "gopher://x"}, "callback_url"),
])
def test_add_comment_validation(api: Api, body: dict[str, Any], field: str) -> None:
    alice = api.account("alice")
    post = create(api, alice)
    response = api.call("add-comment", "POST", f"/{post['id']}", json=body, token=alice.token)
    assert_clean_error(response, 422)
    assert field in response.json["details"]
    assert db.scalar("SELECT count(*) FROM comments") == 0


@pytest.mark.parametrize("path", ["/777777", "/abc", "/", "/1/2"])
def test_add_comment_to_missing_post_is_404(api: Api, path: str) -> None:
    alice = api.account("alice")
    response = api.call("add-comment", "POST", path, json={"content": "hi"}, token=alice.token)
    assert_clean_error(response, 404)


def test_add_comment_idempotency_key_and_callback(api: Api) -> None:
    alice = api.account("alice")
    post = create(api, alice)
    headers = {"Idempotency-Key": "c-1", "X-Callback-Url": "http://127.0.0.1:9/c"}
    first = api.call("add-comment", "POST", f"/{post['id']}", json={"content": "x"}, token=alice.token,
                     headers=headers)
    again = api.call("add-comment", "POST", f"/{post['id']}", json={"content": "x"}, token=alice.token,
                     headers=headers)
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.headers["Idempotent-Replayed"] == "true" and again.json == first.json
    assert db.scalar("SELECT count(*) FROM comments") == 1
    assert db.run("SELECT kind, item_id, version, url FROM sentiment_callbacks") == [
        ["comment", int(first.json["id"]), 1, "http://127.0.0.1:9/c"]]
    # the same key on another post is another request
    other = create(api, alice, "other")
    assert api.call("add-comment", "POST", f"/{other['id']}", json={"content": "x"}, token=alice.token,
                    headers=headers).status_code == 201


@pytest.mark.parametrize("key", ["x" * 256, "caf\u00e9", "tab\there", "   "])
def test_add_comment_invalid_idempotency_key_is_400(api: Api, key: str) -> None:
    alice = api.account("alice")
    post = create(api, alice)
    response = api.call("add-comment", "POST", f"/{post['id']}", json={"content": "x"}, token=alice.token,
                        headers={"Idempotency-Key": key.encode("utf-8").decode("latin-1")})
    assert_clean_error(response, 400)
    assert "Idempotency-Key" in response.json["details"]
    assert db.scalar("SELECT count(*) FROM comments") == 0


def test_concurrent_comment_retries_with_one_key_create_one_comment(api: Api) -> None:
    alice = api.account("alice")
    post = create(api, alice)
    results = at_once(lambda: api.call("add-comment", "POST", f"/{post['id']}", json={"content": "race"},
                                       token=alice.token, headers={"Idempotency-Key": "same"}), 6)
    assert sorted(r.status_code for r in results) == [200] * 5 + [201]
    assert len({r.json["id"] for r in results}) == 1
    assert db.scalar("SELECT count(*) FROM comments") == 1
    assert api.call("get-post", "GET", f"/{post['id']}").json["comments_count"] == 1


def test_idempotency_key_of_a_deleted_comment_is_409(api: Api) -> None:
    alice = api.account("alice")
    post = create(api, alice)
    made = comment(api, alice, post["id"], headers={"Idempotency-Key": "gone"})
    assert api.call("add-comment", "DELETE", f"/{post['id']}/{made['id']}", token=alice.token).status_code == 204
    again = api.call("add-comment", "POST", f"/{post['id']}", json={"content": "nice"}, token=alice.token,
                     headers={"Idempotency-Key": "gone"})
    assert_clean_error(again, 409)
    assert "Idempotency-Key" in again.json["details"]
    assert db.scalar("SELECT count(*) FROM comments") == 0


def test_comment_pagination_stays_correct_while_comments_are_added(api: Api) -> None:
    """Walking a post's comments oldest first while others comment: no comment is skipped or
    repeated, and the walk ends with every comment up to the last one it saw."""
    alice, bob = api.account("alice"), api.account("bob")
    post = create(api, alice)
    db.run("INSERT INTO comments (post_id, author_id, content) SELECT :p, :a, 'c' || g "
           "FROM generate_series(1, 60) g", p=int(post["id"]), a=int(alice.id))
    with writing_meanwhile(lambda: int(comment(api, bob, post["id"], "concurrent")["id"])) as added:
        first = api.call("list-comments", "GET", f"/{post['id']}", query={"limit": 7})
        seen, _ = walk_pages(api, first)
    assert seen == sorted(seen) and len(seen) == len(set(seen))
    every = [row[0] for row in db.run("SELECT id FROM comments WHERE post_id = :p ORDER BY id",
                                      p=int(post["id"]))]
    assert seen == [i for i in every if i <= seen[-1]]
    assert any(i in seen for i in added)  # the walk reached comments added during it


@pytest.mark.parametrize("who", ["anonymous", "other", "post_author", "owner"])
def test_delete_comment_authorization_matrix(api: Api, who: str) -> None:
    alice, bob, carol = api.account("alice"), api.account("bob"), api.account("carol")
    post = create(api, alice)
    made = comment(api, bob, post["id"])
    token = {"anonymous": None, "other": carol.token, "post_author": alice.token, "owner": bob.token}[who]
    response = api.call("add-comment", "DELETE", f"/{post['id']}/{made['id']}", token=token)
    remaining = db.scalar("SELECT count(*) FROM comments")
    if who == "anonymous":
        assert_clean_error(response, 401)
        assert remaining == 1
    elif who in ("other", "post_author"):
        assert_clean_error(response, 404)  # only your own comment; others' look missing
        assert remaining == 1
    else:
        assert response.status_code == 204
        assert remaining == 0
        assert api.call("get-post", "GET", f"/{post['id']}").json["comments_count"] == 0


@pytest.mark.parametrize("path", ["/{post}/999999", "/999999/{comment}", "/{post}", "/{post}/x", "/{other}/{comment}"])
def test_delete_comment_wrong_path_is_404(api: Api, path: str) -> None:
    alice = api.account("alice")
    post, other = create(api, alice), create(api, alice, "other")
    made = comment(api, alice, post["id"])
    response = api.call("add-comment", "DELETE", path.format(post=post["id"], comment=made["id"], other=other["id"]),
                        token=alice.token)
    assert_clean_error(response, 404)
    assert db.scalar("SELECT count(*) FROM comments") == 1


def test_list_comments_oldest_first_with_pagination(api: Api) -> None:
    alice = api.account("alice")
    post = create(api, alice)
    rows = db.run("INSERT INTO comments (post_id, author_id, content) SELECT :p, :a, 'c' || g "
                  "FROM generate_series(1, 25) g RETURNING id", p=int(post["id"]), a=int(alice.id))
    ids = [r[0] for r in rows]
    first = api.call("list-comments", "GET", f"/{post['id']}", query={"limit": 10})
    assert ids_of(first) == ids[:10]
    assert first.json[0]["content"] == "c1" and first.json[0]["post_id"] == post["id"]
    assert links(first) == {"next": f"/function/list-comments/{post['id']}?limit=10&min_id={ids[9]}",
                            "prev": f"/function/list-comments/{post['id']}?limit=10&max_id={ids[0]}"}
    assert walk_pages(api, first)[0] == ids
    # max_id alone: the comments just before it, still oldest first
    before = api.call("list-comments", "GET", f"/{post['id']}", query={"max_id": ids[20], "limit": 5})
    assert ids_of(before) == ids[15:20]
    assert ids_of(api.call("list-comments", "GET", f"/{post['id']}", query={"since_id": ids[22]})) == ids[23:]


@pytest.mark.parametrize(("path", "query", "status"), [
    ("/888888", None, 404), ("/abc", None, 404), ("/", None, 404),
    ("/{post}", {"limit": "x"}, 400), ("/{post}", {"max_id": "-3"}, 400), ("/{post}", {"min_id": "a"}, 400),
])
def test_list_comments_errors(api: Api, path: str, query: dict[str, str] | None, status: int) -> None:
    alice = api.account("alice")
    post = create(api, alice)
    assert_clean_error(api.call("list-comments", "GET", path.format(post=post["id"]), query=query), status)


def test_list_comments_of_post_without_comments_is_empty(api: Api) -> None:
    alice = api.account("alice")
    post = create(api, alice)
    response = api.call("list-comments", "GET", f"/{post['id']}")
    assert response.status_code == 200 and response.json == [] and "Link" not in response.headers
    assert not re.search("SELECT", response.get_data(as_text=True))
