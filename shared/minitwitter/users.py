"""Accounts: registration, login, profiles with counts and a sentiment summary, profile updates.

Usernames are stored lower-case (``^[a-z0-9_]{3,30}$``; ``Alice`` registers as ``alice``) and
unique case-insensitively (the ``users_username_lower_key`` index). A taken name is a **409
Conflict** with ``details = {"username": ["is already taken"]}``: the request is well formed, it
conflicts with the current state (design.md's 409), and the field-level ``details`` still tell a
form which input to fix.

An account is one primary-key (or unique-index) lookup that returns the trigger-maintained
counters, the viewer's relationship and the sentiment summary of the latest
:data:`SENTIMENT_WINDOW` posts in a single round trip. The anonymous view (no relationship) is
cached in Redis under ``user:<id>`` (:data:`invalidation.ACCOUNT_CACHE`), bumped after every
write that changes what it shows: a post created, edited or deleted and a sentiment verdict
(:func:`invalidation.invalidate_posts` with the authors), a follow or unfollow (both accounts), a
profile edit (a new display name also reaches every cached post and comment page that shows it:
:func:`invalidation.invalidate_author_name`). Usernames never change and accounts are never deleted, so
the name -> id lookup is cached without invalidation. A viewer's own view (``/me``, or any account
seen with a token) is always read from PostgreSQL. The token version is cached in :mod:`auth`; a
password change writes the new one through. The password hash never leaves this module:
:func:`account_json` has no field for it and :func:`login` returns a token.
"""

from __future__ import annotations

from typing import Any

from . import auth, cache, db, errors, invalidation, ratelimit
from .config import get_config
from .jsonshape import iso
from .validation import Str, fields, require_some

USERNAME_PATTERN = r"[a-z0-9_]{3,30}"
USERNAME_MIN, USERNAME_MAX = 3, 30
PASSWORD_MIN, PASSWORD_MAX = 8, 128
DISPLAY_NAME_MAX = 50
BIO_MAX = 160
#: Posts (newest first) the profile's sentiment summary covers.
SENTIMENT_WINDOW = 50
# get-user's ``/me`` and ``/id/<id>`` cannot collide with an account: both are shorter than
# USERNAME_MIN, so no name needs reserving.
LABELS = ("positive", "neutral", "negative")
#: How long a cached name -> id lookup lives (see the module docstring).
NAME_TTL = 24 * 3600
#: How long an address an account logged in from stays exempt from its failed-login refusals.
KNOWN_CLIENT_TTL = 30 * 24 * 3600

USERNAME = Str(min=USERNAME_MIN, max=USERNAME_MAX, pattern=USERNAME_PATTERN, strip=False, lower=True,
               pattern_message="may contain only letters, digits and underscores")
PASSWORD = Str(min=PASSWORD_MIN, max=PASSWORD_MAX, strip=False)
REGISTER_SCHEMA = {
    "username": USERNAME,
    "password": PASSWORD,
    "display_name": Str(max=DISPLAY_NAME_MAX, required=False),
    "bio": Str(max=BIO_MAX, required=False),
}
LOGIN_SCHEMA = {
    # Login does not re-check the registration rules (a rule change must not lock anyone out);
    # it only bounds the input so argon2 never hashes a huge string.
    "username": Str(min=1, max=USERNAME_MAX, strip=False, lower=True),
    "password": Str(min=1, max=PASSWORD_MAX, strip=False),
}
UPDATE_SCHEMA = {
    "display_name": Str(max=DISPLAY_NAME_MAX, required=False),
    "bio": Str(max=BIO_MAX, required=False),
    "password": Str(min=PASSWORD_MIN, max=PASSWORD_MAX, strip=False, required=False),
    "current_password": Str(min=1, max=PASSWORD_MAX, strip=False, required=False),
}

