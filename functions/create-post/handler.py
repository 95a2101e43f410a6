"""create-post: ``POST {content, callback_url?}`` → 201 with the post (sentiment ``pending``).

``content`` is 1-280 code points after trimming. ``Idempotency-Key`` makes retries safe: the
first request answers 201, a repeat with the same key answers **200** with the original post
and ``Idempotent-Replayed: true``. A callback URL (``X-Callback-Url`` or ``callback_url``)
receives the sentiment verdict. A token is required (401).
"""

from __future__ import annotations

import flask

from minitwitter import auth, errors, logs, posts
from minitwitter.http import endpoint, parse_json, path_parts, respond


@endpoint("create-post", ["POST"])
def handle(request: flask.Request) -> flask.Response:
    """Create a post for the caller."""
    account_id = auth.require_account(request)
    if path_parts(request):
        raise errors.NotFound("no such path")
    post, created = posts.create(
        account_id, parse_json(request),
        idempotency_key=request.headers.get("Idempotency-Key"),
        callback_header=request.headers.get("X-Callback-Url"),
        call_id=logs.call_id_var.get())
    headers = {"Location": f"/function/get-post/{post['id']}"}
    if not created:
        headers["Idempotent-Replayed"] = "true"
    return respond(201 if created else 200, post, headers)
