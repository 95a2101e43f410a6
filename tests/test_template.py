"""The python3-ff template: build contexts as faas-cli writes them, served over real HTTP.

``faas-cli build --shrinkwrap`` (tests/faas_cli.py) writes each function's build context under
``tmp_path``; the context's own ``index.py`` then runs with this venv's Python, exactly as the
watchdog's ``fprocess`` would start it in the container (cwd = the context, no PYTHONPATH: the
shared library must come from ``function/shared``). Requests go over real HTTP; SIGTERM during
a slow request must let it finish and exit 0. The Dockerfile is parsed and checked against the
watchdog contract (contract doc §5).
"""

from __future__ import annotations

import json
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from gateway import embedded
from minitwitter import db
from minitwitter.config import REPO_ROOT

from .conftest import base_env, wait_http
from .faas_cli import StackError, load_stack, shrinkwrap

TEMPLATE = REPO_ROOT / "templates" / "python3-ff"
FIXTURES = REPO_ROOT / "tests" / "fixtures"
WATCHDOG_IMAGE = "ghcr.io/openfaas/of-watchdog"
WATCHDOG_VERSION = "0.11.6"
READY_PATH = "/_/ready"
BASE_IMAGE = "python:3.11.13-slim-bookworm"


def make_project(root: Path, stack_text: str, functions: Path) -> Path:
    """A project folder as faas-cli sees it: stack.yml, template/, shared/, functions/."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "stack.yml").write_text(stack_text, encoding="utf-8")
    (root / "template").symlink_to(REPO_ROOT / "templates")
    (root / "shared").symlink_to(REPO_ROOT / "shared")
    (root / "functions").symlink_to(functions)
    return root


@pytest.fixture(scope="module")
def contexts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Build contexts of the fixture stack's functions (echo, sleepy, crash, helper-a/b)."""
    tmp = tmp_path_factory.mktemp("shrinkwrap")
    project = make_project(tmp / "project", (FIXTURES / "stack.yml").read_text(encoding="utf-8"),
                           FIXTURES / "functions")
    return shrinkwrap(project / "stack.yml", tmp / "build")


# --- build contexts -----------------------------------------------------------------------------

@pytest.mark.no_stores
def test_context_layout_of_every_real_function(tmp_path: Path) -> None:
    """faas-cli build --shrinkwrap -f stack.yml from the repo root: one complete context each."""
    stack = load_stack(REPO_ROOT / "stack.yml", {})
    present = [n for n, s in stack["functions"].items() if (REPO_ROOT / s["handler"]).is_dir()]
    if not present:
        pytest.skip("no handler folder written yet")
    repo_build_before = (REPO_ROOT / "build").exists()
    built = shrinkwrap(REPO_ROOT / "stack.yml", tmp_path / "build", project_dir=REPO_ROOT, only=present)
    assert (REPO_ROOT / "build").exists() == repo_build_before  # output went to tmp_path only
    for name in present:
        ctx = built[name]
        assert ctx == tmp_path / "build" / name
        for rel in ("Dockerfile", "index.py", "template.yml", "function/handler.py",
                    "function/requirements.txt", "function/shared/requirements.txt",
                    "function/shared/minitwitter/config.py", "function/shared/minitwitter/runtime.py"):
            assert (ctx / rel).is_file(), f"{name}: {rel}"
        source = REPO_ROOT / "functions" / name / "handler.py"
        assert (ctx / "function" / "handler.py").read_bytes() == source.read_bytes()
        assert (ctx / "Dockerfile").read_bytes() == (TEMPLATE / "Dockerfile").read_bytes()
        assert (ctx / "index.py").read_bytes() == (TEMPLATE / "index.py").read_bytes()
        assert (ctx / "function" / "shared" / "requirements.txt").read_bytes() == \
            (REPO_ROOT / "shared" / "requirements.txt").read_bytes()


