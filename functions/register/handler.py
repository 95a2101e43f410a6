"""register: ``POST {username, password, display_name?, bio?}`` → 201 with the new account.

Usernames are lower-cased and must match ``^[a-z0-9_]{3,30}$``; a taken name is 409, invalid
input 422 with per-field ``details``. Limited per client IP by the stricter ``register`` budget.
"""

from __future__ import annotations

import flask

from minitwitter import users
from minitwitter.http import endpoint, parse_json, respond


@endpoint("register", ["POST"], rate_scope="register", root_only=True)
def handle(request: flask.Request) -> flask.Response:
    """Create the account and point ``Location`` at its get-user URL."""
    account = users.register(parse_json(request))
    return respond(201, account, {"Location": f"/function/get-user/{account['username']}"})