# One round trip: the row, the viewer's relationship and the recent-sentiment counts.
# ``:viewer`` NULL (anonymous) makes both EXISTS false.
_SELECT = """
SELECT u.id, u.username, u.display_name, u.bio, u.created_at,
       u.posts_count, u.followers_count, u.following_count,
       EXISTS (SELECT 1 FROM follows f WHERE f.follower_id = :viewer AND f.followee_id = u.id),
       EXISTS (SELECT 1 FROM follows f WHERE f.follower_id = u.id AND f.followee_id = :viewer),
       s.total, s.pending, s.failed, s.positive, s.neutral, s.negative
FROM users u
CROSS JOIN LATERAL (
    SELECT count(*),
           count(*) FILTER (WHERE r.sentiment_status = 'pending'),
           count(*) FILTER (WHERE r.sentiment_status = 'failed'),
           count(*) FILTER (WHERE r.sentiment_status = 'done' AND r.sentiment_label = 'positive'),
           count(*) FILTER (WHERE r.sentiment_status = 'done' AND r.sentiment_label = 'neutral'),
           count(*) FILTER (WHERE r.sentiment_status = 'done' AND r.sentiment_label = 'negative')
    FROM (SELECT p.sentiment_status, p.sentiment_label FROM posts p
          WHERE p.author_id = u.id ORDER BY p.id DESC LIMIT :window) r
) AS s(total, pending, failed, positive, neutral, negative)
"""
_BY_ID = _SELECT + " WHERE u.id = :id"
_BY_NAME = _SELECT + " WHERE lower(u.username) = :username"


def account_json(row: list[Any]) -> dict[str, Any]:
    """The API shape of a row of :data:`_SELECT` (never any secret column)."""
    (uid, username, display_name, bio, created_at, posts, followers, following_count,
     following, followed_by, total, pending, failed, positive, neutral, negative) = row
    counts = {"positive": positive, "neutral": neutral, "negative": negative}
    best = max(counts.values())
    leaders = [label for label in LABELS if counts[label] == best]
    return {
        "id": str(uid),
        "username": username,
        "display_name": display_name,
        "bio": bio,
        "created_at": iso(created_at),
        "posts_count": posts,
        "followers_count": followers,
        "following_count": following_count,
        "following": following,
        "followed_by": followed_by,
        "sentiment_summary": {
            "window": SENTIMENT_WINDOW,
            "posts": total,
            "pending": pending,
            "failed": failed,
            **counts,
            # The most frequent label of the analysed posts; null when none or tied.
            "dominant": leaders[0] if best > 0 and len(leaders) == 1 else None,
        },
    }


def get_by_id(account_id: int, viewer_id: int | None = None) -> dict[str, Any]:
    """The account with id ``account_id`` as ``viewer_id`` sees it; NotFound when absent."""
    if viewer_id is None:
        def load() -> dict[str, Any] | None:
            row = db.one(_BY_ID, id=account_id, viewer=None, window=SENTIMENT_WINDOW)
            return None if row is None else account_json(row)

        account: dict[str, Any] | None = invalidation.ACCOUNT_CACHE.read_through(
            invalidation.account_key(account_id), load)
        if account is None:
            raise errors.NotFound("account not found")
        return account
    row = db.one(_BY_ID, id=account_id, viewer=viewer_id, window=SENTIMENT_WINDOW)
    if row is None:
        raise errors.NotFound("account not found")
    return account_json(row)


def get_by_username(username: str, viewer_id: int | None = None) -> dict[str, Any]:
    """The account named ``username`` (any case); NotFound when absent or not a valid name."""
    name = username.lower()
    if not _valid_username(name):
        raise errors.NotFound("account not found")
    if viewer_id is None:
        account_id = find_id(name)
        if account_id is None:
            raise errors.NotFound("account not found")
        return get_by_id(account_id)
    row = db.one(_BY_NAME, username=name, viewer=viewer_id, window=SENTIMENT_WINDOW)
    if row is None:
        raise errors.NotFound("account not found")
    return account_json(row)


def find_id(username: str) -> int | None:
    """The id of the account named ``username`` (any case), or None."""
    name = username.lower()
    if not _valid_username(name):
        return None
    key = f"user:name:{name}"
    cached = cache.read("GET", key)
    if cached is not None:
        return int(cached)
    value = db.scalar("SELECT id FROM users WHERE lower(username) = :username", username=name)
    if value is None:
        return None  # never cached: the name may be registered next
    cache.soft(lambda r: r.set(key, int(value), ex=NAME_TTL), None)
    return int(value)


def _valid_username(name: str) -> bool:
    return name.isascii() and USERNAME_MIN <= len(name) <= USERNAME_MAX and all(
        c.isalnum() or c == "_" for c in name)


