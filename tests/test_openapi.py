"""openapi.yaml against the code: the document is valid OpenAPI 3.1, and real responses match it.

Every function is called for real (PostgreSQL, Redis, in-process through ``tests.api``) and each
response (status, documented headers, body) is validated with openapi-core against the operation
the gateway path names: ``api.call`` sends the path the function sees, so the request is rebuilt
with the gateway path ``/function/<name>/...`` before validation. Requests that are meant to be
valid are validated too, so the documented request schemas accept what clients really send.
Callback payloads (sentiment verdicts, async results) are validated against the documented
``callbacks`` with jsonschema. A response the document does not describe fails the test.
"""

from __future__ import annotations

import ast
import hashlib
import hmac
import json
import re
from typing import Any

import httpx
import pytest
import yaml
from jsonschema import Draft202012Validator
from openapi_core import OpenAPI
from openapi_core.contrib.werkzeug import WerkzeugOpenAPIRequest, WerkzeugOpenAPIResponse
from openapi_core.exceptions import OpenAPIError
from openapi_core.testing import MockRequest, MockResponse
from openapi_spec_validator import validate as validate_spec
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012
from rq import SimpleWorker
from werkzeug.test import EnvironBuilder, TestResponse
from werkzeug.wrappers import Request

from minitwitter import cache, jobs
from minitwitter.config import REPO_ROOT, Config, set_config
from tests.api import PASSWORD, Account, Api
from tests.callback_receiver import Receiver
from tests.conftest import eventually

SPEC_PATH = REPO_ROOT / "openapi.yaml"
GATEWAY = "http://127.0.0.1:8080"  # the document's server; only the path part matters here
DOC: dict[str, Any] = yaml.safe_load(SPEC_PATH.read_text())
METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
SAMPLE_PARAMS = {"username": "alice", "id": "1", "post_id": "1", "comment_id": "1"}
OAS_URI = "urn:minitwitter:openapi"


# --- the document -------------------------------------------------------------------------

def function_of(path: str) -> str | None:
    """``/function/<name>/...`` (or ``/async-function/<name>``) → ``name``; None otherwise."""
    match = re.match(r"^/(?:async-)?function/([a-z0-9-]+)", path)
    return match.group(1) if match else None


def only_405(operation: dict[str, Any]) -> bool:
    return set(operation["responses"]) == {"405"}


def allowed_methods(path: str) -> set[str]:
    """Methods a documented path takes (the operations that are not just a 405)."""
    item = DOC["paths"][path]
    return {m.upper() for m in METHODS if m in item and not only_405(item[m])}


def not_allowed() -> list[tuple[str, str]]:
    """Every documented ``(function path, method)`` whose only response is 405."""
    return [(path, method) for path, item in DOC["paths"].items() if path.startswith("/function/")
            for method in METHODS if method in item and only_405(item[method])]


def concrete(path: str) -> str:
    """A documented path template with sample values for its parameters."""
    return re.sub(r"\{(\w+)\}", lambda m: SAMPLE_PARAMS[m.group(1)], path)


def endpoint_methods(name: str) -> set[str]:
    """The methods in the ``@endpoint(name, [...])`` decorator of ``functions/<name>/handler.py``."""
    tree = ast.parse((REPO_ROOT / "functions" / name / "handler.py").read_text())
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "endpoint"
                and node.args and ast.literal_eval(node.args[0]) == name):
            return {m.upper() for m in ast.literal_eval(node.args[1])}
    raise AssertionError(f"functions/{name}/handler.py has no @endpoint({name!r}, ...)")


@pytest.fixture(scope="module")
def spec() -> OpenAPI:
    return OpenAPI.from_file_path(str(SPEC_PATH))


def schema_validator(pointer: str) -> Draft202012Validator:
    """A JSON Schema 2020-12 validator for the schema at ``pointer`` inside openapi.yaml."""
    registry = Registry().with_resource(OAS_URI, Resource.from_contents(
        DOC, default_specification=DRAFT202012))
    return Draft202012Validator({"$ref": f"{OAS_URI}#{pointer}"}, registry=registry)


