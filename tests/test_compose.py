"""docker-compose.yml and gateway/Dockerfile, proven without a Docker engine.

- the compose file validates against the Compose Specification's JSON schema
  (``tests/fixtures/compose-spec/``, with its source and licence);
- its topology: services, healthchecks, published ports, secrets, dependencies, limits, mounts,
  and agreement with nginx.conf and monitoring/ (Prometheus targets, Grafana paths);
- the Dockerfile: pinned slim base, pinned deps, non-root, HEALTHCHECK, build context; and its
  ENTRYPOINT/CMD/HEALTHCHECK commands run for real outside a container (migrations on a fresh
  database, the granian server draining on SIGTERM, the worker's health check);
- compose secrets reach the app: password files injected into DATABASE_URL / REDIS_URL.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pg8000.native
import pytest
import redis
import yaml

from gateway import embedded
from minitwitter import db, migrate
from minitwitter.config import REPO_ROOT, SECRET_NAMES, ensure_dev_secrets, load_config, with_password
from tests.conftest import eventually, wait_http

COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
LOCAL_COMPOSE_FILE = REPO_ROOT / "docker-compose.local.yml"
COMPOSE_SCHEMA = REPO_ROOT / "tests" / "fixtures" / "compose-spec" / "compose-spec.json"
DOCKERFILE = REPO_ROOT / "gateway" / "Dockerfile"
DOCKERIGNORE = REPO_ROOT / ".dockerignore"
NGINX_CONF = REPO_ROOT / "gateway" / "nginx.conf"
PROMETHEUS_CONF = REPO_ROOT / "monitoring" / "prometheus.yml"
GRAFANA_DASHBOARD_PROVIDERS = REPO_ROOT / "monitoring" / "grafana" / "provisioning" / "dashboards"

EXPECTED_SERVICES = {"nginx", "gateway-1", "gateway-2", "worker", "postgres", "redis", "ollama",
                     "ollama-pull", "prometheus", "grafana", "redis-exporter", "postgres-exporter"}
PUBLISHED = {"nginx", "grafana"}
ONE_SHOT = {"ollama-pull"}
GATEWAY_IMAGE = re.compile(r"^\$\{REGISTRY:-ghcr\.io/minitwitter\}/minitwitter-gateway:\$\{TAG:-latest\}$")

_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


# --- helpers ---------------------------------------------------------------------------------

def interpolate(value: Any, env: dict[str, str] | None = None) -> Any:
    """Compose interpolation with an empty (or given) environment: ``${VAR:-default}``, ``$$``."""
    env = env or {}
    if isinstance(value, str):
        def repl(match: re.Match[str]) -> str:
            if match.group(0) == "$$":
                return "$"
            return env.get(match.group(1)) or (match.group(2) or "")
        return _VAR.sub(repl, value)
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    return value


def raw_compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())  # merge keys (<<) resolved by PyYAML


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return interpolate(raw_compose())


def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list | dict) else [value]


def depends(service: dict[str, Any]) -> dict[str, str]:
    raw = service.get("depends_on") or {}
    if isinstance(raw, list):
        return dict.fromkeys(raw, "service_started")
    return {name: (spec or {}).get("condition", "service_started") for name, spec in raw.items()}


def secret_names(service: dict[str, Any]) -> list[str]:
    return [s if isinstance(s, str) else s["source"] for s in service.get("secrets") or []]


def bind_mounts(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(host source, container target) of every bind mount (short ``./x:/y[:ro]`` syntax)."""
    out = []
    for volume in service.get("volumes") or []:
        if isinstance(volume, str):
            source, target = volume.split(":")[:2]
            if source.startswith((".", "/")):
                out.append((source, target))
        elif volume.get("type") == "bind":
            out.append((volume["source"], volume["target"]))
    return out


# --- schema ----------------------------------------------------------------------------------

@pytest.mark.no_stores
def test_compose_file_validates_against_the_compose_specification() -> None:
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    validator = jsonschema.Draft7Validator(schema)
    for env in ({}, {"NGINX_BIND": "0.0.0.0", "NGINX_PORT": "80", "TAG": "1.2.3"}):
        document = interpolate(raw_compose(), env)
        errors = sorted(validator.iter_errors(document), key=lambda e: list(e.path))
        assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors[:10])


