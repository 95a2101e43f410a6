"""delete-post: ``DELETE /<id>`` → 204; its likes and comments go with it.

Author only: anyone else's post is a 404 (not 403), so its existence does not leak.
"""

from __future__ import annotations

import flask

from minitwitter import auth, errors, posts
from minitwitter.http import endpoint, path_parts, respond
from minitwitter.jsonshape import parse_id


@endpoint("delete-post", ["DELETE"])
def handle(request: flask.Request) -> flask.Response:
    """Delete the caller's post."""
    account_id = auth.require_account(request)
    parts = path_parts(request)
    post_id = parse_id(parts[0]) if len(parts) == 1 else None
    if post_id is None:
        raise errors.NotFound("post not found")
    posts.delete(account_id, post_id)
    return respond(204)
