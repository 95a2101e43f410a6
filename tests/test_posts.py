"""create-post, get-post, update-post, delete-post and list-posts against real PostgreSQL and Redis."""

from __future__ import annotations

import re
from typing import Any

import pytest

from minitwitter import cache, db, invalidation, jobs
from tests.api import Account, Api
from tests.conftest import at_once, writing_meanwhile

TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
SQL_WORDS = ("SELECT", "INSERT", "UPDATE ", "DELETE FROM", "violates", "psycopg", "pg8000")


def create(api: Api, account: Account, content: str = "hello world", **kw: Any) -> dict[str, Any]:
    response = api.call("create-post", "POST", json={"content": content}, token=account.token, **kw)
    assert response.status_code == 201, response.get_data(as_text=True)
    return response.json


def assert_clean_error(response: Any, status: int) -> None:
    """An error response: the status, ``{"error", "details"}`` and no SQL or traceback."""
    assert response.status_code == status, response.get_data(as_text=True)
    assert set(response.json) == {"error", "details"}
    text = response.get_data(as_text=True)
    assert not any(word in text for word in SQL_WORDS)
    assert "Traceback" not in text


# --- create-post ---------------------------------------------------------------------------

def test_create_post_returns_the_post_with_pending_sentiment(api: Api) -> None:
    alice = api.account("alice")
    response = api.call("create-post", "POST", json={"content": "  Hello, world!  "}, token=alice.token)
    assert response.status_code == 201
    post = response.json
    assert post["content"] == "Hello, world!"
    assert isinstance(post["id"], str) and post["id"].isdigit()
    assert post["author"] == {"id": alice.id, "username": "alice", "display_name": ""}
    assert TS.match(post["created_at"]) and TS.match(post["updated_at"])
    assert post["edited_at"] is None
    assert (post["likes_count"], post["comments_count"], post["liked"]) == (0, 0, False)
    assert post["sentiment"] == {"status": "pending", "label": None, "score": None, "model": None}
    assert response.headers["Location"] == f"/function/get-post/{post['id']}"
    # what create-post answers from its insert's defaults is what the stored row says
    assert api.call("get-post", "GET", f"/{post['id']}", token=alice.token).json == post
    row = db.one("SELECT author_id, content, sentiment_status, sentiment_version FROM posts WHERE id = :id",
                 id=int(post["id"]))
    assert row == [int(alice.id), "Hello, world!", "pending", 1]
    assert db.scalar("SELECT posts_count FROM users WHERE id = :id", id=int(alice.id)) == 1
    # the sentiment job was queued after the commit
    assert any(t.decode().startswith(f"post:{post['id']}:1:")
               for t in cache.client().lrange(jobs.TODO_KEY, 0, -1))


def test_content_is_counted_in_code_points(api: Api) -> None:
    alice = api.account("alice")
    emoji = "\U0001F600" * 280  # 280 code points, 1,120 UTF-8 bytes
    assert create(api, alice, emoji)["content"] == emoji
    response = api.call("create-post", "POST", json={"content": emoji + "x"}, token=alice.token)
    assert_clean_error(response, 422)
    assert "content" in response.json["details"]


@pytest.mark.parametrize(("body", "status", "field"), [
    ({}, 422, "content"),
    ({"content": ""}, 422, "content"),
    ({"content": "   \n\t "}, 422, "content"),
    ({"content": "x" * 281}, 422, "content"),
    ({"content": 42}, 422, "content"),
    ({"content": None}, 422, "content"),
    ({"content": ["a"]}, 422, "content"),
    ({"content": "ok", "author_id": 1}, 422, "author_id"),
    ({"content": "ok", "likes_count": 100}, 422, "likes_count"),
    ({"content": "ok", "callback_url": "ftp://example.com/x"}, 422, "callback_url"),
    ({"content": "ok", "callback_url": "http://169.254.169.254/latest"}, 422, "callback_url"),
    ({"content": "ok", "callback_url": 5}, 422, "callback_url"),
])
def test_create_post_validation(api: Api, body: dict[str, Any], status: int, field: str) -> None:
    alice = api.account("alice")
    response = api.call("create-post", "POST", json=body, token=alice.token)
    assert_clean_error(response, status)
    assert field in response.json["details"]
    assert db.scalar("SELECT count(*) FROM posts") == 0