@pytest.mark.no_stores
def test_the_schema_check_catches_mistakes() -> None:
    validator = jsonschema.Draft7Validator(json.loads(COMPOSE_SCHEMA.read_text()))
    mistakes = [
        lambda d: d["services"]["nginx"].__setitem__("restart", ["always"]),
        lambda d: d["services"]["redis"]["healthcheck"].__setitem__("retry", 3),  # unknown key
        lambda d: d["services"]["grafana"]["depends_on"]["prometheus"].__setitem__("condition", "healthy"),
        lambda d: d["secrets"]["jwt-secret"].__setitem__("path", "./.secrets/jwt-secret"),
    ]
    for mistake in mistakes:
        broken = interpolate(raw_compose())
        mistake(broken)
        assert list(validator.iter_errors(broken)), mistake


# --- topology --------------------------------------------------------------------------------

@pytest.mark.no_stores
def test_services_and_their_health(compose: dict[str, Any]) -> None:
    svc = services(compose)
    assert set(svc) == EXPECTED_SERVICES
    for name, spec in svc.items():
        assert spec.get("image"), f"{name}: no image"
        assert (":" in spec["image"].rsplit("/", 1)[-1] and not spec["image"].endswith(":latest")) \
            or name in {"gateway-1", "gateway-2", "worker"}, f"{name}: image tag not pinned"
        assert spec.get("logging", {}).get("options", {}).get("max-size"), f"{name}: logs unbounded"
        limits = spec.get("deploy", {}).get("resources", {}).get("limits", {})
        assert limits.get("cpus") and limits.get("memory"), f"{name}: no resource limits"
        if name in ONE_SHOT:
            assert spec["restart"].startswith("on-failure"), name
            assert "healthcheck" not in spec
            continue
        assert spec["restart"] in {"always", "unless-stopped"}, name
        test = spec.get("healthcheck", {}).get("test")
        assert test and test[0] in {"CMD", "CMD-SHELL"}, f"{name}: no healthcheck"
    # Two API replicas and two queue-workers, all from the one gateway image.
    for name in ("gateway-1", "gateway-2", "worker"):
        raw = raw_compose()["services"][name]
        assert GATEWAY_IMAGE.match(raw["image"]), raw["image"]
        assert svc[name]["build"] == {"context": ".", "dockerfile": "gateway/Dockerfile"}
    assert svc["gateway-1"]["command"] == ["gateway"] and svc["gateway-2"]["command"] == ["gateway"]
    assert svc["worker"]["command"] == ["worker"] and svc["worker"]["deploy"]["replicas"] == 2
    assert svc["worker"]["healthcheck"]["test"][-2:] == ["healthcheck", "worker"]


def port_mapping(entry: Any) -> dict[str, str]:
    """host_ip / published / target of a short ``[HOST_IP:]PUBLISHED:TARGET`` port entry."""
    assert isinstance(entry, str), "short syntax: Compose v1 (Debian's docker-compose) has no host_ip"
    parts = entry.split(":")
    assert len(parts) == 3, f"{entry}: name the host address explicitly"
    return {"host_ip": parts[0], "published": parts[1], "target": parts[2]}


@pytest.mark.no_stores
def test_only_nginx_and_grafana_are_published_on_loopback(compose: dict[str, Any]) -> None:
    published = {name for name, spec in services(compose).items() if spec.get("ports")}
    assert published == PUBLISHED
    for name in PUBLISHED:
        for port in services(compose)[name]["ports"]:
            assert port_mapping(port)["host_ip"] == "127.0.0.1", f"{name} must bind 127.0.0.1 by default"
    nginx_port = port_mapping(services(compose)["nginx"]["ports"][0])
    assert (nginx_port["target"], nginx_port["published"]) == ("8080", "8080")
    # ... and an operator can still choose.
    moved = interpolate(raw_compose(), {"NGINX_BIND": "0.0.0.0", "NGINX_PORT": "80"})
    assert port_mapping(moved["services"]["nginx"]["ports"][0]) == {**nginx_port, "host_ip": "0.0.0.0",
                                                                    "published": "80"}
    # No service exposes a store to the host in any other way.
    for name, spec in services(compose).items():
        assert spec.get("network_mode") != "host", name


