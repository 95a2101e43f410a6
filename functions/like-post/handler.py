"""like-post: ``POST /<id>`` likes, ``DELETE /<id>`` unlikes; both idempotent, 200 with the post.

Unknown post 404; a token is required (401).
"""

from __future__ import annotations

import flask

from minitwitter import auth, likes
from minitwitter.http import endpoint, path_id, respond


@endpoint("like-post", ["POST", "DELETE"])
def handle(request: flask.Request) -> flask.Response:
    """Like or unlike the post named in the path."""
    account_id = auth.require_account(request)
    post_id = path_id(request, "post")
    write = likes.like if request.method == "POST" else likes.unlike
    return respond(200, write(account_id, post_id))
