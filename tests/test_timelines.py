"""home-timeline: Redis feeds filled by a real RQ fan-out job, merged/pruned on (un)follow, rebuilt
when missing, and served from PostgreSQL past the trimmed feed."""

from __future__ import annotations

from typing import Any

import pytest
from rq import Queue, SimpleWorker

from minitwitter import cache, db, homefeed
from tests.api import Account, Api
from tests.conftest import writing_meanwhile
from tests.test_posts import assert_clean_error, create, ids_of, seed, walk_pages


def run_fan_out() -> None:
    """Run the queued fan-out jobs with a real RQ worker, in-process."""
    conn = cache.client()
    SimpleWorker([Queue(homefeed.FAN_OUT_QUEUE, connection=conn)], connection=conn).work(
        burst=True, logging_level="WARNING")


def home(api: Api, account: Account, **query: Any) -> list[int]:
    return ids_of(api.call("home-timeline", "GET", "/", token=account.token, query=query or None))


def members(account: Account) -> list[int]:
    raw = cache.client().zrevrange(homefeed.home_key(int(account.id)), 0, -1)
    return [int(m) for m in raw if m != b"0"]


def follow(api: Api, who: Account, whom: Account, method: str = "POST") -> None:
    response = api.call("follow-user", method, f"/{whom.username}", token=who.token)
    assert response.status_code == 200, response.get_data(as_text=True)


def test_home_shows_own_and_followed_posts_only(api: Api) -> None:
    alice, bob, carol = api.account("alice"), api.account("bob"), api.account("carol")
    follow(api, bob, alice)
    a = int(create(api, alice, "from alice")["id"])
    b = int(create(api, bob, "from bob")["id"])
    create(api, carol, "from carol (not followed)")
    assert home(api, bob) == [b, a]
    assert home(api, alice) == [a]
    assert home(api, carol) != []
    response = api.call("home-timeline", "GET", "/", token=bob.token)
    assert [p["author"]["username"] for p in response.json] == ["bob", "alice"]
    assert response.json[1]["content"] == "from alice"


def test_fan_out_job_fills_followers_feeds_and_own_post_is_immediate(api: Api) -> None:
    alice, bob = api.account("alice"), api.account("bob")
    follow(api, bob, alice)
    assert home(api, alice) == [] and home(api, bob) == []  # both feeds now exist (empty)
    post = int(create(api, alice, "fresh")["id"])
    # read-your-writes: the author sees it before any job ran
    assert home(api, alice) == [post]
    assert members(bob) == []  # the follower's feed waits for the fan-out job
    assert Queue(homefeed.FAN_OUT_QUEUE, connection=cache.client()).count == 1
    run_fan_out()
    assert members(bob) == [post]
    assert home(api, bob) == [post]


def test_one_drain_job_applies_many_fan_outs_in_queue_order(api: Api) -> None:
    """Fan-outs queue as list items; the first one enqueues a single RQ drain job (the others
    find its draining mark) that applies them all, in order (a post created then deleted before
    the drain never shows)."""
    alice, bob, carol = api.account("alice"), api.account("bob"), api.account("carol")
    follow(api, carol, alice)
    follow(api, carol, bob)
    home(api, carol)  # the follower's feed exists (fan-outs only update existing feeds)
    made = [int(create(api, author, f"post {i}")["id"]) for i, author in enumerate([alice, bob, alice, bob])]
    gone = int(create(api, alice, "deleted before the fan-out")["id"])
    assert api.call("delete-post", "DELETE", f"/{gone}", token=alice.token).status_code == 204
    assert cache.client().llen(homefeed.FAN_OUT_TODO) == 6  # 5 adds, 1 delete
    assert Queue(homefeed.FAN_OUT_QUEUE, connection=cache.client()).count == 1
    run_fan_out()
    assert cache.client().llen(homefeed.FAN_OUT_TODO) == 0
    assert members(carol) == sorted(made, reverse=True)
    # The job ended with the list empty and cleared its mark: the next post queues a new one.
    assert not cache.client().exists(homefeed.FAN_OUT_LIST.mark_key)
    later = int(create(api, bob, "after the drain")["id"])
    assert Queue(homefeed.FAN_OUT_QUEUE, connection=cache.client()).count == 1
    run_fan_out()
    assert members(carol)[0] == later


def test_reconciler_restarts_a_lost_fan_out_drain(api: Api) -> None:
    """Items left in the list without a drain job (its worker died) are picked up again."""
    from minitwitter import verdicts

    alice, bob = api.account("alice"), api.account("bob")
    follow(api, bob, alice)
    home(api, bob)
    post = int(create(api, alice, "fan me out")["id"])
    Queue(homefeed.FAN_OUT_QUEUE, connection=cache.client()).empty()  # the drain job is lost
    assert members(bob) == []
    verdicts.reconcile()
    run_fan_out()
    assert members(bob) == [post]