def check_callback(pointer: str, headers: dict[str, str], body: Any) -> None:
    """Validate a received callback against the documented callback operation at ``pointer``."""
    node: Any = DOC
    for part in pointer.strip("/").split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    operation = node["post"]
    lowered = {k.lower(): v for k, v in headers.items()}
    for param in operation.get("parameters", []):
        assert param["in"] == "header"
        value = lowered.get(param["name"].lower())
        if param.get("required"):
            assert value is not None, f"callback header {param['name']} missing"
        if value is not None:
            Draft202012Validator(param["schema"]).validate(value)
    schema_ptr = pointer + "/post/requestBody/content/application~1json/schema"
    errors = list(schema_validator(schema_ptr).iter_errors(body))
    assert not errors, f"{pointer}: {[e.message for e in errors]}"


@pytest.mark.no_stores
def test_document_is_valid_openapi_3_1() -> None:
    assert DOC["openapi"].startswith("3.1.")
    validate_spec(DOC)
    OpenAPI.from_file_path(str(SPEC_PATH))


@pytest.mark.no_stores
def test_every_stack_function_is_documented_and_every_documented_function_exists() -> None:
    stack = set(yaml.safe_load((REPO_ROOT / "stack.yml").read_text())["functions"])
    documented = {function_of(p) for p in DOC["paths"]} - {None}
    assert documented == stack
    for name in documented:
        assert (REPO_ROOT / "functions" / str(name) / "handler.py").is_file(), name
    for path, item in DOC["paths"].items():  # each operation is tagged with its function
        name = function_of(path)
        for method in METHODS:
            if method in item:
                assert item[method]["tags"] == [name or "gateway"], (path, method)


@pytest.mark.no_stores
def test_documented_methods_are_the_handlers_methods() -> None:
    by_function: dict[str, set[str]] = {}
    for path in DOC["paths"]:
        name = function_of(path)
        if name and path.startswith("/function/"):
            by_function.setdefault(name, set()).update(allowed_methods(path))
    for name, methods in by_function.items():
        assert methods == endpoint_methods(name), name


@pytest.mark.no_stores
def test_operation_ids_are_unique_and_error_responses_use_the_error_body() -> None:
    ids = [op["operationId"] for item in DOC["paths"].values() for m, op in item.items()
           if m in METHODS and "operationId" in op]
    assert len(ids) == len(set(ids))
    for name, response in DOC["components"]["responses"].items():
        for media in response.get("content", {}).values():
            schema = media["schema"]
            if name not in ("Account", "Relationship", "Post", "PostList"):
                refs = [schema.get("$ref", "")] + [s.get("$ref", "") for s in schema.get("allOf", [])]
                assert any(r.endswith("Error") for r in refs), name


