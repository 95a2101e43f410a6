"""Function images (issue 22, item 3): every `faas-cli build --shrinkwrap` context of stack.yml
built with `docker build`, run as the non-root user on a read-only root filesystem, answering
a request, and draining on SIGTERM.

The watchdog stage comes from ghcr.io/openfaas/of-watchdog:0.11.6. Where that image cannot be
had (no registry answers), the images are built up to the `function` stage, everything but the
watchdog, and served by their own server (`python index.py`, the watchdog's fprocess);
test_the_ship_stage_with_the_watchdog then says so as a skip. The containers use the host's
network namespace, so they reach this run's PostgreSQL and Redis on 127.0.0.1 (its own test
database and Redis index) and the tests reach them on 127.0.0.1 only.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway import embedded
from minitwitter.config import REPO_ROOT
from tests.faas_cli import load_stack, shrinkwrap
from tests.test_template import FIXTURES, make_project

from .conftest import (
    LOCAL_PYTHON,
    TIMINGS,
    WATCHDOG_IMAGE,
    assert_clean_image,
    docker,
    docker_binary,
    image_size_mb,
    inspect,
    run,
)

REAL_FUNCTIONS = sorted(load_stack(REPO_ROOT / "stack.yml", {})["functions"])
IMAGE_PREFIX = "mt-containers-test-fn"
SECRET_MOUNT = "/var/openfaas/secrets"


def build(context: Path, tag: str, source: str, *, target: str = "function", no_cache: bool = False) -> None:
    args = ["build", "-q", "--target", target, "-t", tag]
    if source == "local":
        args += ["--build-arg", f"PYTHON_IMAGE={LOCAL_PYTHON}"]
    if no_cache:
        args.append("--no-cache")
    env = {**os.environ, "DOCKER_BUILDKIT": "1"}  # BuildKit builds only the stages the target needs
    run([docker_binary(), *args, str(context)], env=env, timeout=1200)


@pytest.fixture(scope="module")
def contexts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every real function's context, plus the test fixtures' `sleepy` (a request to drain)."""
    tmp = tmp_path_factory.mktemp("function-images")
    built = shrinkwrap(REPO_ROOT / "stack.yml", tmp / "build", project_dir=REPO_ROOT)
    project = make_project(tmp / "fixtures", (FIXTURES / "stack.yml").read_text(encoding="utf-8"),
                           FIXTURES / "functions")
    built.update(shrinkwrap(project / "stack.yml", tmp / "fixture-build", only=["sleepy"]))
    return built


@pytest.fixture(scope="module")
def images(image_source: str, contexts: dict[str, Path]) -> Iterator[dict[str, str]]:
    """name -> image tag, every one built (the first from scratch, the rest share its layers)."""
    tags: dict[str, str] = {}
    started = time.monotonic()
    for i, name in enumerate([*REAL_FUNCTIONS, "sleepy"]):
        tags[name] = f"{IMAGE_PREFIX}/{name}:latest"
        build(contexts[name], tags[name], image_source,
              no_cache=(i == 0 and not os.environ.get("MT_REUSE_IMAGES")))
    TIMINGS.items[f"docker build of {len(tags)} function images (target function)"] = time.monotonic() - started
    TIMINGS.sizes[f"{IMAGE_PREFIX}/<function>"] = image_size_mb(tags[REAL_FUNCTIONS[0]])
    yield tags
    docker("rmi", "-f", *tags.values(), check=False)


