"""Every kind of write is visible on the next read although posts, counts, the public timeline's
first page, comment pages and home feeds are cached in Redis."""

from __future__ import annotations

from typing import Any

import pytest
import redis

from minitwitter import cache, db, homefeed, invalidation, versioned_cache
from tests.api import Account, Api
from tests.conftest import record_redis_writes
from tests.test_posts import create, ids_of
from tests.test_timelines import follow, home


def views(api: Api, post_id: str, viewer: Account) -> dict[str, Any]:
    """Every cached view that shows the post: read twice so the second read is a cache hit."""
    for _ in range(2):
        result = {
            "get": api.call("get-post", "GET", f"/{post_id}").json,
            "get_as_viewer": api.call("get-post", "GET", f"/{post_id}", token=viewer.token).json,
            "list": api.call("list-posts", "GET", "/").json,
            "list_100": api.call("list-posts", "GET", "/", query={"limit": 100}).json,
            "list_as_viewer": api.call("list-posts", "GET", "/", token=viewer.token).json,
            "comments": api.call("list-comments", "GET", f"/{post_id}").json,
            "home": api.call("home-timeline", "GET", "/", token=viewer.token).json,
        }
    return result


def in_list(listing: list[dict[str, Any]], post_id: str) -> dict[str, Any] | None:
    return next((p for p in listing if p["id"] == post_id), None)


def test_reads_are_served_from_the_cache(api: Api) -> None:
    """A change behind the cache's back stays invisible until invalidated: the cache is real."""
    alice = api.account("alice")
    post = create(api, alice, "cached")
    views(api, post["id"], alice)
    db.run("UPDATE posts SET content = 'sneaky' WHERE id = :id", id=int(post["id"]))
    assert api.call("get-post", "GET", f"/{post['id']}").json["content"] == "cached"
    assert api.call("list-posts", "GET", "/").json[0]["content"] == "cached"
    assert api.call("home-timeline", "GET", "/", token=alice.token).json[0]["content"] == "cached"
    invalidation.invalidate_post(int(post["id"]))
    assert api.call("get-post", "GET", f"/{post['id']}").json["content"] == "sneaky"
    assert api.call("list-posts", "GET", "/").json[0]["content"] == "sneaky"
    assert api.call("home-timeline", "GET", "/", token=alice.token).json[0]["content"] == "sneaky"


def test_create_update_delete_are_visible_everywhere(api: Api) -> None:
    alice, bob = api.account("alice"), api.account("bob")
    first = create(api, alice, "first")
    views(api, first["id"], bob)
    second = create(api, alice, "second")
    seen = views(api, second["id"], bob)
    assert [p["id"] for p in seen["list"]] == [second["id"], first["id"]]
    assert [p["id"] for p in seen["list_100"]] == [second["id"], first["id"]]
    views(api, first["id"], alice)
    edited = api.call("update-post", "PATCH", f"/{first['id']}", json={"content": "first, edited"}, token=alice.token)
    assert edited.status_code == 200
    assert in_list(views(api, first["id"], alice)["home"], first["id"])["content"] == "first, edited"
    seen = views(api, first["id"], bob)
    assert seen["get"]["content"] == "first, edited" and seen["get"]["edited_at"]
    assert in_list(seen["list"], first["id"])["content"] == "first, edited"
    assert in_list(seen["list_as_viewer"], first["id"])["content"] == "first, edited"
    assert api.call("delete-post", "DELETE", f"/{first['id']}", token=alice.token).status_code == 204
    assert api.call("get-post", "GET", f"/{first['id']}").status_code == 404
    assert api.call("list-comments", "GET", f"/{first['id']}").status_code == 404
    assert [p["id"] for p in api.call("list-posts", "GET", "/").json] == [second["id"]]
    assert [p["id"] for p in api.call("list-posts", "GET", "/", query={"limit": 100}).json] == [second["id"]]