@pytest.mark.parametrize(("data", "content_type"), [
    (b"{not json", "application/json"),
    (b"[1, 2]", "application/json"),
    (b"", "application/json"),
    (b"content=hi", "application/x-www-form-urlencoded"),
])
def test_create_post_malformed_body_is_400(api: Api, data: bytes, content_type: str) -> None:
    alice = api.account("alice")
    response = api.call("create-post", "POST", data=data, token=alice.token,
                        headers={"Content-Type": content_type})
    assert_clean_error(response, 400)


def test_create_post_body_too_large_is_413(api: Api) -> None:
    alice = api.account("alice")
    response = api.call("create-post", "POST", data=b'{"content": "' + b"x" * 70000 + b'"}',
                        token=alice.token, headers={"Content-Type": "application/json"})
    assert_clean_error(response, 413)


@pytest.mark.parametrize("auth", [None, "Bearer nonsense", "Basic YWRtaW46YWRtaW4=", "Bearer "])
def test_create_post_requires_a_valid_token(api: Api, auth: str | None) -> None:
    headers = {"Authorization": auth} if auth else {}
    response = api.call("create-post", "POST", json={"content": "hi"}, headers=headers)
    assert_clean_error(response, 401)
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_idempotency_key_replays_the_original_post(api: Api) -> None:
    alice = api.account("alice")
    headers = {"Idempotency-Key": "k-1"}
    first = api.call("create-post", "POST", json={"content": "once"}, token=alice.token, headers=headers)
    again = api.call("create-post", "POST", json={"content": "once"}, token=alice.token, headers=headers)
    assert first.status_code == 201 and "Idempotent-Replayed" not in first.headers
    assert again.status_code == 200 and again.headers["Idempotent-Replayed"] == "true"
    assert again.json["id"] == first.json["id"]
    assert db.scalar("SELECT count(*) FROM posts") == 1
    other = api.call("create-post", "POST", json={"content": "once"}, token=alice.token,
                     headers={"Idempotency-Key": "k-2"})
    assert other.status_code == 201 and other.json["id"] != first.json["id"]
    # another account's identical key is its own key
    bob = api.account("bob")
    bobs = api.call("create-post", "POST", json={"content": "once"}, token=bob.token, headers=headers)
    assert bobs.status_code == 201
    assert db.scalar("SELECT count(*) FROM posts") == 3


def test_concurrent_retries_with_one_key_create_one_post(api: Api) -> None:
    alice = api.account("alice")
    results = at_once(lambda: api.call("create-post", "POST", json={"content": "race"}, token=alice.token,
                                       headers={"Idempotency-Key": "same"}), 6)
    assert sorted(r.status_code for r in results) == [200] * 5 + [201]
    assert len({r.json["id"] for r in results}) == 1
    assert db.scalar("SELECT count(*) FROM posts") == 1


def test_idempotency_key_of_a_deleted_post_is_409(api: Api) -> None:
    alice = api.account("alice")
    post = create(api, alice, headers={"Idempotency-Key": "gone"})
    assert api.call("delete-post", "DELETE", f"/{post['id']}", token=alice.token).status_code == 204
    again = api.call("create-post", "POST", json={"content": "hello world"}, token=alice.token,
                     headers={"Idempotency-Key": "gone"})
    assert_clean_error(again, 409)


@pytest.mark.parametrize("key", ["x" * 256, "caf\u00e9", "tab\there"])
def test_invalid_idempotency_key_is_400(api: Api, key: str) -> None:
    alice = api.account("alice")
    response = api.call("create-post", "POST", json={"content": "x"}, token=alice.token,
                        headers={"Idempotency-Key": key.encode("utf-8").decode("latin-1")})
    assert_clean_error(response, 400)
    assert "Idempotency-Key" in response.json["details"]