class FunctionContainer:
    """One function image run as OpenFaaS runs it: its own user, read-only root, /tmp only."""

    def __init__(self, image: str, stores: dict[str, str], name: str) -> None:
        self.port = embedded.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        secrets = Path(stores["SECRETS_DIR"])
        mounts = [arg for path in sorted(secrets.iterdir())
                  for arg in ("-v", f"{path}:{SECRET_MOUNT}/{path.name}:ro")]
        self.id = docker(
            "run", "-d", "--name", f"{IMAGE_PREFIX}-{name}-{self.port}", "--network", "host",
            "--read-only", "--tmpfs", "/tmp", "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
            *mounts,
            "-e", f"WSGI_BIND=127.0.0.1:{self.port}", "-e", f"DATABASE_URL={stores['DATABASE_URL']}",
            "-e", f"REDIS_URL={stores['REDIS_URL']}", "-e", "RATE_LIMIT_ENABLED=false",
            "-e", "SENTIMENT_BACKEND=vader", "-e", "LOG_TO_DB=false", "-e", "WSGI_GRACEFUL_TIMEOUT=20",
            image).stdout.strip()

    def wait(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/_/ready", timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if not inspect(self.id)[0]["State"]["Running"]:
                break
            time.sleep(0.1)
        raise AssertionError(f"function did not answer:\n{self.logs()}")

    def logs(self) -> str:
        done = docker("logs", self.id, check=False)
        return done.stdout + done.stderr

    def stop(self, timeout: int = 30) -> float:
        started = time.monotonic()
        docker("stop", "-t", str(timeout), self.id, timeout=timeout + 30)
        return time.monotonic() - started

    def remove(self) -> None:
        docker("rm", "-f", self.id, check=False)


@pytest.fixture
def start(stores: dict[str, str], images: dict[str, str]) -> Iterator[Any]:
    started: list[FunctionContainer] = []

    def starter(name: str) -> FunctionContainer:
        container = FunctionContainer(images[name], stores, name)
        started.append(container)
        container.wait()
        return container

    yield starter
    for container in started:
        container.remove()


#: A request each function answers without any prior state, and its status.
FIRST_REQUEST = {"register": ("POST", "/", {"username": "image_user", "password": "correct horse 12"}, 201),
                 "list-posts": ("GET", "/", None, 200), "login": ("GET", "/", None, 405),
                 "home-timeline": ("GET", "/", None, 401), "get-post": ("GET", "/999", None, 404)}


@pytest.mark.parametrize("name", REAL_FUNCTIONS)
def test_function_image_runs_read_only_as_its_user_and_answers(name: str, start: Any,
                                                               images: dict[str, str]) -> None:
    info = docker("image", "inspect", "-f", "{{.Config.User}}", images[name]).stdout.strip()
    assert info == "1000:1000"
    fn = start(name)
    method, path, body, status = FIRST_REQUEST.get(name, ("GET", "/", None, None))
    r = httpx.request(method, fn.url + path, json=body, timeout=30)
    assert r.headers["Content-Type"].startswith("application/json"), r.text
    if status is not None:
        assert r.status_code == status, r.text
    else:
        assert r.status_code < 500, r.text
    assert fn.stop() < 10
    state = inspect(fn.id)[0]["State"]
    assert state["ExitCode"] == 0, fn.logs()
    logs = fn.logs()
    assert "Read-only file system" not in logs and "Control server error" not in logs, logs


def test_function_images_carry_no_build_tools_or_caches(images: dict[str, str]) -> None:
    assert_clean_image(images["register"])


def test_the_app_user_can_change_neither_its_code_nor_the_root(images: dict[str, str]) -> None:
    code = docker("image", "inspect", "-f", "{{.Config.WorkingDir}}", images["register"]).stdout.strip()
    script = ("import os, pathlib\n"
              "assert os.getuid() == 1000 and os.getgid() == 1000\n"
              f"for path in ('{code}/index.py', '{code}/function/handler.py', '{code}/new'):\n"
              "    try:\n"
              "        open(path, 'a').close()\n"
              "    except OSError as exc:\n"
              "        print(path, type(exc).__name__)\n"
              "    else:\n"
              "        raise SystemExit(f'{path} is writable')\n"
              "pathlib.Path('/tmp/ok').write_text('writable')\n")
    done = docker("run", "--rm", "--read-only", "--tmpfs", "/tmp", "--entrypoint", "python",
                  images["register"], "-c", script)
    assert done.stdout.count("PermissionError") + done.stdout.count("OSError") == 3, done.stdout
    # ... and with a writable root too: the code is root's.
    done = docker("run", "--rm", "--entrypoint", "python", images["register"], "-c",
                  f"open('{code}/index.py', 'a')", check=False)
    assert done.returncode != 0 and "PermissionError" in done.stderr


def test_sigterm_drains_the_in_flight_request_and_exits_0(start: Any) -> None:
    fn = start("sleepy")
    result: dict[str, Any] = {}

    def call() -> None:
        try:
            result["response"] = httpx.get(fn.url + "/", params={"seconds": "2"}, timeout=30)
        except httpx.HTTPError as exc:  # recorded, asserted below
            result["error"] = exc

    caller = threading.Thread(target=call)
    caller.start()
    time.sleep(0.5)
    stopped_in = fn.stop(timeout=30)
    caller.join(30)
    assert "error" not in result, result.get("error")
    assert result["response"].status_code == 200 and result["response"].json() == {"slept": 2.0}
    assert inspect(fn.id)[0]["State"]["ExitCode"] == 0, fn.logs()
    assert 1.0 < stopped_in < 10, stopped_in
    TIMINGS.items["function container: docker stop with a 2 s request in flight"] = stopped_in


def test_the_ship_stage_with_the_watchdog(image_source: str, contexts: dict[str, Path], stores: dict[str, str]) -> None:
    """The image OpenFaaS runs: of-watchdog in front. Needs ghcr.io/openfaas/of-watchdog:0.11.6."""
    if docker("image", "inspect", WATCHDOG_IMAGE, check=False).returncode != 0 and \
            docker("pull", WATCHDOG_IMAGE, check=False, timeout=300).returncode != 0:
        TIMINGS.notes.append(f"NOT BUILT: the watchdog stage ({WATCHDOG_IMAGE} cannot be had here); "
                             "function images were built and run up to their `function` stage")
        pytest.skip(f"{WATCHDOG_IMAGE} cannot be had here (no registry answers): the `ship` stage "
                    "(the watchdog in front) is not built; every other stage is")
    tag = f"{IMAGE_PREFIX}/ship-sleepy:latest"
    build(contexts["sleepy"], tag, image_source, target="ship")
    port = embedded.free_port()
    cid = docker("run", "-d", "--read-only", "--tmpfs", "/tmp", "-p", f"127.0.0.1:{port}:8080",
                 "-e", "LOG_TO_DB=false", "-e", f"DATABASE_URL={stores['DATABASE_URL']}", tag).stdout.strip()
    try:
        deadline = time.monotonic() + 60
        while inspect(cid)[0]["State"]["Health"]["Status"] != "healthy":
            assert time.monotonic() < deadline, docker("logs", cid).stderr
            time.sleep(0.5)
        assert httpx.get(f"http://127.0.0.1:{port}/_/ready").status_code == 200
        r = httpx.get(f"http://127.0.0.1:{port}/", params={"seconds": "0"})
        assert r.status_code == 200
        started = time.monotonic()
        docker("stop", "-t", "30", cid)
        TIMINGS.items["function container with the watchdog: docker stop"] = time.monotonic() - started
        assert inspect(cid)[0]["State"]["ExitCode"] == 0
    finally:
        docker("rm", "-f", cid, check=False)
        docker("rmi", "-f", tag, check=False)