def test_like_and_unlike_are_visible_everywhere(api: Api) -> None:
    alice, bob = api.account("alice"), api.account("bob")
    post = create(api, alice)
    follow(api, bob, alice)
    views(api, post["id"], bob)
    home(api, bob)
    api.call("like-post", "POST", f"/{post['id']}", token=bob.token)
    seen = views(api, post["id"], bob)
    assert (seen["get"]["likes_count"], seen["get"]["liked"]) == (1, False)
    assert (seen["get_as_viewer"]["likes_count"], seen["get_as_viewer"]["liked"]) == (1, True)
    assert (seen["list"][0]["likes_count"], seen["list"][0]["liked"]) == (1, False)
    assert (seen["list_as_viewer"][0]["likes_count"], seen["list_as_viewer"][0]["liked"]) == (1, True)
    assert (seen["home"][0]["likes_count"], seen["home"][0]["liked"]) == (1, True)
    as_alice = api.call("home-timeline", "GET", "/", token=alice.token).json[0]
    assert (as_alice["likes_count"], as_alice["liked"]) == (1, False)  # the cached object is nobody's
    api.call("like-post", "DELETE", f"/{post['id']}", token=bob.token)
    seen = views(api, post["id"], bob)
    assert (seen["home"][0]["likes_count"], seen["home"][0]["liked"]) == (0, False)
    assert seen["get_as_viewer"]["likes_count"] == 0 and seen["get_as_viewer"]["liked"] is False
    assert seen["list_as_viewer"][0]["likes_count"] == 0 and seen["list_as_viewer"][0]["liked"] is False


def test_comment_add_and_delete_are_visible_everywhere(api: Api) -> None:
    alice, bob = api.account("alice"), api.account("bob")
    post = create(api, alice)
    views(api, post["id"], bob)
    made = api.call("add-comment", "POST", f"/{post['id']}", json={"content": "hey"}, token=bob.token).json
    seen = views(api, post["id"], bob)
    assert [c["id"] for c in seen["comments"]] == [made["id"]]
    assert seen["get"]["comments_count"] == 1 and seen["list"][0]["comments_count"] == 1
    api.call("add-comment", "DELETE", f"/{post['id']}/{made['id']}", token=bob.token)
    seen = views(api, post["id"], bob)
    assert seen["comments"] == []
    assert seen["get"]["comments_count"] == 0 and seen["list_100"][0]["comments_count"] == 0


def test_follow_and_unfollow_are_visible_in_home(api: Api) -> None:
    alice, bob = api.account("alice"), api.account("bob")
    post = int(create(api, alice)["id"])
    assert home(api, bob) == []
    follow(api, bob, alice)
    assert home(api, bob) == [post]
    follow(api, bob, alice, "DELETE")
    assert home(api, bob) == []


def test_sentiment_verdict_is_visible_after_invalidate_post(api: Api) -> None:
    alice = api.account("alice")
    post = create(api, alice, "what a lovely day")
    views(api, post["id"], alice)
    db.run("UPDATE posts SET sentiment_status = 'done', sentiment_label = 'positive', sentiment_score = 0.9, "
           "sentiment_model = 'vader' WHERE id = :id", id=int(post["id"]))
    invalidation.invalidate_post(int(post["id"]))
    verdict = {"status": "done", "label": "positive", "score": 0.9, "model": "vader"}
    seen = views(api, post["id"], alice)
    assert seen["get"]["sentiment"] == verdict and seen["get_as_viewer"]["sentiment"] == verdict
    assert seen["list"][0]["sentiment"] == verdict and seen["list_100"][0]["sentiment"] == verdict
    assert seen["home"][0]["sentiment"] == verdict
    assert api.call("list-posts", "GET", "/", query={"sentiment": "positive"}).json[0]["id"] == post["id"]


def test_comment_verdict_is_visible_after_invalidate_comment(api: Api) -> None:
    alice = api.account("alice")
    post = create(api, alice)
    made = api.call("add-comment", "POST", f"/{post['id']}", json={"content": "awful"}, token=alice.token).json
    views(api, post["id"], alice)
    db.run("UPDATE comments SET sentiment_status = 'done', sentiment_label = 'negative', sentiment_score = -0.7, "
           "sentiment_model = 'vader' WHERE id = :id", id=int(made["id"]))
    invalidation.invalidate_comment(int(post["id"]), int(made["id"]))
    listed = api.call("list-comments", "GET", f"/{post['id']}").json
    assert listed[0]["sentiment"] == {"status": "done", "label": "negative", "score": -0.7, "model": "vader"}


def test_a_slow_reader_cannot_store_a_stale_value() -> None:
    """A fill computed before a write (generation bump) is refused."""
    cache_ = versioned_cache.VersionedCache("test", 60)
    seen = cache_.get("race:key", ["d"])
    assert seen is not None and seen[0] == [None]
    cache_.bump("race:key")  # a write commits while the reader was querying
    cache_.fill("race:key", seen[1], {"d": b"stale"})
    assert cache.client().hget("race:key", "d") is None
    fresh = cache_.get("race:key", ["d"])
    cache_.fill("race:key", fresh[1], {"d": b"fresh"})
    assert cache_.get("race:key", ["d"])[0] == [b"fresh"]


