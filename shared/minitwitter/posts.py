"""Posts: create (idempotent), read (cached), edit, delete, and the API shape shared by all lists.

PostgreSQL is the source of truth. A post object (without the viewer's ``liked``) is cached in
Redis under ``post:<id>`` (:data:`invalidation.POST_CACHE`, a
:class:`~versioned_cache.VersionedCache`), so a slow reader can never put back a value older
than a write; get-post reads one, a home-timeline page reads its
posts all at once (:func:`fetch_cached`). When Redis is down every read goes to PostgreSQL.

A write commits first and then, outside the transaction, invalidates caches, pushes the post into
its author's home feed (read-your-writes before the fan-out job runs), enqueues the fan-out and
the sentiment job. None of that can fail the write: a missed enqueue is repaired by the
sentiment reconciler, a missed cache update by the generation bump or the cache TTL.

Idempotency-Key: the key is stored in ``idempotency_keys`` in the same transaction as the post.
The first request answers **201**; a retry with the same key (within :data:`IDEMPOTENCY_TTL`)
answers **200** with the original post and ``Idempotent-Replayed: true``, and creates nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import orjson

from . import cache, callbacks, db, errors, homefeed, invalidation, jobs, metrics, versioned_cache
from .invalidation import POST_CACHE, post_key
from .jsonshape import ident, iso
from .validation import Str, fields

log = logging.getLogger(__name__)

MAX_POST_LENGTH = 280
IDEMPOTENCY_TTL = "24 hours"
IDEMPOTENCY_KEY_MAX = 255
CONTENT = Str(min=1, max=MAX_POST_LENGTH)
CALLBACK = Str(min=1, max=2048, required=False)
WRITE_SCHEMA = {"content": CONTENT, "callback_url": CALLBACK}

#: Columns of one post with its author and the viewer's like, in :func:`post_json` order.
#: ``:viewer`` NULL (anonymous) makes ``liked`` false.
COLUMNS = """p.id, p.content, p.created_at, p.updated_at, p.edited_at, p.likes_count,
       p.comments_count, p.sentiment_status, p.sentiment_label, p.sentiment_score,
       p.sentiment_model, u.id, u.username, u.display_name,
       EXISTS (SELECT 1 FROM likes l WHERE l.post_id = p.id AND l.user_id = :viewer)"""
FROM = "FROM posts p JOIN users u ON u.id = p.author_id"


def sentiment_json(status: str, label: str | None, score: float | None,
                   model: str | None) -> dict[str, Any]:
    """The sentiment object every post and comment carries."""
    return {"status": status, "label": label, "score": score, "model": model}


def post_json(row: Sequence[Any]) -> dict[str, Any]:
    """The API shape of a :data:`COLUMNS` row."""
    (pid, content, created, updated, edited, likes, comments, status, label, score, model,
     uid, username, display_name, liked) = row
    return {
        "id": ident(pid),
        "content": content,
        "author": {"id": ident(uid), "username": username, "display_name": display_name},
        "created_at": iso(created),
        "updated_at": iso(updated),
        "edited_at": iso(edited),
        "likes_count": likes,
        "comments_count": comments,
        "liked": bool(liked),
        "sentiment": sentiment_json(status, label, score, model),
    }


# --- reads ---------------------------------------------------------------------------------

def fetch(ids: Sequence[int], viewer: int | None) -> list[dict[str, Any]]:
    """The posts ``ids`` as ``viewer`` sees them, in the order given (missing ids skipped)."""
    if not ids:
        return []
    rows = db.run(f"SELECT {COLUMNS} {FROM} WHERE p.id = ANY(:ids)", ids=list(ids), viewer=viewer)
    by_id = {row[0]: post_json(row) for row in rows}
    return [by_id[i] for i in ids if i in by_id]


#: The cached object ``d`` and generation ``g`` of each post entry in KEYS, flattened (nil where
#: absent): one command for a whole page.
_READ_POSTS = cache.Lua("""
local out = {}
for i, key in ipairs(KEYS) do
  local entry = redis.call('HMGET', key, 'd', 'g')
  out[2 * i - 1] = entry[1]
  out[2 * i] = entry[2]
