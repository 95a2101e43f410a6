"""Like and unlike: idempotent writes that return the post as the caller now sees it.

``like`` inserts with ``ON CONFLICT DO NOTHING`` and ``unlike`` deletes, so repeating either is
harmless and answers the same state. ``likes_count`` is kept by the ``likes`` trigger in the same
statement; only a write that changed a row invalidates the cached post and timeline page.
"""

from __future__ import annotations

from typing import Any

from . import db, errors, invalidation, posts


def like(user_id: int, post_id: int) -> dict[str, Any]:
    """Like ``post_id`` (404 when it does not exist)."""
    # A missing (or concurrently deleted) post is a foreign-key violation: db maps it to NotFound.
    try:
        changed = db.run("INSERT INTO likes (post_id, user_id) VALUES (:p, :u) "
                         "ON CONFLICT DO NOTHING RETURNING post_id", p=post_id, u=user_id)
    except errors.NotFound:
        raise errors.NotFound("post not found") from None
    if changed:
        invalidation.invalidate_post(post_id)
    return posts.get(post_id, user_id)


def unlike(user_id: int, post_id: int) -> dict[str, Any]:
    """Remove the caller's like of ``post_id`` (a no-op when there was none; 404 if no post)."""
    changed = db.run("DELETE FROM likes WHERE post_id = :p AND user_id = :u RETURNING post_id",
                     p=post_id, u=user_id)
    if changed:
        invalidation.invalidate_post(post_id)
    return posts.get(post_id, user_id)