@pytest.mark.no_stores
def test_handler_overlays_template_function_folder(contexts: dict[str, Path]) -> None:
    ctx = contexts["helper-a"]
    # The handler replaced the template's example; the template's requirements.txt stays.
    assert (ctx / "function" / "handler.py").read_text() == \
        (FIXTURES / "functions" / "helper-a" / "handler.py").read_text()
    assert (ctx / "function" / "helpers.py").is_file()
    assert (ctx / "function" / "requirements.txt").read_text() == \
        (TEMPLATE / "function" / "requirements.txt").read_text()
    assert set(contexts) == {"echo", "sleepy", "helper-a", "helper-b", "crash"}


@pytest.mark.no_stores
def test_handler_build_and_template_entries_are_skipped(tmp_path: Path) -> None:
    functions = tmp_path / "fns"
    (functions / "fn" / "build").mkdir(parents=True)
    (functions / "fn" / "template").mkdir()
    (functions / "fn" / "handler.py").write_text("def handle(request):\n    return 'ok'\n")
    stack = (FIXTURES / "stack.yml").read_text().split("functions:\n  echo:")[0] + (
        "functions:\n  fn:\n    lang: python3-ff\n    handler: ./functions/fn\n    image: fn:latest\n")
    project = make_project(tmp_path / "p", stack, functions)
    ctx = shrinkwrap(project / "stack.yml", tmp_path / "out")["fn"]
    assert sorted(p.name for p in (ctx / "function").iterdir()) == ["handler.py", "requirements.txt", "shared"]


@pytest.mark.no_stores
@pytest.mark.parametrize(("copy_path", "message"), [
    ("../outside", "outside of the build context"),  # outside-on-purpose
    (".", "equal the entire project"),
    ("./", "equal the entire project"),
])
def test_copy_paths_must_stay_inside_the_project(tmp_path: Path, copy_path: str, message: str) -> None:
    stack = (FIXTURES / "stack.yml").read_text().replace("- ./shared", f"- {copy_path}")
    project = make_project(tmp_path / "p", stack, FIXTURES / "functions")
    with pytest.raises(StackError, match=re.escape(message)):
        shrinkwrap(project / "stack.yml", tmp_path / "out", only=["echo"])


@pytest.mark.no_stores
def test_unknown_language_and_missing_handler_fail_the_build(tmp_path: Path) -> None:
    base = (FIXTURES / "stack.yml").read_text()
    project = make_project(tmp_path / "a", base.replace("lang: python3-ff", "lang: python3-http", 1),
                           FIXTURES / "functions")
    with pytest.raises(StackError, match="language template: python3-http not supported"):
        shrinkwrap(project / "stack.yml", tmp_path / "out", only=["echo"])
    project = make_project(tmp_path / "b", base.replace("./functions/echo", "./functions/nope"),
                           FIXTURES / "functions")
    with pytest.raises(StackError, match="invalid path"):
        shrinkwrap(project / "stack.yml", tmp_path / "out", only=["echo"])


# --- index.py over real HTTP ------------------------------------------------------------------

class FunctionProcess:
    """``python index.py`` in a build context, as the watchdog's fprocess."""

    def __init__(self, context: Path, env: dict[str, str], log_path: Path) -> None:
        self.port = embedded.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        env = {k: v for k, v in env.items() if k != "PYTHONPATH"}
        env.update({"WSGI_BIND": f"127.0.0.1:{self.port}", "WSGI_WORKERS": "1", "WSGI_THREADS": "4",
                    "WSGI_GRACEFUL_TIMEOUT": "20", "LOG_TO_DB": "false"})
        with open(log_path, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "index.py"], cwd=context, env=env,
                                         stdout=log, stderr=log)
        try:
            # ?seconds=0: the sleepy fixture would otherwise take as long as the probe's timeout
            wait_http(self.url + "/?seconds=0", proc=self.proc)
        except RuntimeError:
            self.stop()
            raise RuntimeError(f"function did not start: {self.log()}") from None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def serve(contexts: dict[str, Path], stores: dict[str, str], tmp_path: Path) -> Iterator[Any]:
    started: list[FunctionProcess] = []

    def start(name: str, **extra: str) -> FunctionProcess:
        env = base_env(stores, PROMETHEUS_MULTIPROC_DIR=str(tmp_path / f"prom-{name}"), **extra)
        fn = FunctionProcess(contexts[name], env, tmp_path / f"{name}.log")
        started.append(fn)
        return fn

    yield start
    for fn in started:
        fn.stop()