@pytest.mark.no_stores
def test_compose_v1_can_read_the_file() -> None:
    """Debian's docker-compose 1.29 refuses a top-level `name` and long-syntax `host_ip`."""
    raw = raw_compose()
    assert "name" not in raw and "version" not in raw
    for spec in raw["services"].values():
        for port in spec.get("ports") or []:
            assert isinstance(port, str)


def deep_merge(base: Any, override: Any) -> Any:
    """Compose's merge of an override file, for mappings (lists and scalars are replaced)."""
    if isinstance(base, dict) and isinstance(override, dict):
        return {k: deep_merge(base.get(k), v) if k in base else v for k, v in override.items()} | {
            k: v for k, v in base.items() if k not in override}
    return override


@pytest.mark.no_stores
def test_the_local_override_keeps_the_topology() -> None:
    """docker-compose.local.yml (no registry): the same services, only images built here."""
    local = yaml.safe_load(LOCAL_COMPOSE_FILE.read_text())
    base = raw_compose()
    assert set(local["services"]) == set(base["services"])
    for name, spec in local["services"].items():
        assert set(spec) <= {"image", "build", "profiles", "deploy"}, name
        if name == "grafana":  # Debian does not package it: left out, and `make up` says so
            assert spec == {"profiles": ["grafana"]}
            continue
        assert spec["image"].startswith("minitwitter-local/"), name
        assert spec["build"], name
    assert set(local["services"]["ollama"]["deploy"]) == {"resources"}  # the fake's limits only
    for name in ("gateway-1", "gateway-2", "worker"):
        assert local["services"][name]["build"] == {"args": {"PYTHON_IMAGE": "minitwitter-local/python:3.11-bookworm"}}
    merged = interpolate(deep_merge(base, local))
    validator = jsonschema.Draft7Validator(json.loads(COMPOSE_SCHEMA.read_text()))
    errors = sorted(validator.iter_errors(merged), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors[:10])
    for name in ("nginx", "postgres", "redis", "prometheus", "redis-exporter", "postgres-exporter", "ollama"):
        build = merged["services"][name]["build"]
        assert (REPO_ROOT / build["context"] / build["dockerfile"]).is_file(), name
        # The host's CA bundle is the local base's (scripts/containers.sh), never in docker-compose.yml.
    assert "ca-certificates.crt" not in COMPOSE_FILE.read_text()
    assert "host-ca" not in DOCKERFILE.read_text()


@pytest.mark.no_stores
def test_startup_order(compose: dict[str, Any]) -> None:
    svc = services(compose)
    for name in ("gateway-1", "gateway-2", "worker"):
        assert depends(svc[name]) == {"postgres": "service_healthy", "redis": "service_healthy"}, name
    # The API never waits for the LLM: no gateway or worker depends on ollama or the pull.
    for name, spec in svc.items():
        if name not in {"ollama-pull"}:
            assert not {"ollama", "ollama-pull"} & set(depends(spec)), name
    assert depends(svc["ollama-pull"]) == {"ollama": "service_healthy"}
    assert depends(svc["nginx"]) == {"gateway-1": "service_healthy", "gateway-2": "service_healthy"}
    assert depends(svc["grafana"]) == {"prometheus": "service_healthy"}
    assert depends(svc["redis-exporter"]) == {"redis": "service_healthy"}
    assert depends(svc["postgres-exporter"]) == {"postgres": "service_healthy"}
    for name, spec in svc.items():
        assert set(depends(spec)) <= set(svc), f"{name} depends on an unknown service"
    env = svc["gateway-1"]["environment"]
    assert env["SENTIMENT_BACKEND"] == "auto"
    assert env["OLLAMA_HOST"] == "http://ollama:11434"
    assert svc["ollama-pull"]["entrypoint"] == ["ollama", "pull", env["OLLAMA_MODEL"]]