def test_missing_feed_is_rebuilt_from_postgres(api: Api) -> None:
    alice, bob = api.account("alice"), api.account("bob")
    follow(api, bob, alice)
    posts = seed(int(alice.id), 5) + seed(int(bob.id), 2)
    cache.client().delete(homefeed.home_key(int(bob.id)))
    assert home(api, bob) == sorted(posts, reverse=True)
    assert members(bob) == sorted(posts, reverse=True)
    assert cache.client().ttl(homefeed.home_key(int(bob.id))) > 0
    # an account with nothing to show still gets a (sentinel-only) feed, not a rebuild per read
    carol = api.account("carol")
    assert home(api, carol) == []
    assert cache.client().exists(homefeed.home_key(int(carol.id)))


def test_follow_merges_and_unfollow_prunes_at_once(api: Api) -> None:
    alice, bob = api.account("alice"), api.account("bob")
    a = seed(int(alice.id), 3)
    own = int(create(api, bob, "mine")["id"])
    assert home(api, bob) == [own]
    follow(api, bob, alice)
    assert home(api, bob) == [own, *a[::-1]]
    follow(api, bob, alice, "DELETE")
    assert home(api, bob) == [own]
    assert members(bob) == [own]


def test_delete_removes_the_post_from_feeds(api: Api) -> None:
    alice, bob = api.account("alice"), api.account("bob")
    follow(api, bob, alice)
    home(api, alice), home(api, bob)
    keep = int(create(api, alice, "keep")["id"])
    gone = int(create(api, alice, "gone")["id"])
    run_fan_out()
    assert home(api, bob) == [gone, keep]
    assert api.call("delete-post", "DELETE", f"/{gone}", token=alice.token).status_code == 204
    assert home(api, alice) == [keep] and members(alice) == [keep]
    assert home(api, bob) == [keep]  # before the job: skipped and pruned on read
    run_fan_out()
    assert members(bob) == [keep]


def test_home_pagination_and_trimmed_feed_falls_back_to_postgres(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(homefeed, "FEED_MAX_ITEMS", 10)
    alice, bob = api.account("alice"), api.account("bob")
    follow(api, bob, alice)
    posts = sorted(seed(int(alice.id), 18) + seed(int(bob.id), 5), reverse=True)
    first = api.call("home-timeline", "GET", "/", token=bob.token, query={"limit": 4})
    assert len(members(bob)) <= 10  # the feed is trimmed ...
    seen, followed = walk_pages(api, first, token=bob.token)
    assert all(url.startswith("/function/home-timeline?limit=4&max_id=") for url in followed)
    assert seen == posts  # ... but every page is complete
    assert home(api, bob, min_id=posts[3], limit=2) == posts[1:3]
    # min_id below the trimmed feed: the posts right after it, not the feed's oldest
    assert home(api, bob, min_id=posts[-1], limit=2) == posts[-3:-1]
    assert home(api, bob, since_id=posts[3], limit=2) == posts[0:2]


def test_home_pagination_stays_correct_while_posts_are_inserted(api: Api) -> None:
    """Paging the home timeline down while its owner keeps posting: no post is skipped or
    repeated; the pages hold exactly the own and followed posts up to the first page's newest."""
    alice, bob, carol = api.account("alice"), api.account("bob"), api.account("carol")
    follow(api, bob, alice)
    seed(int(alice.id), 40)
    seed(int(bob.id), 20)
    seed(int(carol.id), 20)  # not followed: never on bob's pages
    with writing_meanwhile(lambda: int(create(api, bob, "concurrent")["id"])) as added:
        first = api.call("home-timeline", "GET", "/", token=bob.token, query={"limit": 7})
        top = ids_of(first)[0]
        seen, _ = walk_pages(api, first, token=bob.token)
    assert seen == sorted(seen, reverse=True) and len(seen) == len(set(seen))
    expected = [row[0] for row in db.run(
        "SELECT id FROM posts WHERE author_id IN (:a, :b) AND id <= :top ORDER BY id DESC",
        a=int(alice.id), b=int(bob.id), top=top)]
    assert seen == expected
    assert any(i in seen for i in added)


@pytest.mark.parametrize("query", [{"limit": "0"}, {"max_id": "x"}, {"since_id": "-1"}])
def test_home_bad_parameters_are_400(api: Api, query: dict[str, str]) -> None:
    alice = api.account("alice")
    assert_clean_error(api.call("home-timeline", "GET", "/", token=alice.token, query=query), 400)


def test_home_requires_a_token(api: Api) -> None:
    assert_clean_error(api.call("home-timeline", "GET", "/"), 401)
    assert_clean_error(api.call("home-timeline", "GET", "/", token="bad"), 401)


def test_home_feed_matches_sql(api: Api) -> None:
    """The feed kept in Redis gives the same page as the SQL the home timeline falls back to
    (a missing feed; Redis down is tests/test_redis_down.py's)."""
    alice, bob = api.account("alice"), api.account("bob")
    follow(api, bob, alice)
    seed(int(alice.id), 12)
    seed(int(bob.id), 4)
    from_feed = home(api, bob, limit=50)
    rows = db.run("SELECT id FROM posts ORDER BY id DESC")
    assert from_feed == [r[0] for r in rows]
