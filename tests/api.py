"""Calling functions in tests the way the runtime does: functions-framework apps, in-process.

``Api.call("create-post", "POST", json={...}, token=...)`` loads ``functions/<name>/handler.py``
through the gateway's loader (functions-framework ``create_app`` + the crash guard, what the
OpenFaaS template serves) and sends a request with Werkzeug's test client; the path is what the
function sees after the gateway strips ``/function/<name>``. ``Api(direct=True)`` calls the same
handlers as the local gateway does, through :class:`minitwitter.runtime.DirectEndpoint`.
``Api.account("alice")`` registers and logs in through the real functions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from werkzeug.test import Client, TestResponse

from gateway.registry import load_function
from minitwitter.config import REPO_ROOT

PASSWORD = "correct horse battery staple"
_apps: dict[str, tuple[Any, Any]] = {}


def function_apps(name: str) -> tuple[Any, Any]:
    """The two WSGI apps of ``functions/<name>``: functions-framework's and the direct one
    (loaded once per test session)."""
    if name not in _apps:
        _apps[name] = load_function(name, REPO_ROOT / "functions" / name)
    return _apps[name]


@dataclass
class Account:
    id: str
    username: str
    token: str
    password: str = PASSWORD


class Api:
    """A client for the functions, with helpers for accounts."""

    def __init__(self, *, direct: bool = False) -> None:
        self.direct = direct

    def call(self, function: str, method: str = "GET", path: str = "/", *, json: Any = None,
             token: str | None = None, headers: dict[str, str] | None = None,
             data: bytes | str | None = None, query: dict[str, Any] | str | None = None,
             remote_addr: str = "127.0.0.1", raw_path: bool = False) -> TestResponse:
        """``raw_path``: ``path`` is the PATH_INFO as the gateway passes it ("//x" included),
        not a URL for the test client to parse."""
        hdrs = dict(headers or {})
        if token:
            hdrs["Authorization"] = f"Bearer {token}"
        flask_app, direct_app = function_apps(function)
        client = Client(direct_app if self.direct else flask_app)
        return client.open(path, method=method, json=json, data=data, headers=hdrs,
                           query_string=query, environ_base={"REMOTE_ADDR": remote_addr},
                           environ_overrides={"PATH_INFO": path} if raw_path else None)

    def register(self, username: str, password: str = PASSWORD, **extra: Any) -> TestResponse:
        return self.call("register", "POST", json={"username": username, "password": password, **extra})

    def login(self, username: str, password: str = PASSWORD) -> TestResponse:
        return self.call("login", "POST", json={"username": username, "password": password})

    def account(self, username: str, password: str = PASSWORD) -> Account:
        """Register ``username`` and log in; fails the test if either call fails."""
        created = self.register(username, password)
        assert created.status_code == 201, created.get_data(as_text=True)
        login = self.login(username, password)
        assert login.status_code == 200, login.get_data(as_text=True)
        return Account(id=created.json["id"], username=username,
                       token=login.json["access_token"], password=password)
