"""The gateway's direct calls answer exactly as functions-framework's Flask app does.

The local gateway calls every stack.yml handler through :class:`minitwitter.runtime.DirectEndpoint`
(no Flask dispatch); OpenFaaS serves the same handler through functions-framework's Flask app and
:class:`minitwitter.runtime.CrashGuard` (``tests.api.Api`` uses that one everywhere else). Here
the same requests go through both, against the same PostgreSQL and Redis, and the answers must
be identical: status, headers and body for reads, errors and repeated idempotent writes; status,
header names and the JSON shape for writes that create something new.
"""

from __future__ import annotations

import io
import sys
from typing import Any

import pytest
from werkzeug.test import TestResponse
from werkzeug.urls import iri_to_uri

from gateway.registry import load_function
from gateway.stack import stack_functions
from minitwitter.config import REPO_ROOT
from minitwitter.http import respond
from minitwitter.runtime import PLAIN_PATH, CrashGuard, DirectEndpoint
from tests.api import Account, Api

METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "TRACE")
CALL_ID = "direct-call-conformance"


def answer(response: TestResponse) -> tuple[str, list[tuple[str, str]], bytes]:
    """Status line, headers in the order sent, body."""
    return response.status, list(response.headers.items()), response.get_data()


def shape(value: Any) -> Any:
    """The JSON structure without the values: keys of objects, shapes of list items."""
    if isinstance(value, dict):
        return {key: shape(item) for key, item in value.items()}
    if isinstance(value, list):
        return [shape(item) for item in value]
    return type(value).__name__


def both(function: str, method: str = "GET", path: str = "/", **kwargs: Any) -> tuple[TestResponse, TestResponse]:
    """The same request through functions-framework's app, then through the direct call."""
    headers = {"X-Call-Id": CALL_ID, **kwargs.pop("headers", {})}
    via_flask = Api().call(function, method, path, headers=headers, **kwargs)
    direct = Api(direct=True).call(function, method, path, headers=headers, **kwargs)
    return via_flask, direct


def assert_same(function: str, method: str = "GET", path: str = "/", **kwargs: Any) -> TestResponse:
    via_flask, direct = both(function, method, path, **kwargs)
    assert answer(direct) == answer(via_flask), f"{method} {function}{path}"
    assert direct.mimetype == "application/json" or (direct.status_code == 204 and not direct.get_data())
    return direct


def assert_same_shape(flask_response: TestResponse, direct_response: TestResponse) -> None:
    assert direct_response.status_code == flask_response.status_code
    assert sorted(direct_response.headers.keys()) == sorted(flask_response.headers.keys())
    assert shape(direct_response.json) == shape(flask_response.json)


@pytest.fixture
def world(api: Api) -> dict[str, Any]:
    """alice (with a post that has a comment and a like) and bob, who follows alice."""
    alice, bob = api.account("alice"), api.account("bob")
    post = api.call("create-post", "POST", json={"content": "hello from alice"}, token=alice.token).json
    comment = api.call("add-comment", "POST", f"/{post['id']}", json={"content": "nice"}, token=bob.token).json
    assert api.call("like-post", "POST", f"/{post['id']}", token=bob.token).status_code == 200
    assert api.call("follow-user", "POST", "/alice", token=bob.token).status_code == 200
    return {"alice": alice, "bob": bob, "post": post, "comment": comment}


def test_every_stack_function_is_an_endpoint_and_other_handlers_keep_flask() -> None:
    for name, fn in stack_functions(str(REPO_ROOT / "stack.yml")).items():
        flask_app, direct = load_function(name, fn.handler)
        assert isinstance(direct, DirectEndpoint), name
        assert isinstance(flask_app, CrashGuard), name
    # A plain functions-framework handler (no @endpoint) is served by its Flask app only.
    _, direct = load_function("echo", REPO_ROOT / "tests" / "fixtures" / "functions" / "echo")
    assert direct is None


@pytest.mark.parametrize("function", sorted(stack_functions(str(REPO_ROOT / "stack.yml"))))
def test_every_method_and_framework_path_answers_alike(function: str) -> None:
    """Anonymous calls with no body on every method and on functions-framework's own 404 paths
    (which both hosts answer in JSON, never Flask's HTML page)."""
    for path in ("/", "/favicon.ico", "/robots.txt", "//robots.txt", "///favicon.ico", "/favicon.ico/",
                 "/robots.txt/x", "/no/such/thing", "//", "/a//b"):
        for method in METHODS:
            response = assert_same(function, method, path, raw_path=True)
            if path.lstrip("/") in ("favicon.ico", "robots.txt"):
                assert response.status_code == 404
                if method != "HEAD":
                    assert response.json == {"error": "not found", "details": {}}