@pytest.mark.no_stores
def test_secrets_come_from_make_secrets_files(compose: dict[str, Any], tmp_path: Path) -> None:
    declared = compose["secrets"]
    assert set(declared) <= set(SECRET_NAMES), set(declared) - set(SECRET_NAMES)
    for name, spec in declared.items():
        assert spec == {"file": f"./.secrets/{name}"}, name
    used = {s for spec in services(compose).values() for s in secret_names(spec)}
    assert used == set(declared), "declared but unused, or used but undeclared"
    # `make secrets` runs ensure_dev_secrets: it generates every one of them.
    assert "ensure_dev_secrets" in (REPO_ROOT / "Makefile").read_text().split("\nsecrets:", 1)[1].split("\n\n")[0]
    made = ensure_dev_secrets(tmp_path / ".secrets")
    assert set(declared) <= {p.name for p in made.iterdir()}
    assert (made.stat().st_mode & 0o777) == 0o700
    for path in made.iterdir():
        assert (path.stat().st_mode & 0o777) == 0o644  # compose bind-mounts them for non-root users
        assert path.read_text().strip()
    assert ".secrets" in (REPO_ROOT / ".gitignore").read_text()
    # Who reads what: each service gets only the secrets it needs.
    svc = services(compose)
    assert set(secret_names(svc["grafana"])) == {"grafana-admin-password"}
    assert set(secret_names(svc["postgres"])) == {"postgres-password"}
    assert set(secret_names(svc["redis"])) == {"redis-password"}
    assert "basic-auth-password" not in secret_names(svc["worker"])
    assert svc["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD__FILE"] == "/run/secrets/grafana-admin-password"
    assert svc["postgres"]["environment"]["POSTGRES_PASSWORD_FILE"] == "/run/secrets/postgres-password"
    # No password value anywhere in the environment: only file paths and secret names.
    for name, spec in svc.items():
        for key, value in (spec.get("environment") or {}).items():
            if re.search(r"PASS|SECRET|TOKEN", key):
                assert key.endswith(("_FILE", "_SECRET")) or str(value).startswith("/run/secrets"), (name, key)
        for url_key in ("DATABASE_URL", "REDIS_URL"):
            url = (spec.get("environment") or {}).get(url_key)
            if url:
                assert ":" not in url.split("//", 1)[1].split("@")[0], f"{name}: password in {url_key}"


@pytest.mark.no_stores
def test_files_the_compose_file_needs_exist(compose: dict[str, Any]) -> None:
    """Build contexts, Dockerfiles and every bind-mounted file or folder (monitoring/ included)."""
    missing = []
    for name, spec in services(compose).items():
        build = spec.get("build")
        if build:
            context = REPO_ROOT / build["context"]
            if not (context / build.get("dockerfile", "Dockerfile")).is_file():
                missing.append(f"{name}: {build}")
        for source, target in bind_mounts(spec):
            if not (REPO_ROOT / source).exists():
                missing.append(f"{name}: {source} -> {target}")
    assert not missing, missing
    mounts = {s: t for spec in services(compose).values() for s, t in bind_mounts(spec)}
    assert mounts == {
        "./gateway/nginx.conf": "/etc/nginx/nginx.conf",
        "./monitoring/prometheus.yml": "/etc/prometheus/prometheus.yml",
        "./monitoring/rules": "/etc/prometheus/rules",
        "./monitoring/grafana/provisioning": "/etc/grafana/provisioning",
        "./monitoring/grafana/dashboards": "/var/lib/grafana/dashboards",
    }
    assert any((REPO_ROOT / "monitoring" / "rules").glob("*.yml"))
    assert any((REPO_ROOT / "monitoring" / "grafana" / "dashboards").glob("*.json"))


@pytest.mark.no_stores
def test_networks_trust_only_nginx(compose: dict[str, Any]) -> None:
    svc = services(compose)
    edge = ipaddress.ip_network(compose["networks"]["edge"]["ipam"]["config"][0]["subnet"])
    dynamic = ipaddress.ip_network(compose["networks"]["edge"]["ipam"]["config"][0]["ip_range"])
    fixed = {name: ipaddress.ip_address(svc[name]["networks"]["edge"]["ipv4_address"])
             for name in ("nginx", "gateway-1", "gateway-2")}
    for name, address in fixed.items():
        assert address in edge and address not in dynamic, name
    trusted = svc["gateway-1"]["environment"]["TRUSTED_PROXIES"]
    assert trusted == f"{fixed['nginx']}/32"
    # Grafana (published) shares no network with the stores.
    assert set(svc["grafana"]["networks"]) == {"monitoring"}
    for store in ("postgres", "redis", "ollama"):
        assert set(svc[store]["networks"]) == {"backend"}, store
    assert set(svc["nginx"]["networks"]) == {"edge"}


