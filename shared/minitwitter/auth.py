"""Passwords (argon2id) and access tokens (HS256 JWTs, verified on every call).

A token carries the account id (``sub``) and the account's ``token_version``; changing the
password bumps the version, which revokes every token issued before. The version is looked up
through a short Redis cache (PostgreSQL when Redis is down) so revocation holds across processes.
"""

from __future__ import annotations

import functools
import math
import time
import uuid
from typing import Any

import argon2
import flask
import jwt

from . import cache, db, errors, logs, ratelimit
from .config import get_config
from .jsonshape import parse_id

#: argon2id with OWASP's recommended minimum (19 MiB, 2 passes, 1 lane). The library default
#: (RFC 9106 low-memory: 64 MiB, t=3, p=4) measured ~470 ms per hash on the 2-core target,
#: capping login/register at a few per second per core and using 64 MiB per concurrent login;
#: this one takes ~60 ms. Hashes carry their parameters, so older hashes still verify.
ARGON2_TIME_COST, ARGON2_MEMORY_KIB, ARGON2_PARALLELISM = 2, 19456, 1
_hasher = argon2.PasswordHasher(time_cost=ARGON2_TIME_COST, memory_cost=ARGON2_MEMORY_KIB,
                                parallelism=ARGON2_PARALLELISM)
TOKEN_VERSION_TTL = 60
#: A valid argon2id hash of a random string: verifying against it when the account does not
#: exist keeps login timing the same for unknown usernames.
_DUMMY_HASH = _hasher.hash(uuid.uuid4().hex)


def hash_password(password: str) -> str:
    """argon2id hash of ``password``."""
    return _hasher.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    """True when ``password`` matches; constant work whether or not the account exists."""
    try:
        return _hasher.verify(password_hash or _DUMMY_HASH, password) and password_hash is not None
    except (argon2.exceptions.VerifyMismatchError, argon2.exceptions.InvalidHashError,
            argon2.exceptions.VerificationError):
        return False


def _secret() -> str:
    secret = get_config().jwt_secret
    if not secret:
        raise errors.DependencyUnavailable("the server has no jwt-secret configured")
    return secret


def issue_token(account_id: int, token_version: int) -> dict[str, Any]:
    """The login response body: ``{access_token, token_type, expires_in}``."""
    cfg = get_config()
    now = int(time.time())
    claims = {"sub": str(account_id), "tv": token_version, "iat": now,
              "exp": now + cfg.jwt_ttl_seconds, "iss": cfg.jwt_issuer, "jti": uuid.uuid4().hex}
    token = jwt.encode(claims, _secret(), algorithm="HS256")
    return {"access_token": token, "token_type": "Bearer", "expires_in": cfg.jwt_ttl_seconds}


#: Tokens whose signature and claims were verified, kept per process (LRU).
VERIFIED_TOKENS_CACHED = 10000


@functools.lru_cache(maxsize=VERIFIED_TOKENS_CACHED)
def _verified_claims(token: str, secret: str, issuer: str, ttl: int) -> dict[str, Any]:
    """Signature, algorithm, issuer and claims, checked once per (token, key, issuer, lifetime).

    A client sends the same token with every request and verifying it (base64, JSON, HMAC) cost
    ~100 us each time. Only successful verifications are remembered (an exception is never
    cached), the key is part of the cache key, and expiry - the one check that changes with
    time - is made on every use by :func:`decode_token`. Callers must not mutate the result.
    """
    claims: dict[str, Any] = jwt.decode(
        token, secret, algorithms=["HS256"], issuer=issuer,
        options={"require": ["sub", "exp", "iat", "iss"], "verify_exp": False})
    if not well_formed(claims, ttl):
        raise jwt.InvalidTokenError("claims out of range")
    return claims


