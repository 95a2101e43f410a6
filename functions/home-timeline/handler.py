"""home-timeline: ``GET ?limit&max_id&since_id&min_id`` → posts of followed accounts and your own.

A bare JSON array, newest first, with a ``Link`` header. Served from the caller's Redis feed
(rebuilt from PostgreSQL when missing) or from PostgreSQL when Redis is down. Token required.
"""

from __future__ import annotations

import flask

from minitwitter import auth, errors, feed, pagination
from minitwitter.http import JSON, endpoint, path_parts


@endpoint("home-timeline", ["GET"])
def handle(request: flask.Request) -> flask.Response:
    """Return one page of the caller's home timeline."""
    account_id = auth.require_account(request)
    if path_parts(request):
        raise errors.NotFound("no such path")
    listing = feed.home_timeline(account_id, pagination.parse(request.args))
    response = flask.Response(listing.body, status=200, mimetype=JSON)
    if listing.link:
        response.headers["Link"] = listing.link
    return response