@pytest.mark.slow
def test_request_passes_through_to_the_handler(serve: Any) -> None:
    fn = serve("echo")
    r = httpx.post(fn.url + "/some/sub/path?a=1&a=2&b=x%20y", content=b"hello body",
                   headers={"X-Call-Id": "call-123", "Content-Type": "text/plain"})
    assert r.status_code == 200
    assert r.headers["X-Echo"] == "yes"
    assert r.headers["Content-Type"] == "application/json"
    body = r.json()
    assert body["method"] == "POST"
    assert body["path"] == "/some/sub/path"
    assert body["args"] == {"a": ["1", "2"], "b": ["x y"]}
    assert body["query"] == "a=1&a=2&b=x%20y"
    assert body["body"] == "hello body"
    assert body["call_id"] == "call-123"
    assert body["gc_frozen"] > 10_000  # the loaded app is kept out of full collections
    # Settings come from the same environment the watchdog passes on.
    assert body["max_body_bytes"] == 64 * 1024

    for method in ("GET", "PUT", "PATCH", "DELETE"):
        r = httpx.request(method, fn.url + "/", params={"status": "201"})
        assert r.status_code == 201, method
        assert r.json()["method"] == method
        assert r.json()["path"] == "/"


@pytest.mark.slow
def test_helpers_next_to_the_handler_are_importable(serve: Any) -> None:
    fn = serve("helper-b")
    assert httpx.get(fn.url + "/").json() == {"who": "helper-b"}


@pytest.mark.slow
def test_crash_gives_json_500_without_traceback(serve: Any) -> None:
    fn = serve("crash")
    r = httpx.get(fn.url + "/anything")
    assert r.status_code == 500
    assert r.headers["Content-Type"] == "application/json"
    assert r.json() == {"error": "internal error", "details": {}}
    assert "secret internal detail" not in r.text
    assert "Traceback" not in r.text
    assert "X-Google-Status" not in r.headers
    # The process keeps serving after a crash.
    assert httpx.get(fn.url + "/").status_code == 500
    assert fn.proc.poll() is None


@pytest.mark.slow
def test_sigterm_drains_the_in_flight_request_and_exits_0(serve: Any) -> None:
    fn = serve("sleepy")
    result: dict[str, Any] = {}

    def call() -> None:
        try:
            result["response"] = httpx.get(fn.url + "/", params={"seconds": "1.5"}, timeout=15)
        except httpx.HTTPError as exc:  # recorded, asserted below
            result["error"] = exc

    caller = threading.Thread(target=call)
    caller.start()
    # Wait until the request is being handled: gunicorn's worker holds the connection.
    wait_in_flight(fn.port)
    fn.proc.send_signal(signal.SIGTERM)
    caller.join(20)
    assert "error" not in result, result.get("error")
    response = result["response"]
    assert response.status_code == 200
    assert response.json() == {"slept": 1.5}
    assert fn.proc.wait(20) == 0, fn.log()
    # Drained and gone: nothing listens any more.
    with pytest.raises(httpx.ConnectError):
        httpx.get(fn.url + "/", timeout=2)