@pytest.mark.no_stores
def test_the_document_rejects_drift(spec: OpenAPI) -> None:
    """Fixed shapes are closed: an extra field, a wrong state or a missing header fails."""
    post = {"id": "1", "content": "x", "author": {"id": "1", "username": "alice", "display_name": ""},
            "created_at": "2026-01-01T00:00:00.000Z", "updated_at": "2026-01-01T00:00:00.000Z",
            "edited_at": None, "likes_count": 0, "comments_count": 0, "liked": False,
            "sentiment": {"status": "pending", "label": None, "score": None, "model": None}}
    request = MockRequest(GATEWAY, "get", "/function/get-post/1")

    def check(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> None:
        spec.validate_response(request, MockResponse(
            json.dumps(body).encode(), status_code=status,
            headers={"X-Call-Id": "c"} if headers is None else headers))

    check(post)
    for bad in ({**post, "password_hash": "x"},
                {**post, "created_at": "2026-01-01 00:00:00"},
                {**post, "sentiment": {"status": "done", "label": None, "score": None, "model": None}},
                {**post, "author": {**post["author"], "email": "a@b.c"}}):
        with pytest.raises(OpenAPIError):
            check(bad)
    with pytest.raises(OpenAPIError):
        check(post, headers={})
    with pytest.raises(OpenAPIError):
        check(post, status=418)


# --- calling functions with validation ---------------------------------------------------

class Checked:
    """``api.call`` plus validation of the request (when valid) and response against the document."""

    def __init__(self, api: Api, spec: OpenAPI) -> None:
        self.api = api
        self.spec = spec

    def call(self, function: str, method: str = "GET", path: str = "/", *, status: int,
             json: Any = None, token: str | None = None, headers: dict[str, str] | None = None,
             query: dict[str, Any] | None = None, data: bytes | None = None,
             valid_request: bool = False) -> TestResponse:
        response = self.api.call(function, method, path, json=json, token=token, headers=headers,
                                 query=query, data=data)
        assert response.status_code == status, response.get_data(as_text=True)
        request = self.gateway_request(function, method, path, json=json, token=token,
                                       headers=headers, query=query, data=data)
        if valid_request:
            self.spec.validate_request(request)
        self.spec.validate_response(request, WerkzeugOpenAPIResponse(response))
        return response

    @staticmethod
    def gateway_request(function: str, method: str, path: str, *, json: Any, token: str | None,
                        headers: dict[str, str] | None, query: dict[str, Any] | None,
                        data: bytes | None) -> WerkzeugOpenAPIRequest:
        """The request as the gateway received it: ``/function/<name>`` + the function's path."""
        hdrs = dict(headers or {})
        if token:
            hdrs["Authorization"] = f"Bearer {token}"
        sub = "" if path == "/" else path
        builder = EnvironBuilder(base_url=GATEWAY, path=f"/function/{function}{sub}", method=method,
                                 headers=hdrs, json=json, data=data, query_string=query)
        try:
            return WerkzeugOpenAPIRequest(Request(builder.get_environ()))
        finally:
            builder.close()


@pytest.fixture
def checked(api: Api, spec: OpenAPI) -> Checked:
    return Checked(api, spec)


def new_post(checked: Checked, account: Account, content: str = "hello world") -> dict[str, Any]:
    response = checked.call("create-post", "POST", json={"content": content}, token=account.token,
                            status=201, valid_request=True)
    return response.json


def run_sentiment_jobs() -> None:
    """Run the queued sentiment and callback jobs in this process (real RQ, burst mode)."""
    SimpleWorker([jobs.SENTIMENT_QUEUE, "callbacks"], connection=cache.client()).work(
        burst=True, logging_level="ERROR")


# --- 405 everywhere it is documented ------------------------------------------------------

def test_documented_405_is_what_the_function_answers(checked: Checked) -> None:
    """Every (path, method) documented as a bare 405 answers 405 with the documented ``Allow``.

    One test for all ~130 cases: the method check runs before any store is touched, so a per-case
    database reset would only cost time.
    """
    cases = not_allowed()
    assert len(cases) > 100
    for path, method in cases:
        name = function_of(path)
        assert name
        sub = concrete(path)[len(f"/function/{name}"):] or "/"
        response = checked.call(name, method.upper(), sub, status=405)
        assert set(response.headers["Allow"].split(", ")) == allowed_methods(path), (path, method)


# --- accounts -----------------------------------------------------------------------------

def test_register_and_login(checked: Checked) -> None:
    body = {"username": "Alice", "password": "correct horse battery staple", "display_name": "Al"}
    created = checked.call("register", "POST", json=body, status=201, valid_request=True)
    assert created.headers["Location"] == "/function/get-user/alice"
    checked.call("register", "POST", json={**body, "username": "ALICE"}, status=409)
    checked.call("register", "POST", json={"username": "a", "password": "short", "x": 1}, status=422)
    checked.call("register", "POST", data=b"{not json", headers={"Content-Type": "application/json"},
                 status=400)
    checked.call("register", "POST", data=b"[1]", headers={"Content-Type": "application/json"},
                 status=400)
    big = {"username": "bob", "password": "p" * 100_000}
    checked.call("register", "POST", json=big, status=413)
    login = checked.call("login", "POST", json={"username": "alice", "password": body["password"]},
                         status=200, valid_request=True)
    assert login.json["token_type"] == "Bearer"
    checked.call("login", "POST", json={"username": "alice", "password": "wrong password"}, status=401)
    checked.call("login", "POST", json={"username": "alice"}, status=422)


def test_get_user_in_every_form(checked: Checked, api: Api) -> None:
    alice, bob = api.account("alice"), api.account("bob")
    me = checked.call("get-user", "GET", "/me", token=alice.token, status=200, valid_request=True)
    assert me.json["username"] == "alice"
    checked.call("get-user", "GET", "/me", status=401)
    checked.call("get-user", "GET", "/bob", status=200, valid_request=True)
    seen = checked.call("get-user", "GET", "/BOB", token=alice.token, status=200, valid_request=True)
    assert seen.json["following"] is False
    checked.call("get-user", "GET", f"/id/{bob.id}", status=200, valid_request=True)
    checked.call("get-user", "GET", "/nobody", status=404)
    checked.call("get-user", "GET", "/id/999999", status=404)
    checked.call("get-user", "GET", "/bob", token="not-a-jwt", status=401)


def test_update_user(checked: Checked, api: Api) -> None:
    alice = api.account("alice")
    checked.call("update-user", "PATCH", "/me", json={"bio": "hi", "display_name": "Alice"},
                 token=alice.token, status=200, valid_request=True)
    checked.call("update-user", "PATCH", "/me", json={"password": "new password 123"},
                 token=alice.token, status=422)
    checked.call("update-user", "PATCH", "/me", json={}, token=alice.token, status=422)
    checked.call("update-user", "PATCH", "/alice", json={"bio": "x"}, token=alice.token, status=404)
    checked.call("update-user", "PATCH", "/me", json={"bio": "x"}, status=401)
    checked.call("update-user", "PATCH", "/me", json={"password": "new password 123",
                                                      "current_password": alice.password},
                 token=alice.token, status=200, valid_request=True)


def test_follow_and_unfollow(checked: Checked, api: Api) -> None:
    alice, _bob = api.account("alice"), api.account("bob")
    for _ in range(2):  # idempotent
        rel = checked.call("follow-user", "POST", "/bob", token=alice.token, status=200,
                           valid_request=True)
        assert rel.json["following"] is True
    rel = checked.call("follow-user", "DELETE", "/bob", token=alice.token, status=200,
                       valid_request=True)
    assert rel.json["following"] is False
    checked.call("follow-user", "POST", "/alice", token=alice.token, status=422)
    checked.call("follow-user", "POST", "/nobody", token=alice.token, status=404)
    checked.call("follow-user", "POST", "/bob", status=401)


# --- posts --------------------------------------------------------------------------------

def test_create_post_with_idempotency(checked: Checked, api: Api) -> None:
    alice = api.account("alice")
    key = {"Idempotency-Key": "k-1"}
    first = checked.call("create-post", "POST", json={"content": "  hi there  "}, headers=key,
                         token=alice.token, status=201, valid_request=True)
    assert first.json["sentiment"] == {"status": "pending", "label": None, "score": None, "model": None}
    replay = checked.call("create-post", "POST", json={"content": "hi there"}, headers=key,
                          token=alice.token, status=200, valid_request=True)
    assert replay.json["id"] == first.json["id"]
    checked.call("create-post", "POST", json={"content": "x"}, headers={"Idempotency-Key": "é"},
                 token=alice.token, status=400)
    checked.call("create-post", "POST", json={"content": "x" * 281}, token=alice.token, status=422)
    checked.call("create-post", "POST", json={"content": "   "}, token=alice.token, status=422)
    checked.call("create-post", "POST", json={"content": "x"}, status=401)
    checked.call("delete-post", "DELETE", f"/{first.json['id']}", token=alice.token, status=204)
    checked.call("create-post", "POST", json={"content": "hi there"}, headers=key,
                 token=alice.token, status=409)


def test_get_update_like_delete_post(checked: Checked, api: Api) -> None:
    alice, bob = api.account("alice"), api.account("bob")
    post = new_post(checked, alice)
    pid = post["id"]
    checked.call("get-post", "GET", f"/{pid}", status=200, valid_request=True)
    checked.call("get-post", "GET", f"/{pid}", token=bob.token, status=200, valid_request=True)
    checked.call("get-post", "GET", "/999999", status=404)
    checked.call("get-post", "GET", "/abc", status=404)
    edited = checked.call("update-post", "PATCH", f"/{pid}", json={"content": "edited"},
                          token=alice.token, status=200, valid_request=True)
    assert edited.json["edited_at"] is not None
    checked.call("update-post", "PUT", f"/{pid}", json={"content": "again"}, token=alice.token,
                 status=200, valid_request=True)
    checked.call("update-post", "PATCH", f"/{pid}", json={"content": "mine"}, token=bob.token,
                 status=404)
    checked.call("update-post", "PATCH", f"/{pid}", json={"content": ""}, token=alice.token,
                 status=422)
    checked.call("update-post", "PATCH", f"/{pid}", data=b"{", token=alice.token, status=400)
    for method, liked in (("POST", True), ("POST", True), ("DELETE", False), ("DELETE", False)):
        response = checked.call("like-post", method, f"/{pid}", token=bob.token, status=200,
                                valid_request=True)
        assert response.json["liked"] is liked
    checked.call("like-post", "POST", "/999999", token=bob.token, status=404)
    checked.call("like-post", "POST", f"/{pid}", status=401)
    checked.call("delete-post", "DELETE", f"/{pid}", token=bob.token, status=404)
    checked.call("delete-post", "DELETE", f"/{pid}", status=401)
    checked.call("delete-post", "DELETE", f"/{pid}", token=alice.token, status=204,
                 valid_request=True)
    checked.call("get-post", "GET", f"/{pid}", status=404)


def test_timelines_with_pagination_and_filters(checked: Checked, api: Api) -> None:
    alice, bob = api.account("alice"), api.account("bob")
    for n in range(3):
        new_post(checked, alice, f"happy post number {n}")
    new_post(checked, bob, "bob was here")
    first = checked.call("list-posts", "GET", query={"limit": "2"}, status=200, valid_request=True)
    assert 'rel="next"' in first.headers["Link"] and 'rel="prev"' in first.headers["Link"]
    older = checked.call("list-posts", "GET", query={"limit": "2", "max_id": first.json[-1]["id"]},
                         token=bob.token, status=200, valid_request=True)
    assert len(older.json) == 2
    checked.call("list-posts", "GET", query={"author": "alice", "q": "happy"}, status=200,
                 valid_request=True)
    empty = checked.call("list-posts", "GET", query={"sentiment": "negative", "since_id": "1",
                                                     "min_id": "1"}, status=200, valid_request=True)
    assert empty.json == [] and "Link" not in empty.headers
    checked.call("list-posts", "GET", query={"limit": "zero"}, status=400)
    checked.call("list-posts", "GET", query={"sentiment": "angry"}, status=400)
    checked.call("list-posts", "GET", token="bad", status=401)
    checked.call("follow-user", "POST", "/alice", token=bob.token, status=200)
    home = checked.call("home-timeline", "GET", query={"limit": "3"}, token=bob.token, status=200,
                        valid_request=True)
    assert len(home.json) == 3
    checked.call("home-timeline", "GET", query={"max_id": "-1"}, token=bob.token, status=400)
    checked.call("home-timeline", "GET", status=401)


def test_comments(checked: Checked, api: Api) -> None:
    alice, bob = api.account("alice"), api.account("bob")
    pid = new_post(checked, alice)["id"]
    key = {"Idempotency-Key": "c-1"}
    comment = checked.call("add-comment", "POST", f"/{pid}", json={"content": "nice"}, headers=key,
                           token=bob.token, status=201, valid_request=True).json
    replay = checked.call("add-comment", "POST", f"/{pid}", json={"content": "nice"}, headers=key,
                          token=bob.token, status=200, valid_request=True)
    assert replay.json["id"] == comment["id"]
    for n in range(2):
        checked.call("add-comment", "POST", f"/{pid}", json={"content": f"more {n}"},
                     token=alice.token, status=201)
    page = checked.call("list-comments", "GET", f"/{pid}", query={"limit": "2"}, status=200,
                        valid_request=True)
    assert page.json[0]["id"] == comment["id"] and 'rel="next"' in page.headers["Link"]
    checked.call("list-comments", "GET", "/999999", status=404)
    checked.call("list-comments", "GET", f"/{pid}", query={"min_id": "x"}, status=400)
    checked.call("add-comment", "POST", "/999999", json={"content": "x"}, token=bob.token, status=404)
    checked.call("add-comment", "POST", f"/{pid}", json={"content": "x" * 281}, token=bob.token,
                 status=422)
    checked.call("add-comment", "POST", f"/{pid}", json={"content": "x"}, status=401)
    checked.call("add-comment", "DELETE", f"/{pid}", token=bob.token, status=404)
    checked.call("add-comment", "POST", f"/{pid}/{comment['id']}", json={"content": "x"},
                 token=bob.token, status=404)
    checked.call("add-comment", "DELETE", f"/{pid}/{comment['id']}", token=alice.token, status=404)
    checked.call("add-comment", "DELETE", f"/{pid}/{comment['id']}", token=bob.token, status=204,
                 valid_request=True)
    # its Idempotency-Key now names a comment that is gone
    checked.call("add-comment", "POST", f"/{pid}", json={"content": "nice"}, headers=key,
                 token=bob.token, status=409)
    checked.call("add-comment", "POST", f"/{pid}", json={"content": "nice"},
                 headers={"Idempotency-Key": "x" * 256}, token=bob.token, status=400)


# --- error paths every function shares --------------------------------------------------------

def test_every_function_answers_503_while_postgresql_is_down(checked: Checked, api: Api,
                                                             config: Config) -> None:
    """PostgreSQL unreachable (and nothing cached in Redis): every API function answers the
    documented 503 with ``Retry-After`` and the error body, never a driver message."""
    from gateway.embedded import free_port
    from minitwitter import db

    alice, bob = api.account("alice"), api.account("bob")
    pid = new_post(checked, alice)["id"]
    cache.client().flushdb()  # nothing may be answered from the cache
    set_config(config.with_overrides(
        database_url=f"postgresql://postgres@127.0.0.1:{free_port()}/nowhere", db_connect_timeout=1.0))
    db.close_connection()
    calls: list[tuple[str, str, str, dict[str, Any]]] = [
        ("register", "POST", "/", {"json": {"username": "carol", "password": PASSWORD}}),
        ("login", "POST", "/", {"json": {"username": "alice", "password": PASSWORD}}),
        ("get-user", "GET", "/alice", {}),
        ("update-user", "PATCH", "/me", {"json": {"display_name": "Alice"}, "token": alice.token}),
        ("follow-user", "POST", "/alice", {"token": bob.token}),
        ("create-post", "POST", "/", {"json": {"content": "hello"}, "token": alice.token}),
        ("get-post", "GET", f"/{pid}", {}),
        ("update-post", "PATCH", f"/{pid}", {"json": {"content": "edited"}, "token": alice.token}),
        ("delete-post", "DELETE", f"/{pid}", {"token": alice.token}),
        ("list-posts", "GET", "/", {}),
        ("home-timeline", "GET", "/", {"token": bob.token}),
        ("like-post", "POST", f"/{pid}", {"token": bob.token}),
        ("add-comment", "POST", f"/{pid}", {"json": {"content": "nice"}, "token": bob.token}),
        ("list-comments", "GET", f"/{pid}", {}),
    ]
    for function, method, path, kwargs in calls:
        response = checked.call(function, method, path, status=503, **kwargs)
        assert int(response.headers["Retry-After"]) > 0, function
        assert set(response.json) == {"error", "details"}, function


@pytest.mark.parametrize(("function", "method", "path"), [
    ("register", "POST", "/"), ("login", "POST", "/"), ("update-user", "PATCH", "/me"),
    ("create-post", "POST", "/"), ("update-post", "PATCH", "/{post}"), ("update-post", "PUT", "/{post}"),
    ("add-comment", "POST", "/{post}"), ("analyze-sentiment", "POST", "/"),
])
def test_every_body_is_checked_before_use(checked: Checked, api: Api, config: Config,
                                          function: str, method: str, path: str) -> None:
    """Each function that reads a JSON body answers 400 for one that does not parse or is not
    an object, and 413 for one over ``MAX_BODY_BYTES``, as documented."""
    alice = api.account("alice")
    path = path.format(post=new_post(checked, alice)["id"])
    json_type = {"Content-Type": "application/json"}
    for body in (b"{not json", b"[1, 2]", b'"text"'):
        response = checked.call(function, method, path, data=body, headers=json_type,
                                token=alice.token, status=400)
        assert response.json["error"], body
    checked.call(function, method, path, data=b" " * (config.max_body_bytes + 1), headers=json_type,
                 token=alice.token, status=413)


def test_paths_a_function_does_not_have_are_404(checked: Checked, api: Api) -> None:
    """Paths the document does not list answer the error body's 404, not the function's work."""
    alice = api.account("alice")
    for function, method, path, token in (("create-post", "POST", "/extra", alice.token),
                                          ("list-posts", "GET", "/extra", None),
                                          ("home-timeline", "GET", "/extra", alice.token),
                                          ("get-user", "GET", "/alice/extra", None)):
        response = api.call(function, method, path, json={"content": "x"} if method == "POST" else None,
                            token=token)
        assert response.status_code == 404, function
        assert set(response.json) == {"error", "details"}
    assert api.call("list-posts").json == []  # nothing was created
    pid = new_post(checked, alice)["id"]
    checked.call("list-comments", "GET", f"/{pid}", token="not-a-token", status=401)


# --- sentiment ----------------------------------------------------------------------------

def test_analyze_sentiment(checked: Checked, config: Config) -> None:
    one = checked.call("analyze-sentiment", "POST", json={"text": "I love this"}, status=200,
                       valid_request=True)
    assert one.json["label"] == "positive"
    many = checked.call("analyze-sentiment", "POST", json={"texts": ["great", "awful", "a table"]},
                        status=200, valid_request=True)
    assert [r["label"] for r in many.json] == ["positive", "negative", "neutral"]
    checked.call("analyze-sentiment", "POST", json={"text": "a", "texts": ["b"]}, status=422)
    checked.call("analyze-sentiment", "POST", json={"texts": []}, status=422)
    checked.call("analyze-sentiment", "POST", data=b"nope", status=400)
    checked.call("analyze-sentiment", "POST", json={"text": "x" * 70_000}, status=413)
    set_config(config.with_overrides(sentiment_backend="ollama", ollama_host="http://127.0.0.1:9",
                       ollama_timeout=2.0))
    down = checked.call("analyze-sentiment", "POST", json={"text": "hello"}, status=503)
    assert int(down.headers["Retry-After"]) >= 1


def test_verdict_and_signed_callback_match_the_document(checked: Checked, api: Api,
                                                        config: Config) -> None:
    alice = api.account("alice")
    with Receiver() as receiver:
        url = receiver.url + "/hook"
        post = checked.call("create-post", "POST", json={"content": "What a wonderful day"},
                            headers={"X-Callback-Url": url}, token=alice.token, status=201,
                            valid_request=True).json
        checked.call("add-comment", "POST", f"/{post['id']}",
                     json={"content": "terrible take", "callback_url": url}, token=alice.token,
                     status=201, valid_request=True)
        run_sentiment_jobs()
        eventually(lambda: len(receiver.received) == 2, timeout=10)
    done = checked.call("get-post", "GET", f"/{post['id']}", status=200).json
    assert done["sentiment"]["status"] == "done"
    comments = checked.call("list-comments", "GET", f"/{post['id']}", status=200).json
    assert comments[0]["sentiment"]["status"] == "done"
    pointer = "/components/callbacks/SentimentVerdict/{$request.header.X-Callback-Url}"
    for delivery in receiver.received:
        body = delivery["body"]
        check_callback(pointer, delivery["headers"], json.loads(body))
        headers = {k.lower(): v for k, v in delivery["headers"].items()}
        expected = hmac.new(config.callback_signing_key.encode(),
                            headers["x-minitwitter-timestamp"].encode() + b"." + body,
                            hashlib.sha256).hexdigest()
        assert headers["x-minitwitter-signature"] == "sha256=" + expected


# --- rate limits --------------------------------------------------------------------------

def test_rate_limit_headers_and_429(checked: Checked, api: Api, config: Config) -> None:
    alice = api.account("alice")
    set_config(config.with_overrides(rate_limit_enabled=True, rate_limit_login=2, rate_limit_account=3))
    creds = {"username": "alice", "password": alice.password}
    ok = checked.call("login", "POST", json=creds, status=200)
    assert ok.headers["X-RateLimit-Limit"] == "2" and ok.headers["X-RateLimit-Remaining"] == "1"
    checked.call("login", "POST", json=creds, status=200)
    limited = checked.call("login", "POST", json=creds, status=429)
    assert int(limited.headers["Retry-After"]) >= 1
    for _ in range(3):
        checked.call("get-user", "GET", "/me", token=alice.token, status=200)
    checked.call("get-user", "GET", "/me", token=alice.token, status=429)
    checked.call("create-post", "POST", json={"content": "x"}, token=alice.token, status=429)


# --- through the real gateway --------------------------------------------------------------

def validate_http(spec: OpenAPI, method: str, path: str, response: httpx.Response,
                  body: bytes = b"", headers: dict[str, str] | None = None) -> None:
    request = MockRequest(GATEWAY, method, path, headers=headers or {}, data=body)
    spec.validate_response(request, MockResponse(
        response.content, status_code=response.status_code, headers=dict(response.headers),
        content_type=response.headers.get("Content-Type", "").split(";")[0]))


@pytest.mark.slow
def test_gateway_paths_and_async_callback(spec: OpenAPI, start_gateway: Any, start_workers: Any) -> None:
    gateway = start_gateway()
    start_workers(GATEWAY_URL=gateway.url)
    with httpx.Client(base_url=gateway.url, timeout=30, trust_env=False) as client:
        health = client.get("/healthz")
        assert health.status_code == 200
        validate_http(spec, "get", "/healthz", health)
        listing = client.get("/function/list-posts", params={"limit": "5"})
        assert listing.status_code == 200
        validate_http(spec, "get", "/function/list-posts", listing)
        via_namespace = client.post("/function/analyze-sentiment.openfaas-fn", json={"text": "ok"})
        assert via_namespace.status_code == 200
        validate_http(spec, "post", "/function/analyze-sentiment", via_namespace)
        wrong = client.get("/async-function/analyze-sentiment")
        assert wrong.status_code == 405
        validate_http(spec, "get", "/async-function/analyze-sentiment", wrong)
        bad = client.post("/async-function/analyze-sentiment", content=b"{}",
                          headers={"X-Callback-Url": "not a url"})
        assert bad.status_code == 400
        validate_http(spec, "post", "/async-function/analyze-sentiment", bad)
        with Receiver() as receiver:
            body = b'{"texts": ["I am so happy", "this is bad"]}'
            queued = client.post("/async-function/analyze-sentiment", content=body, headers={
                "Content-Type": "application/json", "X-Callback-Url": receiver.url + "/done"})
            assert queued.status_code == 202
            validate_http(spec, "post", "/async-function/analyze-sentiment", queued, body)
            eventually(lambda: receiver.received, timeout=30)
        delivery = receiver.received[0]
        pointer = ("/paths/~1async-function~1analyze-sentiment/post/callbacks/asyncResult/"
                   "{$request.header.X-Callback-Url}")
        check_callback(pointer, delivery["headers"], json.loads(delivery["body"]))
        assert delivery["headers"]["X-Call-Id"] == queued.headers["X-Call-Id"]
