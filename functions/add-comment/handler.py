"""add-comment: ``POST /<post_id> {content, callback_url?}`` → 201 comment;
``DELETE /<post_id>/<comment_id>`` → 204 (your own comment only, 404 otherwise).

Comments are analysed for sentiment like posts. ``Idempotency-Key`` as for create-post: a repeat
answers 200 with the original comment and ``Idempotent-Replayed: true``. Token required.
"""

from __future__ import annotations

import flask

from minitwitter import auth, comments, errors, logs
from minitwitter.http import endpoint, parse_json, path_parts, respond
from minitwitter.jsonshape import parse_id


@endpoint("add-comment", ["POST", "DELETE"])
def handle(request: flask.Request) -> flask.Response:
    """Comment on a post, or delete one of your comments."""
    account_id = auth.require_account(request)
    ids = [parse_id(part) for part in path_parts(request)]
    if request.method == "DELETE":
        if len(ids) != 2 or None in ids:
            raise errors.NotFound("comment not found")
        comments.delete(account_id, ids[0], ids[1])  # type: ignore[arg-type]
        return respond(204)
    if len(ids) != 1 or ids[0] is None:
        raise errors.NotFound("post not found")
    comment, created = comments.add(
        account_id, ids[0], parse_json(request),
        idempotency_key=request.headers.get("Idempotency-Key"),
        callback_header=request.headers.get("X-Callback-Url"),
        call_id=logs.call_id_var.get())
    return respond(201 if created else 200, comment,
                   None if created else {"Idempotent-Replayed": "true"})