@pytest.mark.no_stores
def test_nginx_conf_upstreams_are_the_gateway_services(compose: dict[str, Any]) -> None:
    conf = NGINX_CONF.read_text()
    upstreams = re.findall(r"^\s*server\s+([\w.-]+):(\d+)", conf, re.M)
    assert upstreams == [("gateway-1", "8080"), ("gateway-2", "8080")]
    assert re.search(r"^\s*listen 8080\b", conf, re.M)
    assert port_mapping(services(compose)["nginx"]["ports"][0])["target"] == "8080"
    for name in ("gateway-1", "gateway-2"):
        assert services(compose)[name]["hostname"] == name


@pytest.mark.no_stores
def test_monitoring_config_matches_the_services(compose: dict[str, Any]) -> None:
    """monitoring/ is written by another issue: its targets must exist in this topology."""
    prom = yaml.safe_load(PROMETHEUS_CONF.read_text())
    svc = services(compose)
    names: dict[str, set[int]] = {}
    for name, spec in svc.items():
        aliases = [name]
        for net in (spec.get("networks") or {}).values() if isinstance(spec.get("networks"), dict) else []:
            aliases += (net or {}).get("aliases", [])
        for alias in aliases:
            names.setdefault(alias, set())
    names["gateway"] |= {8080}
    names["worker"] |= {int(svc["worker"]["environment"]["WORKER_METRICS_PORT"])}
    names["redis-exporter"] |= {9121}
    names["postgres-exporter"] |= {9187}
    names["localhost"] = {9090}
    for job in prom["scrape_configs"]:
        for static in job.get("static_configs", []):
            for target in static["targets"]:
                host, port = target.rsplit(":", 1)
                assert int(port) in names.get(host, set()), f"{job['job_name']}: {target}"
        for dns in job.get("dns_sd_configs", []):
            for host in dns["names"]:
                assert dns["port"] in names.get(host, set()), f"{job['job_name']}: {host}:{dns['port']}"
    for pattern in prom.get("rule_files", []):
        assert list((REPO_ROOT / "monitoring").glob(pattern)), pattern
    providers = [yaml.safe_load(p.read_text()) for p in GRAFANA_DASHBOARD_PROVIDERS.glob("*.y*ml")]
    paths = {p["options"]["path"] for doc in providers for p in doc["providers"]}
    assert paths == {"/var/lib/grafana/dashboards"}


# --- Dockerfile ------------------------------------------------------------------------------

def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    lines: list[tuple[str, str]] = []
    buffer = ""
    for raw in DOCKERFILE.read_text().splitlines():
        stripped = raw.strip()
        if not buffer and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            buffer += stripped[:-1] + " "
            continue
        buffer += stripped
        keyword, _, args = buffer.partition(" ")
        lines.append((keyword.upper(), args.strip()))
        buffer = ""
    return lines


def dockerignore_allows(path: str) -> bool:
    """Docker's .dockerignore rules: last matching pattern wins; a match covers a folder's files."""
    included = True
    for raw in DOCKERIGNORE.read_text().splitlines():
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
        regex = re.escape(pattern).replace(r"\*\*/", "(.*/)?").replace(r"\*", "[^/]*")
        if any(re.fullmatch(regex, prefix) for prefix in prefixes):
            included = negate
    return included


def final_stage_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, args in dockerfile_instructions():
        if keyword == "FROM":
            env = {}
        elif keyword == "ENV":
            for item in shlex.split(args):
                key, _, value = item.partition("=")
                env[key] = value.replace("$PATH", os.environ.get("PATH", ""))
    return env


def exec_form(args: str) -> list[str]:
    return json.loads(args[args.index("["):])


