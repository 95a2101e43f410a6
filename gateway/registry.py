"""The functions the local gateway hosts: loading handlers in-process, and deployment state.

Each function's ``handler.py`` is loaded through functions-framework's ``create_app`` (exactly as
the OpenFaaS template's ``index.py`` does), so request/response semantics match a container. A
handler built with :func:`minitwitter.http.endpoint` (all of stack.yml's) is then called through
:class:`minitwitter.runtime.DirectEndpoint`, which gives the same answers without Flask's
per-request dispatch (``GATEWAY_DIRECT_CALLS=false`` serves the Flask app instead); any other
handler is served by the Flask app.
functions-framework registers a source as ``sys.modules[<file stem>]`` and appends its folder to
``sys.path``; with fifteen ``handler.py`` files in one process they would overwrite each other and
share same-named helper modules. :func:`load_function` therefore puts the function's folder
first on ``sys.path`` while it loads, and afterwards removes from ``sys.modules`` every module that
came from that folder: the handler keeps its own references, and the next function gets fresh
imports of its own helpers.

Deployment state (deployed or removed, the last FunctionDeployment, replicas, a generation that
bumps on every deploy) lives in PostgreSQL so every gateway process and replica agrees; each
process re-reads it at most every ``GATEWAY_STATE_TTL`` seconds and reloads a function whose
generation changed. Like a real OpenFaaS deploy, a change is therefore visible within moments,
not necessarily on the very next request to another process.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import functions_framework

from minitwitter import db, errors
from minitwitter.config import REPO_ROOT, Config, load_config
from minitwitter.runtime import CrashGuard, DirectEndpoint, endpoint_handler, refreeze_when_due, thaw_replaced_code

from .stack import StackFunction, stack_functions

log = logging.getLogger("minitwitter.gateway")

MAX_FUNCTIONS = 15  # OpenFaaS Community Edition refuses a 16th function
MAX_REPLICAS = 5  # ... and more than 5 replicas
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
CE_FORBIDDEN_LABELS = ("com.openfaas.scale.zero", "com.openfaas.scale.zero-duration",
                       "com.openfaas.scale.target", "com.openfaas.scale.type")
HANDLER_ANNOTATION = "com.minitwitter.handler"
HANDLER_TARGET = "handle"  # the function name in handler.py, as in the template
STATE_SQL = "SELECT name, deployed, generation, spec, replicas, created_at FROM gateway_functions"
#: Settings that say where the platform's services are. In a cluster they come from stack.yml;
#: under the local gateway the gateway's own environment decides them (``make run`` picks the
#: stores), so a deployment's envVars may tune a function but never re-point it elsewhere.
PLATFORM_KEYS = frozenset({
    "DATABASE_URL", "DATABASE_PASSWORD_SECRET", "REDIS_URL", "REDIS_PASSWORD_SECRET", "OLLAMA_HOST",
    "SECRETS_DIR", "TRUSTED_PROXIES", "GATEWAY_URL", "GATEWAY_PORT", "STACK_FILE",
})

_import_lock = threading.Lock()


def load_function(name: str, handler_dir: Path) -> tuple[Any, Any | None]:
    """Build the function's Flask app with functions-framework, isolated from other functions.

    Returns the app guarded by :class:`~minitwitter.runtime.CrashGuard` (what the OpenFaaS
    template serves) and, when the handler is a :func:`minitwitter.http.endpoint`, a
    :class:`~minitwitter.runtime.DirectEndpoint` calling the same handler without Flask's
    dispatch (None otherwise).
    """
    source = handler_dir / "handler.py"
    if not source.is_file():
        raise errors.BadRequest(f"no handler found for function {name}", {"handler": str(source)})
    folder = handler_dir.resolve()
    with _import_lock:
        before = set(sys.modules)
        saved_path = list(sys.path)
        sys.path.insert(0, str(folder))
        try:
            app = CrashGuard(functions_framework.create_app(
                target=HANDLER_TARGET, source=str(source), signature_type="http"))
            handler = endpoint_handler(sys.modules.get(source.stem), HANDLER_TARGET)
            return app, DirectEndpoint(handler) if handler is not None else None
        finally:
            sys.path[:] = saved_path
            for mod_name in set(sys.modules) - before:
                module_file = getattr(sys.modules[mod_name], "__file__", None) or ""
                if mod_name == source.stem or (module_file and Path(module_file).resolve().is_relative_to(folder)):
                    del sys.modules[mod_name]


@dataclass
class Hosted:
    """One deployed function as this process holds it."""

    name: str
    generation: int
    spec: dict[str, Any]
    replicas: int
    created_at: datetime
    app: Any
    config: Config | None


def validate_deployment(spec: Any) -> dict[str, Any]:
    """Check a FunctionDeployment the way faas-netes CE does; return it normalised."""
    if not isinstance(spec, dict):
        raise errors.BadRequest("validation failed: body must be a FunctionDeployment object")
    service = spec.get("service")
    if not service:
        raise errors.BadRequest("validation failed: service: is required")
    if not isinstance(service, str) or not DNS_LABEL.match(service) or len(service) > 63:
        raise errors.BadRequest(f"validation failed: service: ({service}) is invalid, must be a valid DNS entry")
    if not spec.get("image"):
        raise errors.BadRequest("validation failed: image: is required")
    for key in ("envVars", "labels", "annotations", "limits", "requests"):
        value = spec.get(key) or {}
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            raise errors.BadRequest(f"validation failed: {key}: must be an object of strings")
        spec[key] = value
    labels = spec["labels"]
    for label in CE_FORBIDDEN_LABELS:
        if label in labels:
            raise errors.BadRequest(f"label {label} is not available in OpenFaaS Community Edition")
    for label in ("com.openfaas.scale.min", "com.openfaas.scale.max"):
        if label in labels:
            try:
                value = int(labels[label])
            except ValueError:
                raise errors.BadRequest(f"label {label} must be an integer") from None
            if value > MAX_REPLICAS or value < 0:
                raise errors.BadRequest(
                    f"label {label} must be at most {MAX_REPLICAS} in OpenFaaS Community Edition")
    spec["secrets"] = [str(s) for s in spec.get("secrets") or []]
    return spec


def _ts(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Registry:
    """Deployed functions, shared through PostgreSQL, loaded lazily in each process."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.namespace = config.function_namespace
        self.stack: dict[str, StackFunction] = stack_functions(config.stack_file)
        self._hosted: dict[str, Hosted] = {}
        self._state: dict[str, tuple[bool, int, dict[str, Any], int, datetime]] = {}
        self._checked = 0.0
        self._lock = threading.Lock()
        self._refreshing = threading.Lock()
        self._seeded = False

    # -- state ------------------------------------------------------------------------------
    def seed(self, *, redeploy: bool = False) -> None:
        """Record every stack.yml function as deployed.

        Without ``redeploy`` only functions with no record yet are added (an operator's
        ``faas-cli remove`` stays in force); ``redeploy`` also redeploys removed ones.
        """
        if redeploy:
            self._record(self.stack.values(), redeploy=True)
        self._seeded = False
        self.refresh(force=True)

    def _record(self, functions: Iterable[StackFunction], *, redeploy: bool) -> None:
        on_conflict = ("DO UPDATE SET deployed = true, spec = EXCLUDED.spec,"
                       " generation = gateway_functions.generation + 1, updated_at = now()"
                       if redeploy else "DO NOTHING")
        for fn in functions:
            db.run("INSERT INTO gateway_functions (name, namespace, spec) VALUES (:n, :ns, :s::jsonb)"
                   " ON CONFLICT (name) " + on_conflict,  # one of two fixed clauses
                   n=fn.name, ns=self.namespace, s=json.dumps(fn.deployment(self.namespace)))

    def refresh(self, *, force: bool = False) -> None:
        """Re-read the shared state if it is older than the TTL (keeps the old one if PG is down).

        The first successful read also records stack.yml functions that have no record yet, so a
        gateway that started while PostgreSQL was down still comes up with its functions.
        """
        now = time.monotonic()
        if not force and now - self._checked < self.config.gateway_state_ttl:
            return
        # One thread refreshes; the others keep serving the current state instead of each
        # opening a connection and re-reading the same rows at the same moment.
        if not self._refreshing.acquire(blocking=force):
            return
        try:
            rows = db.run(STATE_SQL)
            if not self._seeded:
                known = {row[0] for row in rows}
                missing = [fn for name, fn in self.stack.items() if name not in known]
                if missing:
                    self._record(missing, redeploy=False)
                    rows = db.run(STATE_SQL)
                self._seeded = True
        except errors.MinitwitterError:
            if force:
                raise
            self._checked = now  # try again after the TTL; serve the last known state meanwhile
            return
        finally:
            self._refreshing.release()
        state = {}
        for name, deployed, generation, spec, replicas, created in rows:
            spec = spec if isinstance(spec, dict) else json.loads(spec)
            state[name] = (deployed, generation, spec, replicas, created)
        with self._lock:
            self._state = state
            self._checked = now

    def handler_dir(self, name: str, spec: dict[str, Any]) -> Path:
        """Where the function's code lives: its stack.yml handler or the handler annotation."""
        annotated = (spec.get("annotations") or {}).get(HANDLER_ANNOTATION)
        if annotated:
            path = Path(annotated)
            return (path if path.is_absolute() else REPO_ROOT / path).resolve()
        if name in self.stack:
            return self.stack[name].handler
        raise errors.BadRequest(
            f"no handler found for function {name}: it is not in the stack file and has no "
            f"{HANDLER_ANNOTATION} annotation")

    def get(self, name: str) -> Hosted | None:
        """The deployed function ``name`` loaded in this process, or None."""
        self.refresh()
        state = self._state.get(name)
        if state is None or not state[0]:
            return None
        _, generation, spec, replicas, created = state
        hosted = self._hosted.get(name)
        if hosted is None or hosted.generation != generation:
            with self._lock:
                hosted = self._hosted.get(name)
                if hosted is None or hosted.generation != generation:
                    replaced = hosted is not None
                    hosted = self._load(name, generation, spec, replicas, created)
                    self._hosted[name] = hosted
                    if replaced:
                        thaw_replaced_code()  # the old code can go
        refreeze_when_due()
        hosted.replicas = replicas
        return hosted

    def _load(self, name: str, generation: int, spec: dict[str, Any], replicas: int,
              created: datetime) -> Hosted:
        flask_app, direct = load_function(name, self.handler_dir(name, spec))
        app = direct if direct is not None and self.config.gateway_direct_calls else flask_app
        env_vars = {k: v for k, v in (spec.get("envVars") or {}).items() if k not in PLATFORM_KEYS}
        config = load_config({**os.environ, **env_vars}) if env_vars else None
        log.info("function loaded", extra={"function": name, "generation": generation})
        return Hosted(name, generation, spec, replicas, created, app, config)

    # -- system API -------------------------------------------------------------------------
    def deploy(self, spec: Any, *, create: bool) -> None:
        """PUT (update, 404 when absent) or POST (create) a FunctionDeployment."""
        spec = validate_deployment(spec)
        name = spec["service"]
        spec["namespace"] = spec.get("namespace") or self.namespace
        if spec["namespace"] != self.namespace:
            raise errors.BadRequest(f"namespace {spec['namespace']} is not available; use {self.namespace}")
        # Refuse code we cannot find before recording anything (and prove it loads).
        load_function(name, self.handler_dir(name, spec))
        with db.transaction():
            db.run("LOCK TABLE gateway_functions IN SHARE ROW EXCLUSIVE MODE")
            row = db.one("SELECT deployed FROM gateway_functions WHERE name = :n", n=name)
            exists = bool(row and row[0])
            if not create and not exists:
                raise errors.NotFound(f"function {name} not found")
            if not exists:
                count = db.scalar("SELECT count(*) FROM gateway_functions WHERE deployed")
                if count >= MAX_FUNCTIONS:
                    raise errors.BadRequest(
                        f"OpenFaaS Community Edition allows at most {MAX_FUNCTIONS} functions")
            db.run(
                "INSERT INTO gateway_functions (name, namespace, spec) VALUES (:n, :ns, :s::jsonb)"
                " ON CONFLICT (name) DO UPDATE SET deployed = true, spec = EXCLUDED.spec,"
                " generation = gateway_functions.generation + 1, updated_at = now(),"
                " created_at = CASE WHEN gateway_functions.deployed THEN gateway_functions.created_at"
                " ELSE now() END",
                n=name, ns=self.namespace, s=json.dumps(spec))
        self.refresh(force=True)

    def remove(self, name: str) -> None:
        """Take a function out until it is deployed again."""
        rows = db.run("UPDATE gateway_functions SET deployed = false, updated_at = now()"
                      " WHERE name = :n AND deployed RETURNING name", n=name)
        if not rows:
            raise errors.NotFound(f"function {name} not found")
        self.refresh(force=True)

    def scale(self, name: str, replicas: int) -> None:
        """Set the desired replica count, clamped to CE's [1, 5] like the CE gateway."""
        replicas = max(1, min(MAX_REPLICAS, replicas))
        rows = db.run("UPDATE gateway_functions SET replicas = :r, updated_at = now()"
                      " WHERE name = :n AND deployed RETURNING name", n=name, r=replicas)
        if not rows:
            raise errors.NotFound(f"function {name} not found")
        self.refresh(force=True)

    def deployed_names(self) -> list[str]:
        self.refresh()
        return sorted(n for n, s in self._state.items() if s[0])

    def status(self, name: str, invocations: float | None = None) -> dict[str, Any] | None:
        """FunctionStatus JSON as OpenFaaS returns it (numeric zero fields omitted)."""
        self.refresh()
        state = self._state.get(name)
        if state is None or not state[0]:
            return None
        _, _, spec, replicas, created = state
        out: dict[str, Any] = {
            "name": name,
            "image": spec.get("image", ""),
            "namespace": self.namespace,
            "envProcess": spec.get("envProcess", "python index.py"),
            "envVars": spec.get("envVars") or {},
            "constraints": spec.get("constraints") or [],
            "secrets": spec.get("secrets") or [],
            "labels": spec.get("labels") or {},
            "annotations": spec.get("annotations") or {},
            "limits": spec.get("limits") or {},
            "requests": spec.get("requests") or {},
            "readOnlyRootFilesystem": bool(spec.get("readOnlyRootFilesystem", False)),
            "replicas": replicas,
            "availableReplicas": replicas,
            "createdAt": _ts(created),
        }
        if invocations:
            out["invocationCount"] = invocations
        return out