def test_reads_answer_alike(world: dict[str, Any]) -> None:
    alice: Account = world["alice"]
    bob: Account = world["bob"]
    post_id, comment_id = world["post"]["id"], world["comment"]["id"]
    for query in ("", "limit=1", "limit=0", "limit=abc", "author=alice", "author=nobody",
                  "sentiment=positive", "sentiment=bogus", "q=hello", "q=", "cursor=garbage", "extra=1"):
        assert_same("list-posts", query=query)
    assert_same("list-posts", query="limit=1", token=bob.token)
    for path in (f"/{post_id}", "/999999", "/abc", f"/{post_id}/x"):
        assert_same("get-post", path=path)
        assert_same("get-post", path=path, token=bob.token)
        assert_same("list-comments", path=path)
    for path in ("/alice", f"/id/{alice.id}", "/me", "/nobody", "/ALICE", "/id/0"):
        assert_same("get-user", path=path)
        assert_same("get-user", path=path, token=bob.token)
    assert_same("get-user", path="/me", token="not-a-token")
    assert_same("home-timeline")
    assert_same("home-timeline", token=bob.token)
    assert_same("home-timeline", token=bob.token, query="limit=1")
    assert_same("list-comments", path=f"/{post_id}", query=f"after={comment_id}")


def test_bad_input_answers_alike(world: dict[str, Any]) -> None:
    bob: Account = world["bob"]
    post_id = world["post"]["id"]
    bodies: list[dict[str, Any]] = [
        {"data": b"{not json", "headers": {"Content-Type": "application/json"}},
        {"data": b"[1, 2]", "headers": {"Content-Type": "application/json"}},
        {"data": b"content=hi", "headers": {"Content-Type": "application/x-www-form-urlencoded"}},
        {"data": b"x" * (70 * 1024), "headers": {"Content-Type": "application/json"}},
        {"json": {"unknown": 1}},
        {"json": {"content": ""}},
        {"json": {"content": "x" * 281}},
        {"json": {"username": "Bad Name!", "password": "short"}},
    ]
    for kwargs in bodies:
        assert_same("register", "POST", **kwargs)
        assert_same("login", "POST", **kwargs)
        assert_same("create-post", "POST", token=bob.token, **kwargs)
        assert_same("add-comment", "POST", f"/{post_id}", token=bob.token, **kwargs)
        assert_same("update-post", "PATCH", f"/{post_id}", token=bob.token, **kwargs)
        assert_same("update-user", "PATCH", "/me", token=bob.token, **kwargs)
        assert_same("analyze-sentiment", "POST", **kwargs)
    assert_same("login", "POST", json={"username": "alice", "password": "wrong password"})
    assert_same("update-user", "PATCH", "/me", token=bob.token,
                json={"password": "a new password", "current_password": "not the password"})
    # Other people's things are 404, anonymous writes 401.
    assert_same("delete-post", "DELETE", f"/{post_id}", token=bob.token)
    assert_same("update-post", "PATCH", f"/{post_id}", token=bob.token, json={"content": "mine now"})
    assert_same("delete-post", "DELETE", f"/{post_id}")
    assert_same("follow-user", "POST", "/bob", token=bob.token)


def test_repeated_idempotent_writes_answer_alike(world: dict[str, Any], api: Api) -> None:
    alice: Account = world["alice"]
    bob: Account = world["bob"]
    post_id = world["post"]["id"]
    assert_same("like-post", "POST", f"/{post_id}", token=bob.token)
    assert_same("follow-user", "POST", "/alice", token=bob.token)
    api.call("like-post", "DELETE", f"/{post_id}", token=bob.token)
    assert_same("like-post", "DELETE", f"/{post_id}", token=bob.token)
    api.call("follow-user", "DELETE", "/alice", token=bob.token)
    assert_same("follow-user", "DELETE", "/alice", token=bob.token)
    # An Idempotency-Key replay returns the first answer, whichever host replays it.
    key = {"Idempotency-Key": "conformance-1"}
    first = api.call("create-post", "POST", json={"content": "once"}, token=alice.token, headers=key)
    assert first.status_code == 201
    assert_same("create-post", "POST", json={"content": "once"}, token=alice.token, headers=key)