def test_callback_url_is_registered_in_the_same_write(api: Api) -> None:
    alice = api.account("alice")
    by_header = create(api, alice, "a", headers={"X-Callback-Url": "http://127.0.0.1:9/hook"})
    response = api.call("create-post", "POST", token=alice.token,
                        json={"content": "b", "callback_url": "http://localhost:9/other"})
    assert response.status_code == 201
    rows = db.run("SELECT kind, item_id, version, url, call_id IS NOT NULL FROM sentiment_callbacks ORDER BY id")
    assert rows == [["post", int(by_header["id"]), 1, "http://127.0.0.1:9/hook", True],
                    ["post", int(response.json["id"]), 1, "http://localhost:9/other", True]]
    clash = api.call("create-post", "POST", token=alice.token, headers={"X-Callback-Url": "http://127.0.0.1:9/a"},
                     json={"content": "c", "callback_url": "http://127.0.0.1:9/b"})
    assert_clean_error(clash, 422)
    bad = api.call("create-post", "POST", json={"content": "d"}, token=alice.token,
                   headers={"X-Callback-Url": "http://10.1.2.3/private"})
    assert_clean_error(bad, 422)
    assert db.scalar("SELECT count(*) FROM posts") == 2


# --- get-post --------------------------------------------------------------------------------

def test_get_post_shows_counts_and_the_viewers_like(api: Api) -> None:
    alice, bob = api.account("alice"), api.account("bob")
    post = create(api, alice)
    api.call("like-post", "POST", f"/{post['id']}", token=bob.token)
    anonymous = api.call("get-post", "GET", f"/{post['id']}")
    assert anonymous.status_code == 200
    assert anonymous.json["likes_count"] == 1 and anonymous.json["liked"] is False
    as_bob = api.call("get-post", "GET", f"/{post['id']}", token=bob.token)
    assert as_bob.json["liked"] is True
    as_alice = api.call("get-post", "GET", f"/{post['id']}", token=alice.token)
    assert as_alice.json["liked"] is False
    assert api.call("get-post", "GET", f"/{post['id']}", token="garbage").status_code == 401


@pytest.mark.parametrize("path", ["/999999", "/abc", "/0", "/-1", "/99999999999999999999", "/", "/1/2"])
def test_get_post_unknown_is_404(api: Api, path: str) -> None:
    api.account("alice")
    assert_clean_error(api.call("get-post", "GET", path), 404)


# --- update-post -----------------------------------------------------------------------------

def test_update_post_by_author_resets_sentiment(api: Api) -> None:
    alice = api.account("alice")
    post = create(api, alice, "before")
    db.run("UPDATE posts SET sentiment_status = 'done', sentiment_label = 'neutral', sentiment_score = 0.5, "
           "sentiment_model = 'vader' WHERE id = :id", id=int(post["id"]))
    for method, text in (("PATCH", "after"), ("PUT", "after again")):
        response = api.call("update-post", method, f"/{post['id']}", json={"content": f" {text} "},
                            token=alice.token, headers={"X-Callback-Url": "http://127.0.0.1:9/edit"})
        assert response.status_code == 200, response.json
        assert response.json["content"] == text
        assert TS.match(response.json["edited_at"])
        assert response.json["sentiment"] == {"status": "pending", "label": None, "score": None, "model": None}
    assert db.scalar("SELECT sentiment_version FROM posts WHERE id = :id", id=int(post["id"])) == 3
    assert db.run("SELECT version FROM sentiment_callbacks ORDER BY id") == [[2], [3]]
    tokens = [t.decode() for t in cache.client().lrange(jobs.TODO_KEY, 0, -1)]
    assert any(t.startswith(f"post:{post['id']}:3:") for t in tokens)