@pytest.mark.slow
def test_a_real_function_runs_from_its_build_context(stores: dict[str, str], tmp_path: Path) -> None:
    """register, shrink-wrapped from the real stack: the copied shared/ is all it needs."""
    ctx = shrinkwrap(REPO_ROOT / "stack.yml", tmp_path / "build", project_dir=REPO_ROOT,
                     only=["register"])["register"]
    fn = FunctionProcess(ctx, base_env(stores), tmp_path / "register.log")
    try:
        r = httpx.post(fn.url + "/", json={"username": "template_user", "password": "correct horse 1"})
        assert r.status_code == 201, r.text
        assert r.json()["username"] == "template_user"
        assert db.scalar("SELECT count(*) FROM users WHERE username = :u", u="template_user") == 1
        r = httpx.get(fn.url + "/")
        assert r.status_code == 405
        assert r.headers["Allow"] == "POST"
    finally:
        fn.stop()


@pytest.mark.slow
def test_slow_clients_do_not_hold_the_function(serve: Any) -> None:
    """200 slow-body and 200 slow-header connections open: normal requests stay prompt, and
    past WSGI_READ_TIMEOUT every slow client gets 408 or is closed (issue 19, item 1)."""
    fn = serve("echo", WSGI_THREADS="4", WSGI_READ_TIMEOUT="3")
    host, port = "127.0.0.1", fn.port
    slow: list[socket.socket] = []
    try:
        for i in range(400):
            sock = socket.create_connection((host, port), timeout=5)
            if i % 2:
                sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n"
                             b"Content-Length: 1000\r\n\r\n0123456789")
            else:
                sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            slow.append(sock)
        opened = time.monotonic()
        with httpx.Client(timeout=5) as client:
            for i in range(20):
                started = time.monotonic()
                r = client.post(fn.url + f"/normal/{i}", content=b"quick body",
                                headers={"Content-Type": "text/plain", "Connection": "close"})
                assert r.status_code == 200 and r.json()["body"] == "quick body"
                assert time.monotonic() - started < 1.0, "a normal request waited on slow clients"
        assert time.monotonic() - opened < 3, "the normal requests must run while the slow ones are open"
        # Past the read deadline: 408 (or a closed connection) for every slow client.
        time.sleep(max(0.0, opened + 3 + 2.5 - time.monotonic()))
        outcomes: dict[str, int] = {}
        for sock in slow:
            sock.settimeout(2)
            try:
                data = sock.recv(4096)
            except (ConnectionResetError, TimeoutError) as exc:
                data = type(exc).__name__.encode()
            kind = ("408" if data.startswith(b"HTTP/1.1 408") else
                    "closed" if data in (b"", b"ConnectionResetError") else data[:40].decode("latin-1"))
            outcomes[kind] = outcomes.get(kind, 0) + 1
        assert set(outcomes) <= {"408", "closed"}, outcomes
        assert outcomes.get("408", 0) >= 390, outcomes
        # ... and the function still answers.
        assert httpx.get(fn.url + "/after").status_code == 200
    finally:
        for sock in slow:
            sock.close()


