"""get-user: ``GET /<username>``, ``GET /id/<id>`` (anonymous allowed) or ``GET /me`` (token).

The account with ``posts_count``, ``followers_count``, ``following_count``, ``created_at``, the
viewer's ``following``/``followed_by`` (false for anonymous callers) and ``sentiment_summary``.
A token, when sent, must be valid (401 otherwise), even where it is optional.
"""

from __future__ import annotations

import flask

from minitwitter import auth, errors, users
from minitwitter.http import endpoint, path_parts, respond
from minitwitter.jsonshape import parse_id


@endpoint("get-user", ["GET"])
def handle(request: flask.Request) -> flask.Response:
    """Resolve the path to an account and return it as the caller sees it."""
    parts = path_parts(request)
    viewer = auth.optional_account(request)
    if parts == ["me"]:
        if viewer is None:
            raise errors.Unauthorized()
        return respond(200, users.get_by_id(viewer, viewer))
    if len(parts) == 1:
        return respond(200, users.get_by_username(parts[0], viewer))
    if len(parts) == 2 and parts[0] == "id" and (account_id := parse_id(parts[1])) is not None:
        return respond(200, users.get_by_id(account_id, viewer))
    raise errors.NotFound("account not found")
