"""Timelines: the public timeline (filters, cached first page) and per-account home feeds.

Public timeline: every page is one SQL query (posts joined with authors, the viewer's likes as an
``EXISTS``). The unfiltered first page is also kept, serialised, in the Redis hash
``tl:public`` (one field per ``limit``, plus its ids and ``Link``), guarded by a generation
counter (:class:`versioned_cache.VersionedCache`) that every post, like, comment or verdict write bumps.
An anonymous hit is one HMGET and returns the stored bytes; a signed-in hit adds one query for
the viewer's likes among those ids.

Home feeds (Mastodon's FeedManager): ``feed:home:<account>`` is a sorted set of post ids scored
by id, trimmed to :data:`FEED_MAX_ITEMS`, holding a sentinel member ``0`` so an empty feed still
exists. It is rebuilt from PostgreSQL when missing, pushed to on post (the author's own feed at
once, followers' feeds by an RQ job on the ``default`` queue), merged on follow and pruned on
unfollow and delete. Pushes only touch feeds that exist: a missing feed is rebuilt complete.
When Redis is down, or a page reaches past the trimmed feed, the page comes from PostgreSQL.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from . import cache, db, errors, metrics, posts, versioned_cache
from .invalidation import PUBLIC_CACHE, PUBLIC_KEY
from .pagination import Listing, Page, link_header, window
from .worklist import WorkList

log = logging.getLogger(__name__)

FEED_MAX_ITEMS = 400
#: Bounds how long a feed can miss writes made while Redis was unreachable (then it is rebuilt).
FEED_TTL = 900
LABELS = ("positive", "neutral", "negative")
QUERY_MAX = 200
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


def _select(where: str, order: str) -> str:
    return f"SELECT {posts.COLUMNS} {posts.FROM} WHERE {where} ORDER BY {order} LIMIT :page_limit"


def _listing(rows: list[list[Any]], page: Page, reverse: bool, function: str,
             params: dict[str, str] | None = None) -> tuple[list[dict[str, Any]], Listing]:
    items = [posts.post_json(row) for row in (reversed(rows) if reverse else rows)]
    ids = [int(item["id"]) for item in items]
    return items, Listing(orjson.dumps(items), link_header(function, page, ids, True, params))


# --- public timeline -----------------------------------------------------------------------

def public_filters(args: Any) -> dict[str, str]:
    """``author``, ``sentiment`` and ``q`` from the query string, checked (400 when malformed)."""
    args = dict(args.items())  # first values; cheaper lookups than a MultiDict's misses
    problems: dict[str, list[str]] = {}
    out: dict[str, str] = {}
    author = (args.get("author") or "").strip().lower()
    if author:
        if len(author) > 30 or not all(c.isascii() and (c.isalnum() or c == "_") for c in author):
            problems["author"] = ["must be a username"]
        out["author"] = author
    label = (args.get("sentiment") or "").strip().lower()
    if label:
        if label not in LABELS:
            problems["sentiment"] = [f"must be one of {', '.join(LABELS)}"]
        out["sentiment"] = label
    q = (args.get("q") or "").strip()
    if q:
        if len(q) > QUERY_MAX or "\x00" in q:
            problems["q"] = [f"must be at most {QUERY_MAX} characters"]
        out["q"] = q
    if problems:
        raise errors.BadRequest("invalid filter parameters", problems)
    return out


def public_timeline(page: Page, viewer: int | None, filters: dict[str, str]) -> Listing:
    """A page of the public timeline, newest first."""
    if page.is_first and not filters:
        return _public_first_page(page, viewer)
    win = window(page, True, "p.id")
    where = [win.where]
    params: dict[str, Any] = {**win.params, "viewer": viewer}
    if "author" in filters:
        where.append("p.author_id = (SELECT id FROM users WHERE lower(username) = :author)")
        params["author"] = filters["author"]
    if "sentiment" in filters:
        where.append("p.sentiment_label = :label")
        params["label"] = filters["sentiment"]
    if "q" in filters:
        where.append("p.search @@ plainto_tsquery('simple', :q)")
        params["q"] = filters["q"]
    rows = db.run(_select(" AND ".join(where), win.order), **params)
    return _listing(rows, page, win.reverse, "list-posts", filters)[1]


@dataclass(frozen=True)
class _FirstPage:
    """A first page as cached: generation, anonymous body, ids and Link."""

    generation: bytes
    body: bytes
    ids: list[int]
    link: str | None


#: This process's copy of the first pages, per limit. It is used only while Redis still holds
#: the same (random, never reused) generation, so it is exactly as fresh as the shared entry,
#: and a hit costs one tiny HGET instead of moving up to ~55 KB out of Redis per request.
_local_pages: dict[int, _FirstPage] = {}


def _cached_first_page(limit: int) -> tuple[_FirstPage | None, bytes | None]:
    """The cached page (or None) and the generation seen (None: Redis unavailable)."""
    generation = PUBLIC_CACHE.generation(PUBLIC_KEY)
    if generation is None:
        return None, None
    local = _local_pages.get(limit)
    if generation and local is not None and local.generation == generation:
        metrics.child(metrics.CACHE_REQUESTS, "public_timeline_local", "hit").inc()
        return local, generation
    field = str(limit)
    seen = PUBLIC_CACHE.get(PUBLIC_KEY, [field, f"{field}:ids", f"{field}:link"])
    if seen is None:
        return None, None
    (body, raw_ids, raw_link), generation = seen
    if body is None or not generation:
        return None, generation
    page = _FirstPage(generation, body, [int(i) for i in (raw_ids or b"").split(b",") if i],
                      raw_link.decode() if raw_link else None)
    _local_pages[limit] = page
    return page, generation


def _public_first_page(page: Page, viewer: int | None) -> Listing:
    cached, generation = _cached_first_page(page.limit)
    if cached is None:
        win = window(page, True, "p.id")
        rows = db.run(_select(win.where, win.order), **win.params, viewer=None)
        items, anonymous = _listing(rows, page, False, "list-posts")
        ids = [int(i["id"]) for i in items]
        cached = _FirstPage(b"", anonymous.body, ids, anonymous.link)
        if generation is not None:
            field = str(page.limit)
            stored = PUBLIC_CACHE.fill(PUBLIC_KEY, generation, {
                field: anonymous.body, f"{field}:ids": ",".join(map(str, ids)),
                f"{field}:link": anonymous.link or ""})
            if stored:
                _local_pages[page.limit] = _FirstPage(stored, anonymous.body, ids, anonymous.link)
    liked = posts.liked_ids(viewer, cached.ids)
    if not liked:
        return Listing(cached.body, cached.link)
    items = orjson.loads(cached.body)
    for item in items:
        item["liked"] = int(item["id"]) in liked
    return Listing(orjson.dumps(items), cached.link)


# --- home feeds ------------------------------------------------------------------------------

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


def _remove(keys: Sequence[str], ids: Sequence[int]) -> None:
    if not ids or not keys:
        return

    def run(r: Any) -> None:
        pipe = r.pipeline(transaction=False)
        for key in keys:
            pipe.zrem(key, *[str(i) for i in ids])
        pipe.execute()
    versioned_cache.cache_write(run, _remove, keys, ids)


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
    _remove([home_key(author_id)], [post_id])
    _queue_fan_out("delete", post_id, author_id)


def fan_out_delete(post_id: int, author_id: int) -> int:
    """Remove a deleted post from its author's followers' home feeds."""
    followers = _followers(author_id)
    _remove([home_key(f) for f in followers], [post_id])
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
    _remove([key], [row[0] for row in rows])


def _drop_feed(key: str) -> None:
    versioned_cache.cache_write(lambda r: r.delete(key), _drop_feed, key)


def home_timeline(account_id: int, page: Page) -> Listing:
    """A page of the account's home timeline: its own posts and those of accounts it follows."""
    ids = _home_ids_cached(account_id, page)
    if ids is None:
        win = window(page, True, "p.id")
        rows = db.run(
            _select("(p.author_id = :a OR p.author_id IN (SELECT followee_id FROM follows "
                    f"WHERE follower_id = :a)) AND {win.where}", win.order),
            **win.params, a=account_id, viewer=account_id)
        return _listing(rows, page, win.reverse, "home-timeline")[1]
    items = posts.fetch_cached(ids, account_id)
    if len(items) < len(ids):  # deleted since they were pushed: prune, then serve what remains
        present = {int(i["id"]) for i in items}
        _remove([home_key(account_id)], [i for i in ids if i not in present])
    # Cursors come from the feed's ids, so a pruned entry does not end the list early.
    return Listing(orjson.dumps(items), link_header("home-timeline", page, ids))


def _home_ids_cached(account_id: int, page: Page) -> list[int] | None:
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
