"""Follow and unfollow: idempotent writes that return the relationship.

``follow`` inserts with ``ON CONFLICT DO NOTHING`` and ``unfollow`` deletes, so repeating either
returns 200 with the same state. The follower/following counters are kept by the ``follows``
trigger in the same transaction. After the write both accounts' cached views are bumped (every
time, repeats included, so a retry repairs a bump Redis missed) and the home feeds are told
through :func:`homefeed.on_follow` / :func:`homefeed.on_unfollow`, whose failure never fails the
write: Redis is only a cache, and a feed rebuilds from PostgreSQL.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from . import db, errors, homefeed, invalidation, users

log = logging.getLogger(__name__)


def relationship(viewer_id: int, target_id: int, username: str) -> dict[str, Any]:
    """``{id, username, following, followed_by}`` of ``target`` as ``viewer`` sees it."""
    row = db.one(
        "SELECT EXISTS (SELECT 1 FROM follows WHERE follower_id = :v AND followee_id = :t), "
        "EXISTS (SELECT 1 FROM follows WHERE follower_id = :t AND followee_id = :v)",
        v=viewer_id, t=target_id)
    following, followed_by = row if row else (False, False)
    return {"id": str(target_id), "username": username, "following": following,
            "followed_by": followed_by}


def _target(follower_id: int, username: str) -> tuple[int, str]:
    target_id = users.find_id(username)
    if target_id is None:
        raise errors.NotFound("account not found")
    if target_id == follower_id:
        raise errors.ValidationFailed("you cannot follow yourself",
                                      {"username": ["cannot be your own account"]})
    return target_id, username.lower()


def follow(follower_id: int, username: str) -> dict[str, Any]:
    """Make ``follower_id`` follow ``username``; 404 unknown account, 422 yourself."""
    target_id, name = _target(follower_id, username)
    # A concurrently deleted target is a foreign-key violation, which db maps to NotFound.
    db.run("INSERT INTO follows (follower_id, followee_id) VALUES (:f, :t) ON CONFLICT DO NOTHING",
           f=follower_id, t=target_id)
    invalidation.invalidate_accounts(follower_id, target_id)  # their counts
    _notify_feed(homefeed.on_follow, follower_id, target_id)
    return relationship(follower_id, target_id, name)


def unfollow(follower_id: int, username: str) -> dict[str, Any]:
    """Make ``follower_id`` stop following ``username`` (a no-op when it did not follow)."""
    target_id, name = _target(follower_id, username)
    db.run("DELETE FROM follows WHERE follower_id = :f AND followee_id = :t",
           f=follower_id, t=target_id)
    invalidation.invalidate_accounts(follower_id, target_id)
    _notify_feed(homefeed.on_unfollow, follower_id, target_id)
    return relationship(follower_id, target_id, name)


def _notify_feed(hook: Callable[[int, int], None], follower_id: int, followee_id: int) -> None:
    """Call the home feeds' ``hook``; never fail the committed write.

    Called on every request, repeats included, so a retry repairs a merge that a Redis outage
    made fail the first time.
    """
    try:
        hook(follower_id, followee_id)
    except Exception:  # the follow is committed; the feed is only a cache
        log.warning("feed update failed", exc_info=True,
                    extra={"hook": hook.__name__, "follower_id": follower_id, "followee_id": followee_id})