@pytest.mark.parametrize("limit", [1, 20, 100])
def test_public_first_page_cache_is_per_limit(api: Api, limit: int) -> None:
    alice = api.account("alice")
    for i in range(3):
        create(api, alice, f"p{i}")
    for _ in range(2):
        response = api.call("list-posts", "GET", "/", query={"limit": limit})
        assert len(ids_of(response)) == min(limit, 3)
        assert ("next" in response.headers.get("Link", "")) is (limit == 1)
    assert cache.client().hget(invalidation.PUBLIC_KEY, str(limit)) is not None


# --- the account view (get-user) -----------------------------------------------------------------

def profile(api: Api, name: str) -> dict[str, Any]:
    """The anonymous view of an account by name and by id, read twice (the second is a hit)."""
    for _ in range(2):
        by_name = api.call("get-user", "GET", f"/{name}").json
        by_id = api.call("get-user", "GET", f"/id/{by_name['id']}").json
        assert by_name == by_id
    return by_name


def test_account_view_is_served_from_the_cache(api: Api) -> None:
    """A change behind the cache's back stays invisible until invalidated: the cache is real."""
    alice = api.account("alice")
    assert profile(api, "alice")["bio"] == ""
    db.run("UPDATE users SET bio = 'sneaky' WHERE id = :id", id=int(alice.id))
    assert profile(api, "alice")["bio"] == ""
    assert api.call("get-user", "GET", "/me", token=alice.token).json["bio"] == "sneaky"  # own view: PostgreSQL
    invalidation.invalidate_accounts(int(alice.id))
    assert profile(api, "alice")["bio"] == "sneaky"


def test_every_write_an_account_view_shows_is_visible(api: Api) -> None:
    from tests.test_sentiment_jobs import run_worker

    alice, bob = api.account("alice"), api.account("bob")
    assert profile(api, "alice")["posts_count"] == 0
    post = create(api, alice, "what a lovely, wonderful day")
    seen = profile(api, "alice")
    assert seen["posts_count"] == 1 and seen["sentiment_summary"]["pending"] == 1
    run_worker()  # the real sentiment job records the verdict
    summary = profile(api, "alice")["sentiment_summary"]
    assert (summary["pending"], summary["positive"], summary["dominant"]) == (0, 1, "positive")
    edited = api.call("update-post", "PATCH", f"/{post['id']}", json={"content": "hmm"}, token=alice.token)
    assert edited.status_code == 200
    assert profile(api, "alice")["sentiment_summary"]["pending"] == 1
    follow(api, bob, alice)
    assert profile(api, "alice")["followers_count"] == 1 and profile(api, "bob")["following_count"] == 1
    follow(api, bob, alice, "DELETE")
    assert profile(api, "alice")["followers_count"] == 0 and profile(api, "bob")["following_count"] == 0
    changed = api.call("update-user", "PATCH", "/me", json={"display_name": "Alice A."}, token=alice.token)
    assert changed.status_code == 200
    assert profile(api, "alice")["display_name"] == "Alice A."
    changed = api.call("update-user", "PATCH", "/me", json={"bio": "Writes about days."}, token=alice.token)
    assert changed.status_code == 200
    assert profile(api, "alice")["bio"] == "Writes about days."
    assert api.call("delete-post", "DELETE", f"/{post['id']}", token=alice.token).status_code == 204
    seen = profile(api, "alice")
    assert seen["posts_count"] == 0 and seen["sentiment_summary"]["posts"] == 0


