"""The cached views that more than one entity's writes change, and their invalidation.

Each entity module owns its tables and reads its cached view through the entry declared here;
a write that changes what another entity's view shows bumps that view through this module
instead of importing the other entity:

- ``post:<id>`` (:data:`POST_CACHE`, read by ``posts``): changed by post edits, likes and
  comments (counts), verdicts, and the author's display name.
- ``user:<id>`` (:data:`ACCOUNT_CACHE`, read by ``users``): changed by profile edits, follows
  (counts), posts (``posts_count``) and verdicts (the sentiment summary).
- ``comments:<post id>`` (:data:`COMMENT_CACHE`, read by ``comments``): changed by comments,
  verdicts, the post's deletion and the commenters' display names.
- ``tl:public`` (:data:`PUBLIC_CACHE`, read by ``feed``): changed by every post, like, comment
  and verdict.

Every entry is a :class:`~versioned_cache.VersionedCache`: a bump after the commit drops it and
refuses the fill of any reader that queried before the write. What only one module reads and
writes stays there (the name -> id lookups in ``users``, token versions in ``auth``, home feeds
in ``homefeed``).
"""

from __future__ import annotations

from collections.abc import Iterable

from . import cache, db, versioned_cache
from .versioned_cache import VersionedCache

POST_CACHE_TTL = 300
#: Cache entries invalidated per Redis round trip by :func:`invalidate_author_name`.
INVALIDATION_CHUNK = 500

POST_CACHE = VersionedCache("post", POST_CACHE_TTL)
#: The anonymous account views (see ``users``).
ACCOUNT_CACHE = VersionedCache("account", 300)
COMMENT_CACHE = VersionedCache("comments", 300)
PUBLIC_KEY = "tl:public"
PUBLIC_CACHE = VersionedCache("public_timeline", 300)


def post_key(post_id: int) -> str:
    return f"post:{post_id}"


def account_key(account_id: int) -> str:
    return f"user:{account_id}"


def comment_pages_key(post_id: int) -> str:
    """The cache entry holding the post's first comment pages."""
    return f"comments:{post_id}"


def invalidate_post(post_id: int, author_id: int | None = None) -> None:
    """Drop every cached copy of the post (object, counts, first timeline pages holding it) and,
    when the write changed what its author's profile shows, the author's account view.

    Every post write calls it; the sentiment worker uses the batch form below.
    """
    invalidate_posts([post_id], [] if author_id is None else [author_id])


def invalidate_posts(post_ids: Iterable[int], author_ids: Iterable[int] = ()) -> None:
    """:func:`invalidate_post` for many posts: one Redis round trip for every entry."""
    entries = [(POST_CACHE, post_key(post_id)) for post_id in post_ids]
    if not entries:
        return
    entries.append((PUBLIC_CACHE, PUBLIC_KEY))
    entries += [(ACCOUNT_CACHE, account_key(a)) for a in sorted(set(author_ids))]
    versioned_cache.bump_all(entries)


def invalidate_accounts(*account_ids: int) -> None:
    """Drop the cached views of ``account_ids`` (after a committed write that changed them)."""
    ACCOUNT_CACHE.bump(*[account_key(a) for a in sorted(set(account_ids))])


def invalidate_comment(post_id: int, comment_id: int) -> None:
    """Drop cached pages that may hold the comment."""
    invalidate_comments([(post_id, comment_id)])


def invalidate_comments(items: Iterable[tuple[int, int]]) -> None:
    """Drop the cached pages of every post that holds one of ``(post_id, comment_id)``.

    Pages are cached per post, so each post's pages go once however many of its comments changed
    (the sentiment worker passes a whole batch).
    """
    keys = sorted({comment_pages_key(post_id) for post_id, _comment_id in items})
    if keys:
        COMMENT_CACHE.bump(*keys)


def invalidate_author_name(author_id: int) -> None:
    """Drop every cached view that shows the author's display name, after a profile edit changed
    it: the author's post objects, the public timeline's first pages, the comment pages of posts
    the author commented on, and the account view.

    Every entry is bumped, cached or not (a bump also refuses the fill of a reader that queried
    before the change): one per post of the author and per post commented on, which a rare
    write can afford. They go :data:`INVALIDATION_CHUNK` per round trip, so a prolific author's
    rename is many modest writes rather than one that could outlast the Redis timeout.
    """
    entries = [(PUBLIC_CACHE, PUBLIC_KEY), (ACCOUNT_CACHE, account_key(author_id))]
    entries += [(POST_CACHE, post_key(row[0]))
                for row in db.run("SELECT id FROM posts WHERE author_id = :a", a=author_id)]
    entries += [(COMMENT_CACHE, comment_pages_key(row[0]))
                for row in db.run("SELECT DISTINCT post_id FROM comments WHERE author_id = :a", a=author_id)]
    for start in range(0, len(entries), INVALIDATION_CHUNK):
        versioned_cache.bump_all(entries[start:start + INVALIDATION_CHUNK])
        cache.flush_deferred()
