"""Comments: add (idempotent, analysed for sentiment like posts), delete your own, list oldest first.

A comment changes its post's ``comments_count`` (trigger), so every write here also invalidates
the cached post and public timeline. The first page of each post's comments is cached in the
hash ``comments:<post_id>`` (one field per ``limit``) behind the same generation guard as posts
(:data:`invalidation.COMMENT_CACHE`); :func:`invalidation.invalidate_comments` (called by the
sentiment worker after a verdict) and every write bump it. Idempotency-Key replays answer 200
with the original comment, as for posts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from . import db, errors, invalidation, posts
from .invalidation import COMMENT_CACHE, comment_pages_key
from .jsonshape import ident, iso
from .pagination import Listing, Page, link_header, window
from .validation import fields

COLUMNS = """c.id, c.post_id, c.content, c.created_at, c.sentiment_status, c.sentiment_label,
       c.sentiment_score, c.sentiment_model, u.id, u.username, u.display_name"""
FROM = "FROM comments c JOIN users u ON u.id = c.author_id"


def comment_json(row: Sequence[Any]) -> dict[str, Any]:
    """The API shape of a :data:`COLUMNS` row."""
    cid, post_id, content, created, status, label, score, model, uid, username, display_name = row
    return {
        "id": ident(cid),
        "post_id": ident(post_id),
        "content": content,
        "author": {"id": ident(uid), "username": username, "display_name": display_name},
        "created_at": iso(created),
        "sentiment": posts.sentiment_json(status, label, score, model),
    }


def get(comment_id: int) -> dict[str, Any]:
    """One comment; NotFound when absent."""
    row = db.one(f"SELECT {COLUMNS} {FROM} WHERE c.id = :id", id=comment_id)
    if row is None:
        raise errors.NotFound("comment not found")
    return comment_json(row)


def add(author_id: int, post_id: int, body: dict[str, Any], *, idempotency_key: str | None = None,
        callback_header: str | None = None, call_id: str | None = None) -> tuple[dict[str, Any], bool]:
    """Comment on ``post_id``; returns ``(comment, created)`` (False for an idempotent replay)."""
    data = fields(body, posts.WRITE_SCHEMA)
    url = posts.callback_url(data, callback_header)
    key = posts.validate_idempotency_key(idempotency_key)

    def insert() -> int:
        try:
            comment_id = int(db.scalar(
                "INSERT INTO comments (post_id, author_id, content) VALUES (:p, :a, :c) RETURNING id",
                p=post_id, a=author_id, c=data["content"]))
        except errors.NotFound:
            raise errors.NotFound("post not found") from None
        posts.register_callback("comment", comment_id, 1, url, call_id)
        return comment_id

    comment_id, created = posts.idempotent_create(author_id, f"comment:{post_id}", key, insert)
    if not created:
        try:
            return get(comment_id), False
        except errors.NotFound:
            raise errors.Conflict("the comment created with this Idempotency-Key has been deleted",
                                  {"Idempotency-Key": ["was used for a comment that no longer exists"]}) from None
    invalidation.invalidate_comment(post_id, comment_id)
    invalidation.invalidate_post(post_id)
    posts.enqueue_sentiment("comment", comment_id, 1, call_id)
    return get(comment_id), True


def delete(author_id: int, post_id: int, comment_id: int) -> None:
    """Delete the caller's own comment; anyone else's (or a missing one) is a 404."""
    deleted = db.scalar("DELETE FROM comments WHERE id = :c AND post_id = :p AND author_id = :a "
                        "RETURNING id", c=comment_id, p=post_id, a=author_id)
    if deleted is None:
        raise errors.NotFound("comment not found")
    invalidation.invalidate_comment(post_id, comment_id)
    invalidation.invalidate_post(post_id)


def list_for_post(post_id: int, page: Page) -> Listing:
    """A page of the post's comments, oldest first; NotFound when the post does not exist."""
    field, key = str(page.limit), comment_pages_key(post_id)
    seen = COMMENT_CACHE.get(key, [field, f"{field}:link"]) if page.is_first else None
    cached = seen[0][0] if seen is not None else None
    if seen is not None and cached is not None:
        link = seen[0][1]
        return Listing(cached, link.decode() if link else None)
    win = window(page, False, "c.id")
    rows = db.run(f"SELECT {COLUMNS} {FROM} WHERE c.post_id = :p AND {win.where} "
                  f"ORDER BY {win.order} LIMIT :page_limit", p=post_id, **win.params)
    if not rows and db.scalar("SELECT 1 FROM posts WHERE id = :p", p=post_id) is None:
        raise errors.NotFound("post not found")
    items = [comment_json(row) for row in (reversed(rows) if win.reverse else rows)]
    ids = [int(i["id"]) for i in items]
    listing = Listing(orjson.dumps(items),
                      link_header(f"list-comments/{post_id}", page, ids, newest_first=False))
    if seen is not None:
        COMMENT_CACHE.fill(key, seen[1], {field: listing.body, f"{field}:link": listing.link or ""})
    return listing
