"""like-post: ``POST /<id>`` likes, ``DELETE /<id>`` unlikes; both idempotent, 200 with the post.

Unknown post 404; a token is required (401).
"""

from __future__ import annotations

import flask

from minitwitter import auth, errors, likes
from minitwitter.http import endpoint, path_parts, respond
from minitwitter.jsonshape import parse_id


@endpoint("like-post", ["POST", "DELETE"])
def handle(request: flask.Request) -> flask.Response:
    """Like or unlike the post named in the path."""
    account_id = auth.require_account(request)
    parts = path_parts(request)
    post_id = parse_id(parts[0]) if len(parts) == 1 else None
    if post_id is None:
        raise errors.NotFound("post not found")
    write = likes.like if request.method == "POST" else likes.unlike
    return respond(200, write(account_id, post_id))
