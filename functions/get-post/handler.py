"""get-post: ``GET /<id>`` → the post with author, counts, sentiment and the viewer's ``liked``.

Anonymous callers are allowed (``liked`` is false); a token, when sent, must be valid (401).
"""

from __future__ import annotations

import flask

from minitwitter import auth, errors, posts
from minitwitter.http import endpoint, path_parts, respond
from minitwitter.jsonshape import parse_id


@endpoint("get-post", ["GET"])
def handle(request: flask.Request) -> flask.Response:
    """Return one post as the caller sees it."""
    viewer = auth.optional_account(request)
    parts = path_parts(request)
    post_id = parse_id(parts[0]) if len(parts) == 1 else None
    if post_id is None:
        raise errors.NotFound("post not found")
    return respond(200, posts.get(post_id, viewer))