@pytest.mark.no_stores
def test_dockerfile_is_pinned_slim_non_root_and_healthchecked() -> None:
    instructions = dockerfile_instructions()
    args = dict(a.split("=", 1) for k, a in instructions if k == "ARG" and "=" in a)
    base = args["PYTHON_IMAGE"]
    assert re.fullmatch(r"python:3\.11\.\d+-slim-[a-z]+@sha256:[0-9a-f]{64}", base), base
    assert not DOCKERFILE.read_text().startswith("# syntax"), "a BuildKit frontend from Docker Hub"
    froms = [a for k, a in instructions if k == "FROM"]
    assert froms and all(f.startswith("${PYTHON_IMAGE}") for f in froms)
    users = [a for k, a in instructions if k == "USER"]
    assert users and users[-1].split(":")[0] not in {"0", "root"}
    assert re.fullmatch(r"\d+:\d+", users[-1]), "numeric USER (Kubernetes runAsNonRoot checks it)"
    healthchecks = [a for k, a in instructions if k == "HEALTHCHECK"]
    assert len(healthchecks) == 1 and "CMD" in healthchecks[0]
    assert [a for k, a in instructions if k == "STOPSIGNAL"] == ["SIGTERM"]
    assert exec_form(next(a for k, a in instructions if k == "ENTRYPOINT")) == [
        "python", "-m", "gateway.entrypoint"]
    assert exec_form(next(a for k, a in instructions if k == "CMD")) == ["gateway"]
    # Dependencies: the one pinned list, every line name==version.
    requirements = [line.split("#")[0].strip() for line in
                    (REPO_ROOT / "shared" / "requirements.txt").read_text().splitlines()]
    pins = [r for r in requirements if r]
    assert pins and all(re.fullmatch(r"[A-Za-z0-9_.\-\[\]]+==[0-9][\w.]*", r) for r in pins), pins
    assert any("shared/requirements.txt" in a for k, a in instructions if k == "COPY")
    assert "granian==" in " ".join(pins) and "rq==" in " ".join(pins)


@pytest.mark.no_stores
def test_build_context_holds_the_code_and_never_the_secrets() -> None:
    sources = []
    for keyword, args in dockerfile_instructions():
        if keyword == "COPY" and "--from=" not in args:
            sources += [s for s in args.split()[:-1] if not s.startswith("--")]
    assert sources
    for source in sources:
        path = source.rstrip("/")
        assert (REPO_ROOT / path).exists(), source
        assert dockerignore_allows(path), f"{source} is excluded by .dockerignore"
    assert dockerignore_allows("functions/create-post/handler.py")
    assert dockerignore_allows("shared/minitwitter/migrations/0001_accounts_posts.sql")
    for private in (".secrets/jwt-secret", ".git/config", ".venv/bin/python", ".data/redis/appendonly.aof",
                    "tests/conftest.py", "shared/minitwitter/__pycache__/db.cpython-311.pyc", "Makefile"):
        assert not dockerignore_allows(private), private


# --- entrypoint, run for real ------------------------------------------------------------------

@pytest.fixture
def fresh_database(stores: dict[str, str]) -> Iterator[str]:
    """An empty database (the image's first start on a new volume)."""
    name = f"{stores['DATABASE_URL'].rsplit('/', 1)[1]}_image"
    # DROP/CREATE DATABASE checkpoint: slow on a busy shared server, hence the long timeout.
    params = {**db.connect_params(stores["DATABASE_URL"], timeout=60), "database": "postgres"}

    def admin(sql: str) -> None:
        conn = pg8000.native.Connection(**params)
        try:
            conn.run(sql)
        finally:
            conn.close()

    admin(f"DROP DATABASE IF EXISTS {pg8000.native.identifier(name)} WITH (FORCE)")
    admin(f"CREATE DATABASE {pg8000.native.identifier(name)}")
    yield stores["DATABASE_URL"].rsplit("/", 1)[0] + "/" + name
    admin(f"DROP DATABASE IF EXISTS {pg8000.native.identifier(name)} WITH (FORCE)")


def image_env(stores: dict[str, str], database_url: str, tmp_path: Path, **extra: str) -> dict[str, str]:
    """The Dockerfile's ENV with /app → the repository and /opt/venv → this interpreter."""
    env = {k: v.replace("/opt/venv/bin", str(Path(sys.executable).parent))
           .replace("/app", str(REPO_ROOT)) for k, v in final_stage_env().items()}
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    home.chmod(0o555)  # like the image: the home folder (/app) is not writable
    env.update({
        "HOME": str(home), "DATABASE_URL": database_url, "REDIS_URL": stores["REDIS_URL"],
        "SECRETS_DIR": stores["SECRETS_DIR"], "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prom"),
        "STACK_FILE": str(REPO_ROOT / "tests" / "fixtures" / "stack.yml"), "GATEWAY_BIND": "127.0.0.1",
        "GATEWAY_WORKERS": "1", "SENTIMENT_BACKEND": "vader", "RATE_LIMIT_ENABLED": "false",
        "LOG_TO_DB": "false",
    })
    env.update(extra)
    return env