end
return out
""")


def fetch_cached(ids: Sequence[int], viewer: int | None) -> list[dict[str, Any]]:
    """:func:`fetch` through the post cache: the cached objects in one Redis call, the others
    from PostgreSQL in one query (and cached unless a write intervened), the viewer's likes in
    one small query. Reading 20 rows of 15 columns costs pg8000 more than all of that."""
    if not ids:
        return []
    versioned_cache.replay_repairs()
    keys = [post_key(i) for i in ids]
    raw: list[Any] | None = cache.soft(lambda r: _READ_POSTS(r, keys, []), None)
    if raw is None:
        return fetch(ids, viewer)
    found: dict[int, dict[str, Any]] = {}
    missing: dict[int, bytes] = {}
    for post_id, data, generation in zip(ids, raw[0::2], raw[1::2], strict=True):
        if data:  # nil (RESP2) or False (RESP3) where the entry holds no object
            found[post_id] = orjson.loads(data)
        else:
            missing[post_id] = generation or b""
    if found:
        metrics.child(metrics.CACHE_REQUESTS, POST_CACHE.name, "hit").inc(len(found))
    if missing:
        metrics.child(metrics.CACHE_REQUESTS, POST_CACHE.name, "miss").inc(len(missing))
        loaded = fetch(list(missing), None)
        POST_CACHE.fill_many([(post_key(int(post["id"])), missing[int(post["id"])],
                               {"d": orjson.dumps(post)}) for post in loaded])
        found.update((int(post["id"]), post) for post in loaded)
    liked = liked_ids(viewer, ids)
    page = []
    for post_id in ids:
        post = found.get(post_id)
        if post is not None:
            post["liked"] = post_id in liked
            page.append(post)
    return page


def liked_ids(viewer: int | None, ids: Sequence[int]) -> set[int]:
    """Which of ``ids`` the viewer likes (one query)."""
    if viewer is None or not ids:
        return set()
    rows = db.run("SELECT post_id FROM likes WHERE user_id = :v AND post_id = ANY(:ids)",
                  v=viewer, ids=list(ids))
    return {row[0] for row in rows}


def get(post_id: int, viewer: int | None = None) -> dict[str, Any]:
    """One post with author, counts, sentiment and the viewer's ``liked``; NotFound if absent."""
    def load() -> dict[str, Any] | None:
        row = db.one(f"SELECT {COLUMNS} {FROM} WHERE p.id = :id", id=post_id, viewer=None)
        return None if row is None else post_json(row)

    post: dict[str, Any] | None = POST_CACHE.read_through(post_key(post_id), load)
    if post is None:
        raise errors.NotFound("post not found")
    post["liked"] = post_id in liked_ids(viewer, [post_id])
    return post


# --- writes --------------------------------------------------------------------------------

def validate_idempotency_key(value: str | None) -> str | None:
    """The ``Idempotency-Key`` header, checked: 1-255 visible ASCII characters (400 otherwise)."""
    if value is None:
        return None
    key = value.strip()
    if not key or len(key) > IDEMPOTENCY_KEY_MAX or not key.isascii() or not key.isprintable():
        raise errors.BadRequest("invalid Idempotency-Key",
                                {"Idempotency-Key": [f"must be 1-{IDEMPOTENCY_KEY_MAX} visible ASCII characters"]})
    return key


def callback_url(body: dict[str, Any], header: str | None) -> str | None:
    """The callback URL from the body's ``callback_url`` or ``X-Callback-Url``, validated."""
    url = body.get("callback_url")
    header = header.strip() if header else None
    if url is not None and header and url != header:
        raise errors.ValidationFailed(details={"callback_url": ["differs from the X-Callback-Url header"]})
    url = url or header
    if not url:
        return None
    try:
        checked = callbacks.validate_url(url)
    except errors.ValidationFailed as exc:
        raise errors.ValidationFailed(details={"callback_url": _messages(exc)}) from None
    return checked if isinstance(checked, str) else url


def _messages(exc: errors.ValidationFailed) -> list[str]:
    found: list[str] = []
    for value in exc.details.values():
        found += value if isinstance(value, list) else [str(value)]
    return found or [exc.message]


def idempotent_create(user_id: int, scope: str, key: str | None,
                      create: Callable[[], int]) -> tuple[int, bool]:
    """Run ``create`` (inside a transaction) once per ``(user, scope, key)``.

    Returns ``(resource_id, created)``. A concurrent duplicate loses the race on the primary key,
    rolls back, and gets the winner's id.
    """
    if key is None:
        with db.transaction():
            return create(), True

    def existing() -> int | None:
        value = db.scalar(
            "SELECT resource_id FROM idempotency_keys WHERE user_id = :u AND scope = :s "
            f"AND key = :k AND created_at > now() - interval '{IDEMPOTENCY_TTL}'",
            u=user_id, s=scope, k=key)
        return int(value) if value is not None else None

    try:
        with db.transaction():
            found = existing()
            if found is not None:
                return found, False
            # Only an expired record of this key may go: deleting a live one that a concurrent
            # request committed a moment ago would let this request create a second resource.
            db.run("DELETE FROM idempotency_keys WHERE user_id = :u AND scope = :s AND key = :k "
                   f"AND created_at <= now() - interval '{IDEMPOTENCY_TTL}'",
                   u=user_id, s=scope, k=key)
            resource_id = create()
            db.run("INSERT INTO idempotency_keys (user_id, scope, key, resource_id) "
                   "VALUES (:u, :s, :k, :r)", u=user_id, s=scope, k=key, r=resource_id)
            return resource_id, True
    except errors.Conflict:
        found = existing()
        if found is None:
            raise
        return found, False


def register_callback(kind: str, item_id: int, version: int, url: str | None, call_id: str | None) -> None:
    """Record the callback URL for this item version (call inside the write's transaction)."""
    if url:
        callbacks.register(kind, item_id, version, url, call_id)