@pytest.mark.parametrize(("body", "field"), [
    ({}, "content"), ({"content": ""}, "content"), ({"content": "x" * 281}, "content"),
    ({"content": "ok", "edited_at": "2020-01-01T00:00:00Z"}, "edited_at"),
])
def test_update_post_validation(api: Api, body: dict[str, Any], field: str) -> None:
    alice = api.account("alice")
    post = create(api, alice, "keep")
    response = api.call("update-post", "PATCH", f"/{post['id']}", json=body, token=alice.token)
    assert_clean_error(response, 422)
    assert field in response.json["details"]
    assert db.scalar("SELECT content FROM posts WHERE id = :id", id=int(post["id"])) == "keep"


# --- authorization matrix for every post write ------------------------------------------------

WRITES = [
    ("update-post", "PATCH", "/{id}", {"content": "changed"}),
    ("update-post", "PUT", "/{id}", {"content": "changed"}),
    ("delete-post", "DELETE", "/{id}", None),
]


@pytest.mark.parametrize(("function", "method", "path", "body"), WRITES)
@pytest.mark.parametrize("who", ["anonymous", "other", "owner"])
def test_post_write_authorization_matrix(api: Api, function: str, method: str, path: str,
                                         body: dict[str, Any] | None, who: str) -> None:
    alice, bob = api.account("alice"), api.account("bob")
    post = create(api, alice, "original")
    token = {"anonymous": None, "other": bob.token, "owner": alice.token}[who]
    response = api.call(function, method, path.format(id=post["id"]), json=body, token=token)
    content = db.scalar("SELECT content FROM posts WHERE id = :id", id=int(post["id"]))
    if who == "anonymous":
        assert_clean_error(response, 401)
        assert content == "original"
    elif who == "other":
        # 404, not 403: someone else's post is indistinguishable from a missing one
        assert_clean_error(response, 404)
        assert response.json == api.call(function, method, "/987654", json=body, token=bob.token).json
        assert content == "original"
    else:
        assert response.status_code == (204 if method == "DELETE" else 200)
        assert content == (None if method == "DELETE" else "changed")


def test_delete_post_cascades_likes_and_comments(api: Api) -> None:
    alice, bob = api.account("alice"), api.account("bob")
    post = create(api, alice)
    api.call("like-post", "POST", f"/{post['id']}", token=bob.token)
    api.call("add-comment", "POST", f"/{post['id']}", json={"content": "hi"}, token=bob.token)
    response = api.call("delete-post", "DELETE", f"/{post['id']}", token=alice.token)
    assert response.status_code == 204 and response.get_data() == b""
    assert db.scalar("SELECT count(*) FROM likes") == 0
    assert db.scalar("SELECT count(*) FROM comments") == 0
    assert db.scalar("SELECT posts_count FROM users WHERE id = :id", id=int(alice.id)) == 0
    assert api.call("get-post", "GET", f"/{post['id']}").status_code == 404
    assert api.call("list-comments", "GET", f"/{post['id']}").status_code == 404
    assert_clean_error(api.call("delete-post", "DELETE", f"/{post['id']}", token=alice.token), 404)


# --- 405 on every function ----------------------------------------------------------------------

@pytest.mark.parametrize(("function", "method", "allowed"), [
    ("create-post", "GET", "POST"), ("create-post", "DELETE", "POST"),
    ("get-post", "POST", "GET"), ("get-post", "DELETE", "GET"),
    ("update-post", "POST", "PATCH, PUT"), ("update-post", "GET", "PATCH, PUT"),
    ("delete-post", "GET", "DELETE"), ("delete-post", "POST", "DELETE"),
    ("list-posts", "POST", "GET"), ("home-timeline", "POST", "GET"),
    ("like-post", "GET", "DELETE, POST"), ("like-post", "PUT", "DELETE, POST"),
    ("add-comment", "GET", "DELETE, POST"), ("add-comment", "PATCH", "DELETE, POST"),
    ("list-comments", "POST", "GET"), ("list-comments", "DELETE", "GET"),
])
def test_other_methods_are_405_with_allow(api: Api, function: str, method: str, allowed: str) -> None:
    response = api.call(function, method, "/1")
    assert_clean_error(response, 405)
    assert response.headers["Allow"] == allowed