@pytest.mark.slow
def test_a_request_sent_while_the_function_starts_waits_instead_of_failing(
        contexts: dict[str, Path], stores: dict[str, str], tmp_path: Path) -> None:
    """The socket listens before the function loads: from the first connection on, every
    request is answered 200, none refused or 5xx; /_/ready is the watchdog's ready_path (item 7)."""
    port = embedded.free_port()
    env = {k: v for k, v in base_env(stores, PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "prom")).items()
           if k != "PYTHONPATH"}
    env.update({"WSGI_BIND": f"127.0.0.1:{port}", "WSGI_THREADS": "4", "LOG_TO_DB": "false",
                "suppress_lock": "true", "TMPDIR": str(tmp_path)})
    lock = tmp_path / ".lock"  # what the watchdog's /_/health checks
    lock_before_first_answer = None
    statuses: list[int] = []
    refused_after_first = 0
    with open(tmp_path / "start.log", "wb") as log:
        started = time.monotonic()
        proc = subprocess.Popen([sys.executable, "index.py"], cwd=contexts["echo"], env=env,
                                stdout=log, stderr=log)
    try:
        # Listening long before the function has loaded, and not "healthy" until it has.
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() - started < 10, "never listened"
                time.sleep(0.005)
        listened_after = time.monotonic() - started
        assert not lock.exists(), "the lock file (/_/health) must wait for the function to load"
        listening_at = first_answer_at = None
        with httpx.Client(timeout=30) as client:
            while time.monotonic() - started < 4:
                try:
                    r = client.get(f"http://127.0.0.1:{port}/probe", headers={"Connection": "close"})
                except httpx.ConnectError:
                    if listening_at is not None:
                        refused_after_first += 1
                    time.sleep(0.005)
                    continue
                if first_answer_at is None:
                    first_answer_at = time.monotonic()
                    lock_before_first_answer = lock.exists()
                listening_at = listening_at or first_answer_at
                statuses.append(r.status_code)
        assert statuses and set(statuses) == {200}, statuses
        assert refused_after_first == 0
        ready = httpx.get(f"http://127.0.0.1:{port}{READY_PATH}")
        assert (ready.status_code, ready.text) == (200, "OK")
        assert proc.poll() is None
        assert lock.exists(), "written once the function has loaded"
        assert lock_before_first_answer is not None
        assert listened_after < 1.0, f"listening {listened_after:.2f}s after start"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        assert not lock.exists(), "removed when the server exits"
    finally:
        proc.kill()
        proc.wait(10)


def wait_in_flight(port: int, timeout: float = 10.0) -> None:
    """Block until the server side of a TCP connection on ``port`` is established."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _established_server_connections(port):
            time.sleep(0.2)  # accepted: give the worker thread a moment to enter the handler
            return
        time.sleep(0.02)
    raise AssertionError(f"no connection reached port {port}")


def _established_server_connections(port: int) -> int:
    """Count ESTABLISHED sockets whose local port is ``port`` (Linux /proc/net/tcp*)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, state = fields[1], fields[3]
            if state == "01" and int(local.rsplit(":", 1)[1], 16) == port:
                count += 1
    return count


# --- Dockerfile and template.yml --------------------------------------------------------------

def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        keyword, _, args = line.partition(" ")
        instructions.append((keyword.upper(), args.strip()))
    return instructions