def test_writes_that_create_answer_alike_in_shape(world: dict[str, Any]) -> None:
    alice: Account = world["alice"]
    bob: Account = world["bob"]
    post_id = world["post"]["id"]
    api, direct_api = Api(), Api(direct=True)
    same_id = {"X-Call-Id": CALL_ID}
    assert_same_shape(api.register("carol"), direct_api.register("dave"))
    assert_same_shape(api.login("carol"), direct_api.login("dave"))
    created = [a.call("create-post", "POST", json={"content": f"post {i}"}, token=alice.token)
               for i, a in enumerate((api, direct_api))]
    assert_same_shape(*created)
    assert created[1].headers["Location"] == f"/function/get-post/{created[1].json['id']}"
    assert_same_shape(*(a.call("update-post", "PATCH", f"/{c.json['id']}", json={"content": "edited"},
                               token=alice.token) for a, c in zip((api, direct_api), created, strict=True)))
    comments = [a.call("add-comment", "POST", f"/{post_id}", json={"content": f"c{i}"}, token=bob.token)
                for i, a in enumerate((api, direct_api))]
    assert_same_shape(*comments)
    deleted = [a.call("add-comment", "DELETE", f"/{post_id}/{c.json['id']}", token=bob.token, headers=same_id)
               for a, c in zip((api, direct_api), comments, strict=True)]
    assert deleted[0].status_code == 204
    assert answer(deleted[0]) == answer(deleted[1])
    deleted = [a.call("delete-post", "DELETE", f"/{c.json['id']}", token=alice.token, headers=same_id)
               for a, c in zip((api, direct_api), created, strict=True)]
    assert deleted[0].status_code == 204
    assert answer(deleted[0]) == answer(deleted[1])
    assert "Content-Type" not in deleted[1].headers  # an empty 204 has no type
    assert_same_shape(*(a.call("analyze-sentiment", "POST", json={"text": "I love it"}) for a in (api, direct_api)))


def test_a_handler_that_raises_anyway_gets_the_json_500() -> None:
    def broken(_request: Any) -> Any:
        raise RuntimeError("secret internals")

    seen: list[str] = []
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "QUERY_STRING": "", "SERVER_NAME": "x",
               "SERVER_PORT": "80", "SERVER_PROTOCOL": "HTTP/1.1", "wsgi.url_scheme": "http",
               "wsgi.input": io.BytesIO(b""), "wsgi.errors": sys.stderr}
    body = b"".join(DirectEndpoint(broken)(environ, lambda status, _headers: seen.append(status)))
    assert seen == ["500 INTERNAL SERVER ERROR"]
    assert body == b'{"error":"internal error","details":{}}'


def test_the_rest_of_a_request_body_is_read_after_the_handler_as_functions_framework_does() -> None:
    def reads_nothing(_request: Any) -> Any:
        return respond(405, {"error": "method not allowed", "details": {}})

    body = io.BytesIO(b'{"content": "never read"}')
    environ = {"REQUEST_METHOD": "POST", "PATH_INFO": "/", "QUERY_STRING": "", "SERVER_NAME": "x",
               "SERVER_PORT": "80", "SERVER_PROTOCOL": "HTTP/1.1", "wsgi.url_scheme": "http",
               "CONTENT_LENGTH": str(len(body.getvalue())), "wsgi.input": body, "wsgi.errors": sys.stderr}
    DirectEndpoint(reads_nothing)(environ, lambda _status, _headers: None)
    assert body.read() == b""


@pytest.mark.no_stores
@pytest.mark.parametrize("location", ["/function/get-post/42", "/a b/ü?x=<1>", "http://example.com/ok"])
def test_a_location_werkzeug_would_encode_goes_through_werkzeug(location: str) -> None:
    def created(_request: Any) -> Any:
        return respond(201, {"ok": True}, {"Location": location})

    def run(app: Any) -> tuple[list[Any], bytes]:
        seen: list[Any] = []
        environ = {"REQUEST_METHOD": "POST", "PATH_INFO": "/", "QUERY_STRING": "", "SERVER_NAME": "x",
                   "SERVER_PORT": "80", "SERVER_PROTOCOL": "HTTP/1.1", "wsgi.url_scheme": "http",
                   "wsgi.input": io.BytesIO(b""), "wsgi.errors": sys.stderr}
        body = b"".join(app(environ, lambda status, headers: seen.extend([status, headers])))
        return seen, body

    direct = run(DirectEndpoint(created))
    via_werkzeug = run(lambda environ, start: created(None)(environ, start))
    assert direct == via_werkzeug
    assert dict(direct[0][1])["Location"].isascii()


@pytest.mark.no_stores
@pytest.mark.parametrize("value", ["/function/get-post/42", "/", "/a/./b/../c", "/x-y_z.~/9/", "/a//b"])
def test_a_plain_path_is_one_iri_to_uri_leaves_alone(value: str) -> None:
    assert PLAIN_PATH.fullmatch(value)
    assert iri_to_uri(value) == value


@pytest.mark.no_stores
@pytest.mark.parametrize("value", ["//host/path", "/a b", "/a%20b", "/ü", "/a?b=c", "/a#b", "http://x/a", ""])
def test_anything_else_is_left_to_iri_to_uri(value: str) -> None:
    assert PLAIN_PATH.fullmatch(value) is None
