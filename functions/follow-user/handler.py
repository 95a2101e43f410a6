"""follow-user: ``POST /<username>`` follows, ``DELETE /<username>`` unfollows.

Both are idempotent and return the relationship ``{id, username, following, followed_by}``
with 200. Unknown account 404; following yourself 422; a token is required (401).
"""

from __future__ import annotations

import flask

from minitwitter import auth, errors, follows
from minitwitter.http import endpoint, path_parts, respond


@endpoint("follow-user", ["POST", "DELETE"])
def handle(request: flask.Request) -> flask.Response:
    """Follow or unfollow the account named in the path."""
    account_id = auth.require_account(request)
    parts = path_parts(request)
    if len(parts) != 1:
        raise errors.NotFound("account not found")
    write = follows.follow if request.method == "POST" else follows.unfollow
    return respond(200, write(account_id, parts[0]))
