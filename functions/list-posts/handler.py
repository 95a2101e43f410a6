"""list-posts: ``GET ?limit&max_id&since_id&min_id&author&sentiment&q`` → the public timeline.

A bare JSON array, newest first, with a ``Link`` header (``rel="next"``/``rel="prev"``).
Filters: ``author`` (username), ``sentiment`` (positive/neutral/negative), ``q`` (full text).
Malformed parameters are a 400. Anonymous callers are allowed; a sent token must be valid.
"""

from __future__ import annotations

import flask

from minitwitter import auth, errors, feed, pagination
from minitwitter.http import JSON, endpoint, path_parts


@endpoint("list-posts", ["GET"])
def handle(request: flask.Request) -> flask.Response:
    """Return one page of the public timeline."""
    if path_parts(request):
        raise errors.NotFound("no such path")
    page = pagination.parse(request.args)
    filters = feed.public_filters(request.args)
    listing = feed.public_timeline(page, auth.optional_account(request), filters)
    response = flask.Response(listing.body, status=200, mimetype=JSON)
    if listing.link:
        response.headers["Link"] = listing.link
    return response
