"""delete-post: ``DELETE /<id>`` → 204; its likes and comments go with it.

Author only: anyone else's post is a 404 (not 403), so its existence does not leak.
"""

from __future__ import annotations

import flask

from minitwitter import auth, posts
from minitwitter.http import endpoint, path_id, respond


@endpoint("delete-post", ["DELETE"])
def handle(request: flask.Request) -> flask.Response:
    """Delete the caller's post."""
    account_id = auth.require_account(request)
    post_id = path_id(request, "post")
    posts.delete(account_id, post_id)
    return respond(204)
