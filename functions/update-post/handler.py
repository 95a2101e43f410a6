"""update-post: ``PATCH`` or ``PUT /<id>`` with ``{content, callback_url?}`` → 200 with the post.

Author only: anyone else's post is a 404 (not 403), so its existence does not leak. Sets
``edited_at``, resets the sentiment to ``pending`` under a new version and re-analyses it.
"""

from __future__ import annotations

import flask

from minitwitter import auth, logs, posts
from minitwitter.http import endpoint, parse_json, path_id, respond


@endpoint("update-post", ["PATCH", "PUT"])
def handle(request: flask.Request) -> flask.Response:
    """Edit the caller's post."""
    account_id = auth.require_account(request)
    post_id = path_id(request, "post")
    post = posts.update(account_id, post_id, parse_json(request),
                        callback_header=request.headers.get("X-Callback-Url"),
                        call_id=logs.call_id_var.get())
    return respond(200, post)
