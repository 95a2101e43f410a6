"""Timelines: the public timeline (filters, cached first page) and the home timelines.

Public timeline: every page is one SQL query (posts joined with authors, the viewer's likes as an
``EXISTS``). The unfiltered first page is also kept, serialised, in the Redis hash
``tl:public`` (one field per ``limit``, plus its ids and ``Link``), guarded by a generation
counter (:class:`versioned_cache.VersionedCache`) that every post, like, comment or verdict write bumps.
An anonymous hit is one HMGET and returns the stored bytes; a signed-in hit adds one query for
the viewer's likes among those ids.

Home timeline: a page's ids come from the account's home feed in Redis (:mod:`homefeed`, which
the writes keep), its posts through the post cache (:func:`posts.fetch_cached`). When Redis is
down, or a page reaches past the trimmed feed, the page comes from PostgreSQL.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from . import db, errors, homefeed, metrics, posts
from .invalidation import PUBLIC_CACHE, PUBLIC_KEY
from .pagination import Listing, Page, link_header, window

LABELS = ("positive", "neutral", "negative")
QUERY_MAX = 200


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


# --- home timeline ----------------------------------------------------------------------------

def home_timeline(account_id: int, page: Page) -> Listing:
    """A page of the account's home timeline: its own posts and those of accounts it follows."""
    ids = homefeed.page_ids(account_id, page)
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
        homefeed.remove([homefeed.home_key(account_id)], [i for i in ids if i not in present])
    # Cursors come from the feed's ids, so a pruned entry does not end the list early.
    return Listing(orjson.dumps(items), link_header("home-timeline", page, ids))
