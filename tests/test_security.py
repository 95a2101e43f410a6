"""Issue 20's guarantees, each proven here (the README's Security section lists them).

In-process tests call the functions as the runtime does (tests/api.py); the ones marked slow
start a real gateway (granian) and, where the guarantee crosses the queue, real RQ workers.
"""

from __future__ import annotations

import io
import math
import time
from typing import Any

import jwt
import pytest

from minitwitter.config import Config
from tests.api import Api
from tests.test_accounts import assert_clean


def signed(config: Config, **claims: Any) -> str:
    """A token signed with the service's own key: only its claims are wrong."""
    now = int(time.time())
    base: dict[str, Any] = {"sub": "1", "tv": 0, "iat": now, "exp": now + 600, "iss": config.jwt_issuer}
    base.update(claims)
    return jwt.encode({k: v for k, v in base.items() if v is not None}, config.jwt_secret,
                      algorithm="HS256")


# --- 4. malformed or out-of-range claims of a validly signed token: 401 ----------------------

@pytest.mark.parametrize("claims", [
    {"sub": "1" * 40},                      # beyond bigint: reached PostgreSQL (500)
    {"sub": "9223372036854775808"},         # 2**63
    {"sub": "0"}, {"sub": "-1"}, {"sub": " 1"}, {"sub": "1.0"}, {"sub": "\u0661"},  # Arabic-Indic 1
    {"sub": ""}, {"sub": "1e3"},
    {"tv": "0"}, {"tv": True}, {"tv": 10**40}, {"tv": [0]}, {"tv": None},
    {"exp": math.nan}, {"exp": math.inf}, {"exp": 10**40},
    {"iat": "yesterday"}, {"iat": math.nan}, {"iat": math.inf}, {"iat": True},
    {"iat": int(time.time()) - 7200},      # a lifetime longer than any token issued here
])
def test_malformed_or_out_of_range_claims_are_401(api: Api, config: Config, claims: dict[str, Any]) -> None:
    api.account("alice")
    token = signed(config, **claims)
    for function, method, path in (("get-user", "GET", "/me"), ("get-user", "GET", "/alice"),
                                   ("create-post", "POST", "/")):
        response = api.call(function, method, path, token=token, json={"content": "x"})
        assert response.status_code == 401, (claims, function, response.get_data(as_text=True))
        assert set(response.json) == {"error", "details"}
        assert_clean(response)


# --- 8. the contract: empty cursors are malformed -------------------------------------------

@pytest.mark.parametrize("param", ["max_id", "since_id", "min_id", "limit"])
@pytest.mark.parametrize("function, path", [("list-posts", "/"), ("home-timeline", "/"),
                                            ("list-comments", "/{post}")])
def test_empty_cursor_or_limit_is_400(api: Api, param: str, function: str, path: str) -> None:
    alice = api.account("alice")
    post = api.call("create-post", "POST", json={"content": "hello"}, token=alice.token).json
    response = api.call(function, "GET", path.format(post=post["id"]), query=f"{param}=",
                        token=alice.token)
    assert response.status_code == 400, response.get_data(as_text=True)
    assert response.json["error"] == "invalid pagination parameters"
    assert list(response.json["details"]) == [param]


# --- 9. log lines holding NUL are stored, nothing dropped -------------------------------------

def test_log_lines_with_nul_are_stored_with_every_field(config: Config) -> None:
    """PostgreSQL's text and jsonb cannot hold NUL (22P05): it was refusing the batch, then the
    line. Each field is stored, the NUL written as the six characters ``\\u0000``."""
    from minitwitter import db, logs
    from tests.test_logs import logger_for

    sink = logs.LogSink(io.StringIO(), capacity=100)
    try:
        log = logger_for(sink)
        with logs.context(function="get-user\x00", call_id="call\x00id"):
            log.info("request\x00", extra={"path": "/\x00", "method": "GET", "status": 404,
                                           "literal": "\\u0000 stays as it was"})
            log.info("a line without NUL in the same batch")
        sink.flush()
    finally:
        sink.close()
    assert sink.dropped == 0
    rows = db.run("SELECT message, function, call_id, status, extra FROM logs ORDER BY id")
    assert rows == [
        ["request\\u0000", "get-user\\u0000", "call\\u0000id", 404,
         {"path": "/\\u0000", "method": "GET", "literal": "\\u0000 stays as it was"}],
        ["a line without NUL in the same batch", "get-user\\u0000", "call\\u0000id", None, None],
    ]
