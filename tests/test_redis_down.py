"""With Redis stopped, every posts API call still works from PostgreSQL.

The test starts its own redis-server on a free port, points the configuration at it, warms the
caches and then kills it (only that server)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway import embedded
from minitwitter import cache, db, versioned_cache
from minitwitter.config import Config, set_config
from tests.api import Api
from tests.conftest import eventually
from tests.test_posts import create, ids_of
from tests.test_timelines import follow, home, members, run_fan_out

pytestmark = pytest.mark.slow


@pytest.fixture
def own_redis(config: Config, tmp_path: Path) -> Iterator[Any]:
    servers = [embedded.start_redis(tmp_path / "redis", binary=embedded.system_redis_binary())]
    set_config(config.with_overrides(redis_url=servers[0].url))
    cache.reset()

    def restart() -> None:
        """Start Redis again on the same port and data directory (its AOF brings the old data)."""
        servers.append(embedded.start_redis(tmp_path / "redis", port=servers[0].port,
                                            binary=embedded.system_redis_binary()))

    servers[0].restart = restart
    try:
        yield servers[0]
    finally:
        for server in servers:
            server.stop()
        versioned_cache.discard_repairs()
        cache.reset()


def test_everything_works_from_postgres_while_redis_is_down(api: Api, own_redis: Any) -> None:
    alice, bob = api.account("alice"), api.account("bob")
    follow(api, bob, alice)
    warm = create(api, alice, "before the outage")
    api.call("list-posts", "GET", "/")
    api.call("get-post", "GET", f"/{warm['id']}")
    assert home(api, bob) == [int(warm["id"])]
    assert cache.client().exists("tl:public")

    own_redis.stop()

    created = api.call("create-post", "POST", json={"content": "during the outage"}, token=alice.token,
                       headers={"Idempotency-Key": "outage-1", "X-Callback-Url": "http://127.0.0.1:9/cb"})
    assert created.status_code == 201, created.get_data(as_text=True)
    post_id = created.json["id"]
    # the sentiment enqueue failed, the post is committed as pending (the reconciler picks it up)
    assert db.scalar("SELECT sentiment_status FROM posts WHERE id = :id", id=int(post_id)) == "pending"
    assert db.scalar("SELECT count(*) FROM sentiment_callbacks") == 1
    replay = api.call("create-post", "POST", json={"content": "during the outage"}, token=alice.token,
                      headers={"Idempotency-Key": "outage-1"})
    assert (replay.status_code, replay.json["id"]) == (200, post_id)

    assert api.call("get-post", "GET", f"/{post_id}").json["content"] == "during the outage"
    listed = api.call("list-posts", "GET", "/")
    assert ids_of(listed) == [int(post_id), int(warm["id"])]
    assert ids_of(api.call("list-posts", "GET", "/", query={"author": "alice", "limit": 1})) == [int(post_id)]
    liked = api.call("like-post", "POST", f"/{post_id}", token=bob.token)
    assert (liked.status_code, liked.json["likes_count"], liked.json["liked"]) == (200, 1, True)
    assert api.call("list-posts", "GET", "/", token=bob.token).json[0]["liked"] is True
    made = api.call("add-comment", "POST", f"/{post_id}", json={"content": "still here"}, token=bob.token)
    assert made.status_code == 201
    assert [c["id"] for c in api.call("list-comments", "GET", f"/{post_id}").json] == [made.json["id"]]
    assert api.call("get-post", "GET", f"/{post_id}").json["comments_count"] == 1
    assert home(api, bob) == [int(post_id), int(warm["id"])]
    assert home(api, alice, limit=1) == [int(post_id)]
    edited = api.call("update-post", "PATCH", f"/{post_id}", json={"content": "edited"}, token=alice.token)
    assert edited.status_code == 200 and edited.json["content"] == "edited"
    assert api.call("add-comment", "DELETE", f"/{post_id}/{made.json['id']}", token=bob.token).status_code == 204
    assert api.call("like-post", "DELETE", f"/{post_id}", token=bob.token).json["likes_count"] == 0
    assert api.call("delete-post", "DELETE", f"/{warm['id']}", token=alice.token).status_code == 204
    assert ids_of(api.call("list-posts", "GET", "/")) == [int(post_id)]
    assert home(api, bob) == [int(post_id)]
    # the down-state back-off means the calls skipped Redis instead of each waiting for a timeout
    assert cache.is_down()


def test_writes_made_during_an_outage_are_visible_after_redis_returns_with_old_data(
        api: Api, own_redis: Any) -> None:
    """Redis restarts with its AOF (stale caches and feeds): the missed invalidations, feed pushes
    and fan-out enqueues are replayed, so nothing the outage's writes changed is served stale."""
    alice, bob, carol = api.account("alice"), api.account("bob"), api.account("carol")
    follow(api, bob, alice)
    follow(api, bob, carol)
    old = create(api, alice, "old")
    by_carol = int(create(api, carol, "carol's")["id"])
    run_fan_out()
    api.call("list-posts", "GET", "/")
    api.call("get-post", "GET", f"/{old['id']}")
    assert home(api, alice) == [int(old["id"])]
    assert home(api, bob) == [by_carol, int(old["id"])]

    own_redis.stop()
    new = int(create(api, alice, "new")["id"])
    assert api.call("update-post", "PATCH", f"/{old['id']}", json={"content": "old, edited"},
                    token=alice.token).status_code == 200
    follow(api, bob, carol, "DELETE")
    assert home(api, bob) == [new, int(old["id"])]  # from PostgreSQL

    own_redis.restart()
    assert cache.client().exists("tl:public")  # the old data is back
    eventually(lambda: not cache.is_down(), timeout=5)
    assert ids_of(api.call("list-posts", "GET", "/")) == [new, by_carol, int(old["id"])]
    assert api.call("get-post", "GET", f"/{old['id']}").json["content"] == "old, edited"
    assert home(api, alice) == [new, int(old["id"])]
    run_fan_out()  # the fan-out job enqueued by the replay
    # bob's feed missed an unfollow: it was dropped on replay and rebuilds without carol
    assert home(api, bob) == [new, int(old["id"])]
    assert members(bob) == [new, int(old["id"])]