def enqueue_sentiment(kind: str, item_id: int, version: int, call_id: str | None) -> None:
    """Queue the analysis after commit; a failure is logged, never raised (the reconciler retries)."""
    try:
        jobs.enqueue_sentiment(kind, item_id, version, call_id)
    except Exception:  # the item is committed as pending; nothing is lost
        log.warning("sentiment enqueue failed", exc_info=True,
                    extra={"kind": kind, "item_id": item_id, "version": version})


def new_post_row(post_id: int, content: str, created_at: Any, author_id: int, username: str,
                 display_name: str) -> tuple[Any, ...]:
    """The :data:`COLUMNS` row of a post just inserted: the posts table's defaults (no edit, no
    likes or comments, sentiment pending, ``updated_at`` = ``created_at``, both ``now()``) around
    what the insert returned; a new post is liked by nobody. Returning only these spares pg8000
    decoding eleven known columns (tests/test_posts.py compares it with get-post's answer)."""
    return (post_id, content, created_at, created_at, None, 0, 0, "pending", None, None, None,
            author_id, username, display_name, False)


def create(author_id: int, body: dict[str, Any], *, idempotency_key: str | None = None,
           callback_header: str | None = None, call_id: str | None = None) -> tuple[dict[str, Any], bool]:
    """Create a post; returns ``(post, created)`` (``created`` False for an idempotent replay)."""
    data = fields(body, WRITE_SCHEMA)
    url = callback_url(data, callback_header)
    key = validate_idempotency_key(idempotency_key)

    inserted: list[tuple[Any, ...]] = []

    def insert() -> int:
        # The new row's id and time and its author's names come back in the same round trip
        # (no read-back); every other column holds its default (:func:`new_post_row`).
        row = db.one("WITH p AS (INSERT INTO posts (author_id, content) VALUES (:a, :c) RETURNING id, created_at)"
                     " SELECT p.id, p.created_at, u.username, u.display_name FROM p JOIN users u ON u.id = :a",
                     a=author_id, c=data["content"])
        if row is None:  # cannot happen: INSERT ... RETURNING returns the row it inserted
            raise errors.MinitwitterError()
        post_id, created_at, username, display_name = row
        inserted.append(new_post_row(post_id, data["content"], created_at, author_id, username, display_name))
        register_callback("post", int(post_id), 1, url, call_id)
        return int(post_id)

    if key is None and url is None:
        post_id, created = insert(), True  # one statement is atomic: no BEGIN/COMMIT round trips
    else:
        post_id, created = idempotent_create(author_id, "post", key, insert)
    if not created:
        try:
            return get(post_id, author_id), False
        except errors.NotFound:
            raise errors.Conflict("the post created with this Idempotency-Key has been deleted",
                                  {"Idempotency-Key": ["was used for a post that no longer exists"]}) from None
    metrics.POSTS_CREATED.inc()
    invalidation.invalidate_post(post_id, author_id)  # the public first pages and the author's posts_count
    homefeed.on_post_created(post_id, author_id)
    enqueue_sentiment("post", post_id, 1, call_id)
    return post_json(inserted[-1]), True


def update(author_id: int, post_id: int, body: dict[str, Any], *, callback_header: str | None = None,
           call_id: str | None = None) -> dict[str, Any]:
    """Edit the author's post: new content, ``edited_at``, sentiment back to pending (new version).

    Someone else's post is a 404, not a 403, so the response does not reveal that it exists.
    """
    data = fields(body, WRITE_SCHEMA)
    url = callback_url(data, callback_header)
    with db.transaction():
        version = db.scalar(
            "UPDATE posts SET content = :c, edited_at = now(), updated_at = now(), "
            "sentiment_status = 'pending', sentiment_label = NULL, sentiment_score = NULL, "
            "sentiment_backend = NULL, sentiment_model = NULL, sentiment_reason = NULL, "
            "sentiment_version = sentiment_version + 1, sentiment_attempts = 0, "
            "sentiment_next_at = NULL, sentiment_updated_at = NULL "
            "WHERE id = :id AND author_id = :a RETURNING sentiment_version",
            c=data["content"], id=post_id, a=author_id)
        if version is None:
            raise errors.NotFound("post not found")
        register_callback("post", post_id, int(version), url, call_id)
    invalidation.invalidate_post(post_id, author_id)
    enqueue_sentiment("post", post_id, int(version), call_id)
    return get(post_id, author_id)


def delete(author_id: int, post_id: int) -> None:
    """Delete the author's post with its likes and comments (foreign-key cascades); 404 otherwise."""
    with db.transaction():
        deleted = db.scalar("DELETE FROM posts WHERE id = :id AND author_id = :a RETURNING id",
                            id=post_id, a=author_id)
        if deleted is None:
            raise errors.NotFound("post not found")
    invalidation.invalidate_post(post_id, author_id)
    invalidation.invalidate_comment(post_id, 0)  # its comment pages must now answer 404
    homefeed.on_post_deleted(post_id, author_id)