# --- list-posts ---------------------------------------------------------------------------------

def seed(author_id: int, count: int, content: str = "post {i}") -> list[int]:
    """Insert ``count`` posts directly (fast), returning their ids oldest first."""
    rows = db.run("INSERT INTO posts (author_id, content) SELECT :a, replace(:c, '{i}', g::text) "
                  "FROM generate_series(1, :n) g RETURNING id", a=author_id, c=content, n=count)
    invalidation.invalidate_posts([row[0] for row in rows])  # as the API's writes do
    return [row[0] for row in rows]


def ids_of(response: Any) -> list[int]:
    assert response.status_code == 200, response.get_data(as_text=True)
    return [int(p["id"]) for p in response.json]


def links(response: Any) -> dict[str, str]:
    found = dict((rel, url) for url, rel in re.findall(r'<([^>]+)>; rel="(\w+)"', response.headers.get("Link", "")))
    return found


def follow_link(api: Api, url: str, **kw: Any) -> Any:
    function, _, query = url.removeprefix("/function/").partition("?")
    name, _, rest = function.partition("/")
    return api.call(name, "GET", "/" + rest, query=query, **kw)


def walk_pages(api: Api, first: Any, **kw: Any) -> tuple[list[int], list[str]]:
    """Follow rel="next" from ``first`` to the end: (every id seen, every next link followed)."""
    seen: list[int] = []
    followed: list[str] = []
    response = first
    while True:
        seen += ids_of(response)
        if "next" not in links(response):
            return seen, followed
        followed.append(links(response)["next"])
        response = follow_link(api, followed[-1], **kw)


def test_list_posts_pages_newest_first_with_links(api: Api) -> None:
    alice = api.account("alice")
    ids = seed(int(alice.id), 45)
    first = api.call("list-posts", "GET", "/")
    assert first.json and isinstance(first.json, list)
    assert ids_of(first) == ids[::-1][:20]
    assert links(first) == {"next": f"/function/list-posts?max_id={ids[25]}",
                            "prev": f"/function/list-posts?min_id={ids[44]}"}
    assert walk_pages(api, first)[0] == ids[::-1]
    # prev from the second page leads back to the first
    second = follow_link(api, links(first)["next"])
    assert ids_of(follow_link(api, links(second)["prev"])) == ids[::-1][:20]
    # since_id: newest first above the bound; min_id: the page just after the bound
    assert ids_of(api.call("list-posts", "GET", "/", query={"since_id": ids[10], "limit": 5})) == ids[::-1][:5]
    assert ids_of(api.call("list-posts", "GET", "/", query={"min_id": ids[10], "limit": 5})) == ids[15:10:-1]
    both = api.call("list-posts", "GET", "/", query={"max_id": ids[20], "since_id": ids[10]})
    assert ids_of(both) == ids[19:10:-1]


def test_list_posts_limit_default_max_and_clamp(api: Api) -> None:
    alice = api.account("alice")
    seed(int(alice.id), 120)
    assert len(ids_of(api.call("list-posts", "GET", "/"))) == 20
    assert len(ids_of(api.call("list-posts", "GET", "/", query={"limit": 100}))) == 100
    clamped = api.call("list-posts", "GET", "/", query={"limit": 500})
    assert len(ids_of(clamped)) == 100
    assert "limit=100" in links(clamped)["next"]
    assert len(ids_of(api.call("list-posts", "GET", "/", query={"limit": 1}))) == 1