def register(body: dict[str, Any]) -> dict[str, Any]:
    """Create an account from a register body; 422 on invalid input, 409 when the name is taken."""
    data = fields(body, REGISTER_SCHEMA)
    password_hash = auth.hash_password(data["password"])  # slow: outside any transaction
    try:
        new_id = db.scalar(
            "INSERT INTO users (username, password_hash, display_name, bio) "
            "VALUES (:username, :hash, :display_name, :bio) RETURNING id",
            username=data["username"], hash=password_hash,
            display_name=data.get("display_name", ""), bio=data.get("bio", ""))
    except errors.Conflict:
        raise errors.Conflict("username is already taken",
                              {"username": ["is already taken"]}) from None
    return get_by_id(int(new_id))


def login(body: dict[str, Any], client_ip: str | None = None) -> dict[str, Any]:
    """Check credentials and issue a token; 401 for an unknown name or a wrong password alike.

    Per username, ``LOGIN_FAILURE_LIMIT`` failed attempts in a ``LOGIN_FAILURE_WINDOW`` window
    make further attempts a 429 until the window ends, whichever addresses they come from
    (:func:`ratelimit.attempt`); the owner is never shut out longer than that, and not at all
    from an address that logged in to the account before (``KNOWN_CLIENT_TTL``). The count is
    kept by name, existing or not, so an unknown name is answered the same way after the same
    work: one Redis round trip, the lookup, one argon2 verification (of a dummy hash).
    """
    data = fields(body, LOGIN_SCHEMA)
    cfg = get_config()
    name = data["username"]
    known = f"login:known:{name}:{client_ip}" if client_ip else None
    place = ratelimit.attempt("login_account", name, cfg.login_failure_limit, cfg.login_failure_window,
                              known)
    row = db.one("SELECT id, password_hash, token_version FROM users WHERE lower(username) = :u", u=name)
    # verify_password does the same argon2 work when the row is missing: no timing oracle.
    if not auth.verify_password(row[1] if row else None, data["password"]) or row is None:
        raise errors.Unauthorized("invalid username or password")
    ratelimit.refund(place)
    if known is not None:
        cache.write_later([("SET", known, 1, "EX", KNOWN_CLIENT_TTL)])
    return auth.issue_token(int(row[0]), int(row[2]))


def update(account_id: int, body: dict[str, Any]) -> dict[str, Any]:
    """Apply a PATCH body to the caller's own account and return the updated account.

    Changing the password needs ``current_password`` and revokes every token issued before
    (the token version is bumped), including the one used for this request.
    """
    data = fields(body, UPDATE_SCHEMA)
    require_some(data, ("display_name", "bio", "password"))
    if "current_password" in data and "password" not in data:
        raise errors.ValidationFailed(details={"current_password": ["is only used with password"]})
    new_hash: str | None = None
    if "password" in data:
        if "current_password" not in data:
            raise errors.ValidationFailed(
                details={"current_password": ["is required to change the password"]})
        stored = db.scalar("SELECT password_hash FROM users WHERE id = :id", id=account_id)
        if stored is None:
            raise errors.NotFound("account not found")
        if not auth.verify_password(stored, data["current_password"]):
            raise errors.ValidationFailed(details={"current_password": ["is incorrect"]})
        new_hash = auth.hash_password(data["password"])
    row = db.one(
        "UPDATE users SET "
        "display_name = COALESCE(CAST(:display_name AS text), display_name), "
        "bio = COALESCE(CAST(:bio AS text), bio), "
        "password_hash = COALESCE(CAST(:hash AS text), password_hash), "
        "token_version = token_version + CASE WHEN CAST(:hash AS text) IS NULL THEN 0 ELSE 1 END, "
        "updated_at = now() WHERE id = :id RETURNING token_version",
        display_name=data.get("display_name"), bio=data.get("bio"), hash=new_hash, id=account_id)
    if row is None:
        raise errors.NotFound("account not found")
    if new_hash is not None:
        auth.forget_token_version(account_id, int(row[0]))
    if data.get("display_name") is not None:
        invalidation.invalidate_author_name(account_id)  # the account view included
    else:
        invalidation.invalidate_accounts(account_id)
    return get_by_id(account_id, account_id)