def test_a_display_name_change_is_visible_in_every_post_and_comment_view(
        api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    """Posts and comments embed their author's display name: a profile edit must reach the
    cached post objects, timeline pages and comment pages that hold it (sent in several round
    trips here, as for an author with many posts)."""
    monkeypatch.setattr(invalidation, "INVALIDATION_CHUNK", 2)
    alice, bob = api.account("alice"), api.account("bob")
    post = create(api, alice, "by alice")
    other = create(api, bob, "by bob")
    for target in (post, other):
        added = api.call("add-comment", "POST", f"/{target['id']}", json={"content": "alice says hi"},
                         token=alice.token)
        assert added.status_code == 201
    views(api, post["id"], bob)
    views(api, other["id"], bob)
    changed = api.call("update-user", "PATCH", "/me", json={"display_name": "Alice A."}, token=alice.token)
    assert changed.status_code == 200
    for target in (post, other):
        seen = views(api, target["id"], alice)
        assert [c["author"]["display_name"] for c in seen["comments"]] == ["Alice A."]
    seen = views(api, post["id"], alice)
    assert seen["get"]["author"]["display_name"] == "Alice A."
    assert seen["get_as_viewer"]["author"]["display_name"] == "Alice A."
    for listing in ("list", "list_100", "list_as_viewer"):
        assert in_list(seen[listing], post["id"])["author"]["display_name"] == "Alice A."
    assert in_list(seen["home"], post["id"])["author"]["display_name"] == "Alice A."


def test_batched_invalidation_is_one_write_and_survives_a_script_flush(
        api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    """A post write bumps the post, the public first pages and the author's view together: one
    write on the connection, and a Redis that lost its scripts (NOSCRIPT) still gets them all."""
    alice = api.account("alice")
    post = create(api, alice, "bumped")
    keys = [invalidation.post_key(int(post["id"])), invalidation.PUBLIC_KEY, invalidation.account_key(int(alice.id))]
    r = cache.client()
    before = [r.hget(key, "g") for key in keys]
    writes = record_redis_writes(monkeypatch)
    invalidation.invalidate_post(int(post["id"]), int(alice.id))
    middle = [r.hget(key, "g") for key in keys]
    assert len(writes) == 1 + len(keys)  # the bumps in one write, then the three HGETs above
    r.script_flush()
    invalidation.invalidate_post(int(post["id"]), int(alice.id))
    after = [r.hget(key, "g") for key in keys]
    assert all(a != b and b != c for a, b, c in zip(before, middle, after, strict=True))


def test_create_post_sends_its_post_commit_writes_in_one_round_trip(
        api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    """The invalidations, the author's feed push, the fan-out and the sentiment enqueue that
    follow the commit go out in one write before the response, and the next reads see them."""
    from minitwitter import jobs

    alice, bob = api.account("alice"), api.account("bob")
    follow(api, bob, alice)
    first = create(api, alice, "loads the scripts")  # into a Redis an earlier test flushed
    cache.client().delete(homefeed.FAN_OUT_TODO, jobs.TODO_KEY)
    assert home(api, alice) == [int(first["id"])]  # alice's home feed is now cached
    assert api.call("get-user", "GET", "/alice").json["posts_count"] == 1  # her view too
    writes = record_redis_writes(monkeypatch)
    post = create(api, alice, "one trip")
    monkeypatch.undo()

    scripts = [versioned_cache._BUMP.sha, homefeed._PUSH.sha, jobs.TODO_LIST.script.sha]
    marks = [s.encode() for s in scripts] + [homefeed.FAN_OUT_TODO.encode()]
    carrying = [w for w in writes if any(m in w for m in marks)]
    assert len(carrying) == 1
    assert all(s.encode() in carrying[0] for s in scripts) and homefeed.FAN_OUT_TODO.encode() in carrying[0]
    assert carrying[0].count(versioned_cache._BUMP.sha.encode()) == 3  # post, public page, alice
    # ... and all of it is there for the next reads (no worker runs in this test).
    assert home(api, alice) == [int(post["id"]), int(first["id"])]
    assert api.call("get-user", "GET", "/alice").json["posts_count"] == 2
    assert in_list(api.call("list-posts", "GET", "/").json, post["id"]) is not None
    assert cache.client().lrange(homefeed.FAN_OUT_TODO, 0, -1) == [f"add:{post['id']}:{alice.id}".encode()]
    queued = [jobs.parse_token(t) for t in cache.client().lrange(jobs.TODO_KEY, 0, -1)]
    assert [(i.kind, i.id, i.version) for i in queued if i] == [("post", int(post["id"]), 1)]


def test_deferred_writes_wait_for_the_request_and_their_follow_ups_cannot_fail_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """In a request, writes wait for its next round trip; a reply handler that raises is logged,
    and when Redis does not take the writes the failure handler runs once for the group."""
    r = cache.client()
    replies: list[Any] = []

    def explode(reply: Any) -> None:
        replies.append(reply)
        raise RuntimeError("follow-up failed")

    cache.begin_request()
    try:
        cache.write_later([("RPUSH", "t:list", "a"), ("RPUSH", "t:list", "b")], on_reply=explode)
        assert r.llen("t:list") == 0  # nothing sent yet (a command of its own carries nothing)
        assert cache.read("LLEN", "t:list") == 2  # ... and it rides with the next round trip
        assert replies == [1, 2]
    finally:
        cache.end_request()

    failures: list[str] = []
    monkeypatch.setattr(cache, "_send_all", lambda *_a: (_ for _ in ()).throw(redis.ConnectionError("gone")))
    cache.write_later([("RPUSH", "t:list", "c"), ("RPUSH", "t:list", "d")],
                      on_failure=lambda: failures.append("once"))
    assert failures == ["once"]
    monkeypatch.undo()
    cache.reset()
    assert cache.client().llen("t:list") == 2
