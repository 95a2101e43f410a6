"""get-post: ``GET /<id>`` → the post with author, counts, sentiment and the viewer's ``liked``.

Anonymous callers are allowed (``liked`` is false); a token, when sent, must be valid (401).
"""

from __future__ import annotations

import flask

from minitwitter import auth, posts
from minitwitter.http import endpoint, path_id, respond


@endpoint("get-post", ["GET"])
def handle(request: flask.Request) -> flask.Response:
    """Return one post as the caller sees it."""
    viewer = auth.optional_account(request)
    post_id = path_id(request, "post")
    return respond(200, posts.get(post_id, viewer))
