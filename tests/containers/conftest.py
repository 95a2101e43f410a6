"""Harness of `make test-containers`: a Docker engine, the images built from scratch, the stack.

The engine is Debian's (docker.io 20.10) started by scripts/containers.sh when it is not
running; compose is Debian's docker-compose 1.29 with ``--compatibility`` (the same file works
with Compose v2). Images come from the registries when Docker Hub answers (``MT_IMAGES=public``)
and are built from a locally bootstrapped Debian base otherwise (``MT_IMAGES=local``,
docker-compose.local.yml); ``MT_IMAGES`` forces either.

Everything the tests start carries the compose project ``MT_PROJECT`` (default
``mt-containers-test``) and publishes only on 127.0.0.1, on unusual ports (``MT_NGINX_PORT``,
default 18480; ``MT_GRAFANA_PORT``, 13480). ``MT_REUSE_IMAGES=1`` skips the from-scratch
rebuild (for iterating on a test; CI never sets it).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from minitwitter.config import REPO_ROOT, ensure_dev_secrets

PROJECT = os.environ.get("MT_PROJECT", "mt-containers-test")
NGINX_PORT = int(os.environ.get("MT_NGINX_PORT", "18480"))
GRAFANA_PORT = int(os.environ.get("MT_GRAFANA_PORT", "13480"))
CONTAINERS_SH = REPO_ROOT / "scripts" / "containers.sh"
TEST_OVERRIDE = Path(__file__).parent / "docker-compose.test.yml"
LOCAL_PYTHON = "minitwitter-local/python:3.11-bookworm"
LOCAL_BASES = ("minitwitter-local/python:3.11-bookworm", "minitwitter-local/debian:bookworm")
WATCHDOG_IMAGE = "ghcr.io/openfaas/of-watchdog:0.11.6"


def docker_binary() -> str:
    """Debian's CLI when installed (it matches the engine and builds with BuildKit itself)."""
    return os.environ.get("DOCKER") or ("/usr/bin/docker" if Path("/usr/bin/docker").exists()
                                        else shutil.which("docker") or "docker")