def image_command(args: list[str]) -> list[str]:
    return [sys.executable if a == "python" else a for a in args]


@contextmanager
def image_process(argv: list[str], env: dict[str, str], log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Run an image command (see image_command) with its output in ``log_path``; killed on exit
    if it is still running."""
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(image_command(argv), env=env, cwd="/", stdout=log, stderr=log)
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


@pytest.mark.slow
def test_gateway_entrypoint_migrates_serves_and_drains(stores: dict[str, str], fresh_database: str,
                                                       tmp_path: Path) -> None:
    instructions = dockerfile_instructions()
    entrypoint = exec_form(next(a for k, a in instructions if k == "ENTRYPOINT"))
    cmd = exec_form(next(a for k, a in instructions if k == "CMD"))
    healthcheck = exec_form(next(a for k, a in instructions if k == "HEALTHCHECK"))
    port = embedded.free_port()
    env = image_env(stores, fresh_database, tmp_path, GATEWAY_PORT=str(port))
    stale = tmp_path / "prom" / "counter_12345.db"
    stale.parent.mkdir()
    stale.write_bytes(b"stale")
    with image_process(entrypoint + cmd, env, tmp_path / "gateway.log") as proc:
        wait_http(f"http://127.0.0.1:{port}/healthz", timeout=60, proc=proc)
        assert not stale.exists(), "metrics of a previous run must not be summed in"
        conn = pg8000.native.Connection(**db.connect_params(fresh_database))
        versions = [r[0] for r in conn.run("SELECT version FROM schema_migrations ORDER BY version")]
        conn.close()
        assert versions == [v for v, _, _ in migrate.available()]
        check = subprocess.run(image_command(healthcheck), env=env, cwd="/", timeout=30)
        assert check.returncode == 0
        # SIGTERM while a request is in flight: granian finishes it, then exits 0.
        result: dict[str, Any] = {}

        def slow_call() -> None:
            result["response"] = httpx.get(f"http://127.0.0.1:{port}/function/sleepy?seconds=1.5", timeout=30)

        caller = threading.Thread(target=slow_call)
        caller.start()
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        caller.join(30)
        assert result["response"].status_code == 200 and result["response"].json() == {"slept": 1.5}
        assert proc.wait(30) == 0
        check = subprocess.run(image_command(healthcheck), env=env, cwd="/", timeout=30)
        assert check.returncode == 1  # unhealthy once stopped


@pytest.mark.slow
def test_worker_entrypoint_registers_and_stops_on_sigterm(stores: dict[str, str], fresh_database: str,
                                                         tmp_path: Path) -> None:
    entrypoint = exec_form(next(a for k, a in dockerfile_instructions() if k == "ENTRYPOINT"))
    worker_check = raw_compose()["services"]["worker"]["healthcheck"]["test"][1:]
    env = image_env(stores, fresh_database, tmp_path, WORKER_COUNT="1", WORKER_METRICS_PORT="0")
    check = subprocess.run(image_command(worker_check), env=env, cwd="/", timeout=30)
    assert check.returncode == 1  # no worker yet
    with image_process([*entrypoint, "worker"], env, tmp_path / "worker.log") as proc:
        eventually(lambda: subprocess.run(image_command(worker_check), env=env, cwd="/",
                                          timeout=30).returncode == 0, timeout=60, interval=0.5)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        eventually(lambda: subprocess.run(image_command(worker_check), env=env, cwd="/",
                                          timeout=30).returncode == 1, timeout=15, interval=0.5)


@pytest.mark.slow
def test_entrypoint_gives_up_when_the_database_never_answers(tmp_path: Path, stores: dict[str, str]) -> None:
    dead = f"postgresql://minitwitter@127.0.0.1:{embedded.free_port()}/minitwitter"
    env = image_env(stores, dead, tmp_path)
    entrypoint = exec_form(next(a for k, a in dockerfile_instructions() if k == "ENTRYPOINT"))
    started = time.monotonic()
    done = subprocess.run(image_command([*entrypoint, "migrate", "--wait", "2"]), env=env, cwd="/",
                          capture_output=True, timeout=60)
    assert done.returncode == 1
    assert b"database unreachable" in done.stderr
    assert 1.5 < time.monotonic() - started < 30


# --- compose secrets reach the app -----------------------------------------------------------

@pytest.mark.no_stores
def test_password_files_are_injected_into_store_urls(tmp_path: Path) -> None:
    (tmp_path / "postgres-password").write_text("pg s3cret/+@\n")
    (tmp_path / "redis-password").write_text("r3d!s:pw\n")
    env = {"DATABASE_URL": "postgresql://minitwitter@postgres:5432/minitwitter",
           "DATABASE_PASSWORD_SECRET": "postgres-password",
           "REDIS_URL": "redis://default@redis:6379/0", "REDIS_PASSWORD_SECRET": "redis-password"}
    cfg = load_config(env, tmp_path)
    params = db.connect_params(cfg.database_url)
    assert (params["user"], params["password"], params["host"], params["database"]) == (
        "minitwitter", "pg s3cret/+@", "postgres", "minitwitter")
    kwargs = redis.Redis.from_url(cfg.redis_url).connection_pool.connection_kwargs
    assert (kwargs["username"], kwargs["password"], kwargs["host"], kwargs["db"]) == ("default", "r3d!s:pw", "redis", 0)
    assert "s3cret" not in repr(cfg) and "r3d!s" not in repr(cfg)
    # A URL that already carries a password keeps it; no secret named, no change.
    assert with_password("redis://:own@r:6379/0", tmp_path, "redis-password") == "redis://:own@r:6379/0"
    assert load_config({"REDIS_URL": "redis://r:6379/0"}, tmp_path).redis_url == "redis://r:6379/0"
    # Without a password user part, Redis gets the default user implicitly.
    assert with_password("redis://r:6379/1", tmp_path, "redis-password") == "redis://:r3d%21s%3Apw@r:6379/1"
    # A named secret that is missing is an error, not a silent password-less connection.
    with pytest.raises(ValueError, match="missing-password"):
        load_config({**env, "REDIS_PASSWORD_SECRET": "missing-password"}, tmp_path)


@pytest.mark.no_stores
def test_password_injection_against_a_real_redis_with_requirepass(tmp_path: Path) -> None:
    binary = embedded.system_redis_binary() or embedded.redis_server_binary()
    port = embedded.free_port()
    password = "compose-redis-pw"
    (tmp_path / "redis-password").write_text(password + "\n")
    proc = subprocess.Popen([binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "",
                             "--requirepass", password, "--dir", str(tmp_path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        eventually(lambda: embedded.port_open("127.0.0.1", port), timeout=10)
        url = f"redis://default@127.0.0.1:{port}/0"
        with pytest.raises(redis.AuthenticationError):
            redis.Redis.from_url(url).ping()
        cfg = load_config({"REDIS_URL": url, "REDIS_PASSWORD_SECRET": "redis-password"}, tmp_path)
        client = redis.Redis.from_url(cfg.redis_url)
        assert client.ping() is True
        client.close()
    finally:
        proc.terminate()
        proc.wait(10)


def test_compose_environment_loads(compose: dict[str, Any], tmp_path: Path) -> None:
    """The gateway's compose environment is a valid Config (with the generated secret files)."""
    secrets_dir = ensure_dev_secrets(tmp_path / "run-secrets")
    env = {k: str(v) for k, v in services(compose)["gateway-1"]["environment"].items()}
    cfg = load_config({**env, "SECRETS_DIR": str(secrets_dir)})
    password = (secrets_dir / "postgres-password").read_text().strip()
    assert db.connect_params(cfg.database_url)["password"] == password
    assert cfg.trusted_proxies == ("172.28.10.2/32",)
    assert cfg.sentiment_backend == "auto" and cfg.gateway_workers == 2
    assert cfg.jwt_secret and cfg.basic_auth_password
    worker = {k: str(v) for k, v in services(compose)["worker"]["environment"].items()}
    wcfg = load_config({**worker, "SECRETS_DIR": str(secrets_dir)})
    assert wcfg.worker_metrics_port == 9102 and wcfg.gateway_url == "http://nginx:8080"
