"""update-user: ``PATCH /me`` with any of ``display_name``, ``bio``, ``password``.

A new ``password`` needs ``current_password`` and revokes every earlier token, the one used for
this request included (log in again). Only ``/me`` exists: another account's path is 404, so
nobody can change an account that is not theirs.
"""

from __future__ import annotations

import flask

from minitwitter import auth, errors, users
from minitwitter.http import endpoint, parse_json, path_parts, respond


@endpoint("update-user", ["PATCH"])
def handle(request: flask.Request) -> flask.Response:
    """Apply the changes to the caller's own account and return it."""
    account_id = auth.require_account(request)
    if path_parts(request) != ["me"]:
        raise errors.NotFound("account not found")
    return respond(200, users.update(account_id, parse_json(request)))