def run(argv: list[str], *, check: bool = True, timeout: float = 900, env: dict[str, str] | None = None,
        capture: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(argv, cwd=REPO_ROOT, env=env, text=True, timeout=timeout,
                          capture_output=capture)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return done


def docker(*args: str, check: bool = True, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return run([docker_binary(), *args], check=check, timeout=timeout)


def inspect(*names: str) -> list[dict[str, Any]]:
    return json.loads(docker("inspect", *names).stdout) if names else []


def image_size_mb(image: str) -> float:
    return int(docker("image", "inspect", "-f", "{{.Size}}", image).stdout.strip()) / 1e6


@dataclass
class Timings:
    """Durations measured by the run, printed at its end (and kept for the docs)."""

    items: dict[str, float] = field(default_factory=dict)
    sizes: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


TIMINGS = Timings()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not (TIMINGS.items or TIMINGS.sizes or TIMINGS.notes):
        return
    terminalreporter.section("containers: measured")
    for name, seconds in TIMINGS.items.items():
        terminalreporter.write_line(f"{name}: {seconds:.1f} s")
    for image, size in sorted(TIMINGS.sizes.items()):
        terminalreporter.write_line(f"image {image}: {size:.0f} MB")
    for note in TIMINGS.notes:
        terminalreporter.write_line(note)


@pytest.fixture(scope="session")
def engine() -> str:
    """The engine answers (scripts/containers.sh test started it when it was not running)."""
    if docker("info", check=False, timeout=60).returncode != 0:
        pytest.fail("no Docker engine: run `make test-containers` (it installs and starts one)")
    return docker_binary()


@pytest.fixture(scope="session")
def image_source(engine: str) -> str:
    """'public' or 'local' (scripts/containers.sh images), with the local base built from scratch."""
    source = run([str(CONTAINERS_SH), "images"]).stdout.strip()
    assert source in {"public", "local"}, source
    if source == "local":
        if not os.environ.get("MT_REUSE_IMAGES"):
            docker("rmi", "-f", *LOCAL_BASES, check=False)
        started = time.monotonic()
        run([str(CONTAINERS_SH), "base"], timeout=1200)
        TIMINGS.items["local base images (debootstrap + python)"] = time.monotonic() - started
        TIMINGS.notes.append("images: built from the locally bootstrapped Debian base "
                             "(no registry answers; docker-compose.local.yml)")
    return source


def compose_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NGINX_", "GRAFANA_", "COMPOSE_"))}
    env.update({"NGINX_PORT": str(NGINX_PORT), "NGINX_BIND": "127.0.0.1", "GRAFANA_PORT": str(GRAFANA_PORT),
                "GRAFANA_BIND": "127.0.0.1", "DOCKER_BUILDKIT": "0", "COMPOSE_DOCKER_CLI_BUILD": "0"})
    env.update(extra)
    return env


@dataclass
class Stack:
    """The compose project under test."""

    source: str
    files: list[str]
    url: str
    secrets_dir: Path
    gateway_image: str

    def compose(self, *args: str, check: bool = True, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        argv = ["docker-compose", "--compatibility", "-p", PROJECT]
        for name in self.files:
            argv += ["-f", name]
        return run([*argv, *args], check=check, timeout=timeout,
                   env=compose_env(MT_GATEWAY_IMAGE=self.gateway_image))

    def container_ids(self, service: str | None = None, *, all_states: bool = False) -> list[str]:
        args = ["ps", "-q"] + (["-a"] if all_states else [])
        args += ["--filter", f"label=com.docker.compose.project={PROJECT}"]
        if service:
            args += ["--filter", f"label=com.docker.compose.service={service}"]
        return docker(*args).stdout.split()

    def container(self, service: str) -> str:
        ids = self.container_ids(service)
        assert len(ids) == 1, (service, ids)
        return ids[0]

    def health(self) -> dict[str, str]:
        states = {}
        for info in inspect(*self.container_ids(all_states=True)):
            state = info["State"]
            name = info["Name"].lstrip("/")
            if state.get("Health"):
                states[name] = state["Health"]["Status"]
            elif state["Status"] == "exited":
                states[name] = f"exited({state['ExitCode']})"
            else:
                states[name] = state["Status"]
        return states

    def wait_healthy(self, timeout: float = 300) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        states: dict[str, str] = {}
        while time.monotonic() < deadline:
            states = self.health()
            # "running": a container without a health check (the test's callback receiver).
            if states and all(s in {"healthy", "exited(0)", "running"} for s in states.values()):
                return states
            time.sleep(1)
        raise AssertionError(f"not healthy within {timeout}s: {states}\n"
                             + self.compose("logs", "--tail", "30", check=False).stdout[-6000:])

    def secret(self, name: str) -> str:
        return (self.secrets_dir / name).read_text().strip()


@pytest.fixture(scope="session")
def stack(image_source: str) -> Iterator[Stack]:
    """The whole topology, every image built from scratch, up and healthy; `down -v` after."""
    secrets_dir = ensure_dev_secrets(REPO_ROOT / ".secrets")  # `make secrets`
    files = ["docker-compose.yml"]
    if image_source == "local":
        files.append("docker-compose.local.yml")
    gateway_image = ("minitwitter-local/minitwitter-gateway:latest" if image_source == "local"
                     else "ghcr.io/minitwitter/minitwitter-gateway:latest")
    files.append(str(TEST_OVERRIDE.relative_to(REPO_ROOT)))
    stack = Stack(image_source, files, f"http://127.0.0.1:{NGINX_PORT}", secrets_dir, gateway_image)
    stack.compose("down", "-v", "--remove-orphans", check=False)  # a previous run's leftovers
    started = time.monotonic()
    if not os.environ.get("MT_REUSE_IMAGES"):
        # From scratch, each image once (the gateway image serves three services), ...
        config = yaml.safe_load(stack.compose("config").stdout)
        first: dict[str, str] = {}
        for name, spec in config["services"].items():
            if spec.get("build") and name not in ("grafana",):
                first.setdefault(spec.get("image", name), name)
        stack.compose("build", "--no-cache", *(["--pull"] if image_source == "public" else []),
                      *sorted(first.values()), timeout=1800)
    stack.compose("build", timeout=1800)  # ... then every service from those layers
    TIMINGS.items["compose build (every service image)"] = time.monotonic() - started
    started = time.monotonic()
    stack.compose("up", "-d", "--remove-orphans", timeout=600)
    stack.wait_healthy()
    TIMINGS.items["compose up until every service is healthy"] = time.monotonic() - started
    try:
        yield stack
    finally:
        if stack.container_ids(all_states=True):
            stack.compose("down", "-v", "--remove-orphans", check=False, timeout=300)


HYGIENE_SCRIPT = (
    "set -u; bad=''; "
    "for p in /opt/venv/bin/pip /root/.cache /tmp/.cache /tmp/requirements; do "
    "[ -e \"$p\" ] && bad=\"$bad $p\"; done; "
    "[ -n \"$(ls -A /var/lib/apt/lists 2>/dev/null | grep -v '^partial$' || true)\" ] && bad=\"$bad apt-lists\"; "
    "for tool in gcc cc make; do command -v $tool >/dev/null 2>&1 && bad=\"$bad $tool\"; done; "
    "echo \"bad:$bad\""
)


def assert_clean_image(image: str) -> None:
    """No installer, build tool, package list or download cache in the final image."""
    out = docker("run", "--rm", "--entrypoint", "sh", image, "-c", HYGIENE_SCRIPT).stdout.strip()
    assert out == "bad:", f"{image}: {out}"