@pytest.mark.parametrize("query", [
    {"limit": "0"}, {"limit": "-1"}, {"limit": "ten"}, {"limit": "1.5"},
    {"max_id": "abc"}, {"max_id": "-5"}, {"since_id": "1e3"}, {"min_id": "0"},
    {"max_id": "99999999999999999999"}, {"sentiment": "happy"}, {"author": "no such!"},
    {"q": "x" * 201},
])
def test_list_posts_bad_parameters_are_400(api: Api, query: dict[str, str]) -> None:
    response = api.call("list-posts", "GET", "/", query=query)
    assert_clean_error(response, 400)
    assert set(response.json["details"]) == set(query)


def test_list_posts_filters(api: Api) -> None:
    alice, bob = api.account("alice"), api.account("bob")
    a = seed(int(alice.id), 3, "alice writes about cats {i}")
    b = seed(int(bob.id), 3, "bob writes about dogs {i}")
    db.run("UPDATE posts SET sentiment_status = 'done', sentiment_label = 'positive' WHERE id = ANY(:ids)",
           ids=[a[0], b[1]])
    assert ids_of(api.call("list-posts", "GET", "/", query={"author": "alice"})) == a[::-1]
    assert ids_of(api.call("list-posts", "GET", "/", query={"author": "ALICE"})) == a[::-1]
    assert ids_of(api.call("list-posts", "GET", "/", query={"author": "nobody"})) == []
    assert ids_of(api.call("list-posts", "GET", "/", query={"sentiment": "positive"})) == [b[1], a[0]]
    assert ids_of(api.call("list-posts", "GET", "/", query={"q": "dogs"})) == b[::-1]
    assert ids_of(api.call("list-posts", "GET", "/", query={"q": "cats 2"})) == [a[1]]
    assert ids_of(api.call("list-posts", "GET", "/", query={"q": "'; DROP TABLE posts; --"})) == []
    combined = api.call("list-posts", "GET", "/", query={"author": "bob", "sentiment": "positive", "limit": 1})
    assert ids_of(combined) == [b[1]]
    assert links(combined)["next"] == f"/function/list-posts?author=bob&sentiment=positive&limit=1&max_id={b[1]}"
    assert ids_of(follow_link(api, links(combined)["next"])) == []


def test_list_posts_shows_the_viewers_likes(api: Api) -> None:
    alice, bob = api.account("alice"), api.account("bob")
    ids = seed(int(alice.id), 3)
    api.call("like-post", "POST", f"/{ids[1]}", token=bob.token)
    for _ in range(2):  # a miss then a cache hit
        as_bob = api.call("list-posts", "GET", "/", token=bob.token).json
        assert [p["liked"] for p in as_bob] == [False, True, False]
        anonymous = api.call("list-posts", "GET", "/").json
        assert [p["liked"] for p in anonymous] == [False, False, False]
        assert [p["likes_count"] for p in anonymous] == [0, 1, 0]
    filtered = api.call("list-posts", "GET", "/", query={"author": "alice"}, token=bob.token).json
    assert [p["liked"] for p in filtered] == [False, True, False]


def test_pagination_stays_correct_while_posts_are_inserted(api: Api) -> None:
    """Paging with max_id while other threads insert: no post is skipped or repeated."""
    alice = api.account("alice")
    initial = seed(int(alice.id), 150)
    with writing_meanwhile(lambda: int(create(api, alice, "concurrent")["id"])) as inserted:
        first = api.call("list-posts", "GET", "/", query={"limit": 7})
        top = ids_of(first)[0]
        seen, _ = walk_pages(api, first)
    assert seen == sorted(seen, reverse=True) and len(seen) == len(set(seen))
    # exactly the posts that existed at or below the first page's newest id, in order
    expected = sorted((i for i in initial + inserted if i <= top), reverse=True)
    assert seen == expected
    # and a min_id walk from the top collects everything inserted meanwhile
    newer: list[int] = []
    cursor = top
    while True:
        page = ids_of(api.call("list-posts", "GET", "/", query={"min_id": cursor, "limit": 5}))
        if not page:
            break
        newer += page
        cursor = page[0]
    assert sorted(newer) == sorted(i for i in inserted if i > top)
