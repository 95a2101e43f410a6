"""login: ``POST {username, password}`` → ``{access_token, token_type: "Bearer", expires_in}``.

An unknown username and a wrong password are the same 401, with the same argon2 work, so the
response reveals neither. Limited per client IP by the stricter ``login`` budget, and per
username by the failed-login budget (``users.login``).
"""

from __future__ import annotations

import flask

from minitwitter import users
from minitwitter.http import client_ip, endpoint, parse_json, respond

#: A bearer token must not be stored by caches on the way (RFC 6749 §5.1).
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


@endpoint("login", ["POST"], rate_scope="login", root_only=True)
def handle(request: flask.Request) -> flask.Response:
    """Check the credentials and return a fresh access token."""
    return respond(200, users.login(parse_json(request), client_ip(request)), NO_STORE)