def _number(value: Any) -> float | None:
    """A finite JSON number, else None (a bool, a string, or NaN/Infinity, which Python's JSON
    reads)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return value
    return None


def well_formed(claims: dict[str, Any], ttl: int) -> bool:
    """Whether the claims look like a token this service issues: ``sub`` an account id (decimal
    ASCII digits within bigint, which PostgreSQL would otherwise refuse with an error), ``iat``
    and ``exp`` finite numbers with a lifetime no longer than ``JWT_TTL_SECONDS``. A validly
    signed token with anything else is refused like a forged one (401), never passed on."""
    sub, iat, exp = claims.get("sub"), _number(claims.get("iat")), _number(claims.get("exp"))
    return (isinstance(sub, str) and parse_id(sub) is not None and iat is not None
            and exp is not None and 0 < exp - iat <= ttl)


def decode_token(token: str) -> dict[str, Any]:
    """Verified claims of ``token``; Unauthorized when invalid, expired or forged."""
    try:
        cfg = get_config()
        claims = _verified_claims(token, _secret(), cfg.jwt_issuer, cfg.jwt_ttl_seconds)
    except jwt.InvalidTokenError:
        raise errors.Unauthorized("invalid token") from None
    if claims["exp"] <= time.time():  # as PyJWT: a token is expired from its exp second on
        raise errors.Unauthorized("token expired")
    return claims


def token_version_key(account_id: int) -> str:
    return f"acct:tv:{account_id}"


def current_token_version(account_id: int) -> int | None:
    """The account's token version (None when the account no longer exists)."""
    cached = cache.read("GET", token_version_key(account_id))
    return int(cached) if cached is not None else _load_token_version(account_id)


def _load_token_version(account_id: int) -> int | None:
    """The token version from PostgreSQL, cached for the next reads."""
    version = db.scalar("SELECT token_version FROM users WHERE id = :id", id=account_id)
    if version is not None:
        # NX: a reader that fetched the version just before a password change committed must not
        # overwrite the new value the writer stored (that would revive revoked tokens for a TTL).
        cache.soft(lambda r: r.set(token_version_key(account_id), version, ex=TOKEN_VERSION_TTL,
                                   nx=True), None)
    return version


def forget_token_version(account_id: int, new_version: int | None = None) -> None:
    """Update the cached version after it changed (password change), after the commit.

    With ``new_version`` the new value is written through (overwriting), which together with the
    readers' ``SET NX`` closes the race in which a concurrent reader re-caches the old version
    between the commit and a plain ``DEL``; without it the key is deleted.
    """
    key = token_version_key(account_id)
    if new_version is None:
        cache.soft(lambda r: r.delete(key), None)
    else:
        cache.soft(lambda r: r.set(key, new_version, ex=TOKEN_VERSION_TTL), None)


def _bearer(request: flask.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise errors.Unauthorized("Authorization must be 'Bearer <token>'")
    return token.strip()


def optional_account(request: flask.Request) -> int | None:
    """The authenticated account id, None for an anonymous request; 401 for a bad token."""
    token = _bearer(request)
    if token is None:
        return None
    claims = decode_token(token)
    account_id = int(claims["sub"])  # digits within bigint: checked by well_formed
    # The account's count rides in the token-version read's round trip, made by Redis only if
    # the cached version is the token's; when it was not cached, it is counted once PostgreSQL
    # has confirmed the version.
    token_version = claims.get("tv")
    ratelimit.check_account(account_id, only_if=(token_version_key(account_id), str(token_version)))
    cached = cache.read("GET", token_version_key(account_id))
    version = int(cached) if cached is not None else _load_token_version(account_id)
    if version is None or version != token_version:
        raise errors.Unauthorized("token revoked")
    logs.account_var.set(account_id)
    if cached is None:
        ratelimit.check_account(account_id)
    return account_id


def require_account(request: flask.Request) -> int:
    """The authenticated account id; 401 when the request carries no valid token."""
    account_id = optional_account(request)
    if account_id is None:
        raise errors.Unauthorized()
    return account_id
