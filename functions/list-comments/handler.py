"""list-comments: ``GET /<post_id>?limit&max_id&since_id&min_id`` → the post's comments, oldest first.

A bare JSON array with a ``Link`` header (``rel="next"`` continues to newer comments). Unknown
post 404; malformed parameters 400. Anonymous callers are allowed; a sent token must be valid.
"""

from __future__ import annotations

import flask

from minitwitter import auth, comments, pagination
from minitwitter.http import JSON, endpoint, path_id


@endpoint("list-comments", ["GET"])
def handle(request: flask.Request) -> flask.Response:
    """Return one page of a post's comments."""
    auth.optional_account(request)
    post_id = path_id(request, "post")
    listing = comments.list_for_post(post_id, pagination.parse(request.args))
    response = flask.Response(listing.body, status=200, mimetype=JSON)
    if listing.link:
        response.headers["Link"] = listing.link
    return response