def env_of(instructions: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, args in instructions:
        if keyword == "ENV":
            for item in shlex.split(args):
                key, sep, value = item.partition("=")
                assert sep, f"ENV without '=': {item}"
                env[key] = value
    return env


def go_duration_seconds(value: str) -> float:
    """of-watchdog timeouts: an integer means seconds, otherwise a Go duration like 1m5s."""
    if value.isdigit():
        return float(value)
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", value)
    assert parts and "".join(n + u for n, u in parts) == value, f"bad duration {value!r}"
    return sum(float(n) * units[u] for n, u in parts)


@pytest.fixture(scope="module")
def docker() -> list[tuple[str, str]]:
    return dockerfile_instructions((TEMPLATE / "Dockerfile").read_text(encoding="utf-8"))


def arg_defaults(docker: list[tuple[str, str]]) -> dict[str, str]:
    return dict(a.split("=", 1) for k, a in docker if k == "ARG" and "=" in a)


def stages(docker: list[tuple[str, str]]) -> dict[str, list[tuple[str, str]]]:
    """Instructions per ``FROM ... AS name`` stage."""
    out: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    for keyword, args in docker:
        if keyword == "FROM":
            current = out.setdefault(args.split()[-1], [])
        if current is not None:
            current.append((keyword, args))
    return out


@pytest.mark.no_stores
def test_dockerfile_stages_are_pinned(docker: list[tuple[str, str]]) -> None:
    args = arg_defaults(docker)
    assert args["WATCHDOG_IMAGE"] == f"{WATCHDOG_IMAGE}:{WATCHDOG_VERSION}"
    # The one Python of the deployment: the gateway image's, pinned by digest.
    gateway_args = dict(a.split("=", 1) for k, a in dockerfile_instructions(
        (REPO_ROOT / "gateway" / "Dockerfile").read_text()) if k == "ARG" and "=" in a)
    assert args["PYTHON_IMAGE"] == gateway_args["PYTHON_IMAGE"]
    assert re.fullmatch(rf"{re.escape(BASE_IMAGE)}@sha256:[0-9a-f]{{64}}", args["PYTHON_IMAGE"])
    froms = [a.split() for k, a in docker if k == "FROM"]
    assert froms == [["${WATCHDOG_IMAGE}", "AS", "watchdog"], ["${PYTHON_IMAGE}", "AS", "build"],
                     ["${PYTHON_IMAGE}", "AS", "function"], ["function", "AS", "ship"]]
    # One copy of the watchdog binary (a chmod would store it twice): executable as shipped.
    ship = stages(docker)["ship"]
    assert ("COPY", "--from=watchdog /fwatchdog /usr/bin/fwatchdog") in ship
    assert not any("fwatchdog" in a for k, a in docker if k == "RUN")
    assert any(keyword == "ARG" and args.split("=")[0] == "ADDITIONAL_PACKAGE" for keyword, args in docker)
    # No BuildKit frontend pulled from a registry.
    assert not (TEMPLATE / "Dockerfile").read_text().startswith("# syntax")


@pytest.mark.no_stores
def test_dockerfile_runs_as_non_root_and_owns_nothing(docker: list[tuple[str, str]]) -> None:
    function = stages(docker)["function"]
    users = [args for keyword, args in function if keyword == "USER"]
    assert users == ["1000:1000"], "numeric (Kubernetes runAsNonRoot checks it)"
    useradd = next(a for k, a in function if k == "RUN" and "useradd" in a)
    assert "--uid 1000" in useradd and "--system" not in useradd  # --system with 1000 warns
    assert "--no-create-home" in useradd and "--create-home " not in useradd
    # The code is copied as root (no --chown) and nothing runs after USER.
    assert not any("--chown" in a for k, a in docker if k == "COPY")
    after = function[[k for k, _ in function].index("USER"):]
    assert not any(keyword == "RUN" for keyword, _ in after)
    assert not any(keyword == "RUN" for keyword, _ in stages(docker)["ship"])
    env = env_of(function)
    assert env["HOME"] == "/tmp"


@pytest.mark.no_stores
def test_dockerfile_installs_the_single_requirements_list(docker: list[tuple[str, str]]) -> None:
    build = stages(docker)["build"]
    runs = " ".join(args for keyword, args in build if keyword == "RUN")
    copies = [args for keyword, args in build if keyword == "COPY"]
    assert "function/shared/requirements.txt /tmp/requirements/shared.txt" in copies
    assert "function/requirements.txt /tmp/requirements/function.txt" in copies
    assert "/opt/venv/bin/pip install -r /tmp/requirements/shared.txt" in runs
    assert "/opt/venv/bin/pip install -r /tmp/requirements/function.txt" in runs
    assert "pip uninstall -y -q pip setuptools" in runs  # no installer in the final image
    assert env_of(build)["PIP_NO_CACHE_DIR"] == "1"
    # The final stages take the virtualenv only, not the build stage's packages or caches.
    assert ("COPY", "--from=build /opt/venv /opt/venv") in stages(docker)["function"]
    pins = (REPO_ROOT / "shared" / "requirements.txt").read_text()
    for package in ("functions-framework", "gunicorn", "flask"):
        assert re.search(rf"^{package}==\d", pins, re.MULTILINE), package


@pytest.mark.no_stores
def test_dockerfile_watchdog_settings(docker: list[tuple[str, str]]) -> None:
    env = env_of(docker)
    template = yaml.safe_load((TEMPLATE / "template.yml").read_text())
    assert env["fprocess"] == template["fprocess"] == "python index.py"
    assert env["mode"] == "http"
    assert env["upstream_url"] == "http://127.0.0.1:5000"
    assert env["prefix_logs"] == "false"
    assert env["WSGI_BIND"] == env["upstream_url"].removeprefix("http://")
    exec_timeout = go_duration_seconds(env["exec_timeout"])
    read_timeout = go_duration_seconds(env["read_timeout"])
    write_timeout = go_duration_seconds(env["write_timeout"])
    assert 0 < exec_timeout <= write_timeout
    assert exec_timeout < 60, "the watchdog's 504 must come before the gateway's 60s upstream timeout"
    assert int(env["WSGI_GRACEFUL_TIMEOUT"]) >= exec_timeout, "SIGTERM must drain a full request"
    # Slow clients: the watchdog reads a request (body included) within read_timeout, before
    # the function sees it; gunicorn's own deadline is the same.
    assert read_timeout <= 10 and env["http_buffer_req_body"] == "true"
    assert int(env["WSGI_READ_TIMEOUT"]) == read_timeout
    assert int(env["max_inflight"]) == 2 * int(env["WSGI_THREADS"])
    # A stopping container is "not ready" for 5 s, then drains (the default is write_timeout).
    assert go_duration_seconds(env["healthcheck_interval"]) == 5
    assert env["ready_path"] == READY_PATH
    assert env["PROMETHEUS_MULTIPROC_DIR"].startswith("/tmp/"), "read-only root: only /tmp is writable"


@pytest.mark.no_stores
def test_dockerfile_healthcheck_and_command(docker: list[tuple[str, str]]) -> None:
    checks = [args for keyword, args in docker if keyword == "HEALTHCHECK"]
    assert len(checks) == 1 and "--interval=" in checks[0]
    # The lock file: written by index.py once the function has loaded (suppress_lock).
    assert '["test", "-e", "/tmp/.lock"]' in checks[0]
    assert env_of(docker)["suppress_lock"] == "true"
    assert [json.loads(a) for k, a in stages(docker)["function"] if k == "CMD"] == [["python", "index.py"]]
    assert [json.loads(a) for k, a in stages(docker)["ship"] if k == "CMD"] == [["fwatchdog"]]
    assert ("COPY", "index.py buffered_worker.py ./") in stages(docker)["function"]


@pytest.mark.no_stores
def test_dockerfile_bakes_in_no_secrets(docker: list[tuple[str, str]]) -> None:
    secretish = re.compile(r"PASSWORD|SECRET|TOKEN|KEY", re.IGNORECASE)
    for key in list(env_of(docker)) + [a.split("=")[0] for k, a in docker if k == "ARG"]:
        assert not secretish.search(key), key
    text = (TEMPLATE / "Dockerfile").read_text()
    assert ".secrets" not in text and "/var/openfaas/secrets" not in text
    copies = [args for keyword, args in docker if keyword == "COPY"]
    assert all(".secrets" not in c and ".env" not in c for c in copies)


@pytest.mark.no_stores
def test_template_skeleton_is_a_working_function(monkeypatch: pytest.MonkeyPatch) -> None:
    """What ``faas-cli new fn --lang python3-ff`` copies: handler.py with handle, requirements.txt."""
    import functions_framework

    # functions-framework appends the source folder to sys.path and registers sys.modules
    # ["handler"]; keep both from leaking into other tests.
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setitem(sys.modules, "handler", sys.modules.get("handler"))  # type: ignore[arg-type]
    skeleton = TEMPLATE / "function"
    assert sorted(p.name for p in skeleton.iterdir() if p.name != "__pycache__") == \
        ["handler.py", "requirements.txt"]
    app = functions_framework.create_app(target="handle", source=str(skeleton / "handler.py"),
                                         signature_type="http")
    r = app.test_client().get("/x?name=ff")
    assert r.status_code == 200
    assert r.get_json() == {"hello": "ff", "method": "GET", "path": "/x"}
