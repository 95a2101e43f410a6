"""Home feeds in Redis (Mastodon's FeedManager), kept by the writes that change them.

``feed:home:<account>`` is a sorted set of post ids scored by id, trimmed to
:data:`FEED_MAX_ITEMS`, holding a sentinel member ``0`` so an empty feed still exists. It is
rebuilt from PostgreSQL when missing, pushed to on post (the author's own feed at once,
followers' feeds by an RQ job on the ``default`` queue that drains the fan-out list), merged on
follow and pruned on unfollow and delete. Pushes only touch feeds that exist: a missing feed is
rebuilt complete. ``posts`` and ``follows`` call the ``on_*`` hooks after their commit; the home
timeline (:mod:`feed`) reads a page's ids with :func:`page_ids`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

from . import cache, db, versioned_cache
from .pagination import Page
from .worklist import WorkList

log = logging.getLogger(__name__)

FEED_MAX_ITEMS = 400
#: Bounds how long a feed can miss writes made while Redis was unreachable (then it is rebuilt).
FEED_TTL = 900
FAN_OUT_QUEUE = "default"
#: Redis list of queued fan-outs (``add:<post>:<author>`` / ``delete:<post>:<author>``).
FAN_OUT_TODO = "feed:fanout:todo"
FAN_OUT_BATCH = 200
FAN_OUT_TRIGGER = 500
#: A drain job that found the list empty looks once more after this long before it ends, so a
#: steady stream of posts keeps one job busy instead of queueing one every few posts.
FAN_OUT_WAIT = 0.05
FAN_OUT_LIST = WorkList(FAN_OUT_TODO, FAN_OUT_TRIGGER)
_SENTINEL = "0"


def home_key(account_id: int) -> str:
    return f"feed:home:{account_id}"


#: Add ids to a feed only if it exists (a missing feed is rebuilt complete), then trim it to the
#: sentinel (rank 0, score 0) plus the newest FEED_MAX_ITEMS ids.
_PUSH = cache.Lua("""
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
for i = 2, #ARGV do redis.call('ZADD', KEYS[1], ARGV[i], ARGV[i]) end
redis.call('ZREMRANGEBYRANK', KEYS[1], 1, -(tonumber(ARGV[1]) + 1))
return 1
""")


def _home_ids_sql(account_id: int, where: str = "TRUE", order: str = "p.id DESC",
                  limit: int = FEED_MAX_ITEMS, extra: dict[str, Any] | None = None) -> list[int]:
    rows = db.run(
        "SELECT p.id FROM posts p WHERE (p.author_id = :a OR p.author_id IN "
        "(SELECT followee_id FROM follows WHERE follower_id = :a)) "
        f"AND {where} ORDER BY {order} LIMIT :lim", a=account_id, lim=limit, **(extra or {}))
    return [row[0] for row in rows]


def rebuild_home(account_id: int) -> bool:
    """Fill ``feed:home:<account>`` from PostgreSQL; False when Redis is unavailable.

    Posts committed between the query and the write, whose pushes found no feed yet, are caught
    by a second query for ids above the newest one the first query saw.
    """
    ids = _home_ids_sql(account_id)
    key = home_key(account_id)

    def write(r: Any, found: Sequence[int]) -> bool:
        pipe = r.pipeline(transaction=True)
        pipe.zadd(key, {_SENTINEL: 0, **{str(i): i for i in found}})
        pipe.zremrangebyrank(key, 1, -(FEED_MAX_ITEMS + 1))
        pipe.expire(key, FEED_TTL)
        pipe.execute()
        return True

    if not cache.soft(lambda r: write(r, ids), False):
        return False
    newer = _home_ids_sql(account_id, "p.id > :after", extra={"after": ids[0] if ids else 0})
    if newer:
        cache.soft(lambda r: write(r, newer), False)
    return True


def _push(key_ids: Mapping[str, Sequence[int]]) -> None:
    if key_ids:
        versioned_cache.cache_write_later(
            [_PUSH.command([key], [FEED_MAX_ITEMS, *ids]) for key, ids in key_ids.items()],
            _push, key_ids, script=_PUSH)


def remove(keys: Sequence[str], ids: Sequence[int]) -> None:
    if not ids or not keys:
        return

    def run(r: Any) -> None:
        pipe = r.pipeline(transaction=False)
        for key in keys:
            pipe.zrem(key, *[str(i) for i in ids])
        pipe.execute()
    versioned_cache.cache_write(run, remove, keys, ids)


def _queue_fan_out(op: str, post_id: int, author_id: int) -> None:
    """Queue a fan-out (``add`` or ``delete``) for the workers: one push to the work list, plus
    an RQ drain job when none was queued or running (see :mod:`worklist`).

    An RQ job per post cost ~20 % of create-post's CPU (job hash, registries, MULTI); a list
    item costs one command, and the drain applies many fan-outs per followers query.
    """
    token = f"{op}:{post_id}:{author_id}"

    def failed() -> None:
        versioned_cache.remember_repair(_queue_fan_out, op, post_id, author_id)
        log.warning("fan-out deferred: Redis is unavailable", extra={"fan_out": token})

    FAN_OUT_LIST.push_later(FAN_OUT_LIST.push_call(token), kick_fan_out, failed)


def kick_fan_out(r: Any) -> None:
    """Enqueue the RQ job that drains the fan-out list (the reconciler calls this too)."""
    from rq import Queue

    Queue(FAN_OUT_QUEUE, connection=r).enqueue(drain_fan_out, result_ttl=0, failure_ttl=24 * 3600,
                                               description="home feed fan-out drain")


def drain_fan_out() -> int:
    """RQ job: apply queued fan-outs, FAN_OUT_BATCH at a time, until the list is empty."""
    r = cache.client()
    done = 0
    with FAN_OUT_LIST.draining():
        while True:
            taken = _drain_fan_out_batch(r)
            done += taken
            if taken < FAN_OUT_BATCH:  # the pop emptied the list
                time.sleep(FAN_OUT_WAIT)
                if FAN_OUT_LIST.finished(r):
                    return done


def _drain_fan_out_batch(r: Any) -> int:
    """Apply up to FAN_OUT_BATCH queued fan-outs, in order; how many were taken."""
    tokens: list[bytes] = list(r.lpop(FAN_OUT_TODO, FAN_OUT_BATCH) or [])  # type: ignore[arg-type]
    adds: dict[int, list[int]] = {}
    for raw in tokens:
        op, post_id, author_id = _parse_fan_out(raw)
        if op == "add":
            adds.setdefault(author_id, []).append(post_id)
        elif op == "delete":
            if adds:  # keep the queue's order: earlier adds land before this removal
                _fan_out_adds(adds)
                adds = {}
            fan_out_delete(post_id, author_id)
    if adds:
        _fan_out_adds(adds)
    return len(tokens)


def _parse_fan_out(raw: bytes | str) -> tuple[str, int, int]:
    text = raw.decode() if isinstance(raw, bytes) else raw
    try:
        op, post_id, author_id = text.split(":")
        return op, int(post_id), int(author_id)
    except ValueError:
        log.error("malformed fan-out item dropped", extra={"fan_out": text})
        return "", 0, 0


def _fan_out_adds(adds: dict[int, list[int]]) -> None:
    """Push posts (grouped by author) into their authors' followers' feeds; deleted posts skip."""
    wanted = [post_id for ids in adds.values() for post_id in ids]
    alive = {row[0] for row in db.run("SELECT id FROM posts WHERE id = ANY(:ids)", ids=wanted)}
    pushes: dict[str, list[int]] = {}
    for author_id, ids in adds.items():
        live = [post_id for post_id in ids if post_id in alive]
        if not live:
            continue
        for follower in _followers(author_id):
            pushes.setdefault(home_key(follower), []).extend(live)
    if pushes:
        _push(pushes)


def _followers(author_id: int) -> list[int]:
    return [row[0] for row in db.run("SELECT follower_id FROM follows WHERE followee_id = :a", a=author_id)]


def on_post_created(post_id: int, author_id: int) -> None:
    """Show the post in its author's feed now, and queue the fan-out to followers' feeds."""
    _push({home_key(author_id): [post_id]})
    _queue_fan_out("add", post_id, author_id)


def on_post_deleted(post_id: int, author_id: int) -> None:
    """Remove the post from its author's feed now, and queue its removal from followers' feeds."""
    remove([home_key(author_id)], [post_id])
    _queue_fan_out("delete", post_id, author_id)


def fan_out_delete(post_id: int, author_id: int) -> int:
    """Remove a deleted post from its author's followers' home feeds."""
    followers = _followers(author_id)
    remove([home_key(f) for f in followers], [post_id])
    return len(followers)


def on_follow(follower_id: int, followee_id: int) -> None:
    """Merge the followee's recent posts into the follower's feed (if it exists)."""
    rows = db.run("SELECT id FROM posts WHERE author_id = :a ORDER BY id DESC LIMIT :lim",
                  a=followee_id, lim=FEED_MAX_ITEMS)
    if rows:
        _push({home_key(follower_id): [row[0] for row in rows]})


def on_unfollow(follower_id: int, followee_id: int) -> None:
    """Prune the followee's posts from the follower's feed."""
    key = home_key(follower_id)
    ids: list[int] | None = cache.soft(lambda r: [int(m) for m in r.zrange(key, 0, -1)],  # type: ignore[arg-type]
                                      None)
    if ids is None:
        _drop_feed(key)  # Redis is down: drop the feed once it is back, it rebuilds from PostgreSQL
        return
    if not ids:
        return
    rows = db.run("SELECT id FROM posts WHERE author_id = :a AND id = ANY(:ids)",
                  a=followee_id, ids=ids)
    remove([key], [row[0] for row in rows])


def _drop_feed(key: str) -> None:
    versioned_cache.cache_write(lambda r: r.delete(key), _drop_feed, key)


def page_ids(account_id: int, page: Page) -> list[int] | None:
    """The page's ids from the feed (rebuilt if missing); None means "ask PostgreSQL"."""
    versioned_cache.replay_repairs()
    key = home_key(account_id)
    upper = f"({page.upper}" if page.upper is not None else "+inf"
    lower = f"({page.lower}" if page.lower else f"({_SENTINEL}"
    ascending = page.min_id is not None

    def read(r: Any) -> tuple[bool, int, list[bytes], list[bytes]]:
        pipe = r.pipeline(transaction=False)
        pipe.exists(key)
        pipe.zcard(key)
        if ascending:
            pipe.zrangebyscore(key, lower, upper, start=0, num=page.limit)
        else:
            pipe.zrevrangebyscore(key, upper, lower, start=0, num=page.limit)
        pipe.zrangebyscore(key, f"({_SENTINEL}", "+inf", start=0, num=1)  # the oldest id held
        exists, size, members, oldest = pipe.execute()
        return bool(exists), int(size), members, oldest

    result = cache.soft(read, None)
    if result is None:
        return None
    if not result[0]:
        if not rebuild_home(account_id):
            return None
        result = cache.soft(read, None)
        if result is None or not result[0]:
            return None
    _exists, size, members, oldest = result
    ids = [int(m) for m in members]
    if size > FEED_MAX_ITEMS:  # trimmed (size counts the sentinel): older posts are not held
        if len(ids) < page.limit:
            return None  # the page reaches past the trimmed feed: PostgreSQL has the rest
        if ascending and oldest and page.lower < int(oldest[0]):
            return None  # posts just after min_id may have been trimmed away
    return list(reversed(ids)) if ascending else ids
