"""deploy/kubernetes: what runs next to OpenFaaS, checked without a cluster.

Every object is validated field by field against the Kubernetes API types (the official Python
client's models: unknown fields, wrong types and missing required fields fail), and checked for
agreement with stack.yml (service hosts, model, secrets, image naming), with docker-compose.yml
(the same pinned images) and with gateway/Dockerfile (user, roles, health check).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes.client as k8s
import pytest
import yaml

from gateway.stack import load_stack
from minitwitter.config import REPO_ROOT, SECRET_NAMES

pytestmark = pytest.mark.no_stores

MANIFESTS = REPO_ROOT / "deploy" / "kubernetes"
NAMESPACE = "minitwitter"
SECRET = "minitwitter-secrets"
IMAGE_NAME = "minitwitter-gateway"
#: The user gateway/Dockerfile runs as.
IMAGE_UID = 1000
_PRIMITIVES = {"str": str, "int": int, "bool": bool, "float": (int, float), "object": object,
               "datetime": str, "date": str, "bytes": str}


# --- loading ---------------------------------------------------------------------------------

def manifest_files() -> list[Path]:
    return sorted(p for p in MANIFESTS.glob("*.yaml") if p.name != "kustomization.yaml")


def load_objects() -> list[dict[str, Any]]:
    objects = []
    for path in manifest_files():
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                doc["__file__"] = path.name
                objects.append(doc)
    return objects


@pytest.fixture(scope="module")
def objects() -> list[dict[str, Any]]:
    return load_objects()


def find(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    matches = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind}/{name}, found {len(matches)}"
    return matches[0]


def pod_spec(obj: dict[str, Any]) -> dict[str, Any] | None:
    if obj["kind"] in {"Deployment", "StatefulSet", "Job", "DaemonSet"}:
        return obj["spec"]["template"]["spec"]
    return None


def stack_defaults() -> dict[str, Any]:
    """stack.yml as faas-cli reads it with REGISTRY/TAG unset (their defaults apply)."""
    return load_stack(REPO_ROOT / "stack.yml", {})


def compose_services() -> dict[str, Any]:
    return yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())["services"]


# --- validation against the API types --------------------------------------------------------

def validate(value: Any, type_name: str, path: str, problems: list[str]) -> None:
    """Check ``value`` against a kubernetes client model type (recursively)."""
    if type_name in _PRIMITIVES:
        expected = _PRIMITIVES[type_name]
        if (type_name == "float" and isinstance(value, bool)) or not isinstance(value, expected):
            problems.append(f"{path}: expected {type_name}, got {type(value).__name__} {value!r}")
        return
    if type_name.lower().startswith("list["):
        if not isinstance(value, list):
            problems.append(f"{path}: expected a list")
            return
        for i, item in enumerate(value):
            validate(item, type_name[5:-1], f"{path}[{i}]", problems)
        return
    if type_name.lower().startswith(("dict(", "dict[")):
        if not isinstance(value, dict):
            problems.append(f"{path}: expected a mapping")
            return
        inner = type_name[5:-1].split(", ", 1)[1]
        for key, item in value.items():
            validate(item, inner, f"{path}.{key}", problems)
        return
    model = getattr(k8s, type_name)
    if not isinstance(value, dict):
        problems.append(f"{path}: expected a {type_name} mapping")
        return
    by_json = {json_name: attr for attr, json_name in model.attribute_map.items()}
    for key, item in value.items():
        if key not in by_json:
            problems.append(f"{path}.{key}: unknown field of {type_name}")
            continue
        validate(item, model.openapi_types[by_json[key]], f"{path}.{key}", problems)


def model_for(obj: dict[str, Any]) -> str:
    group_version = obj["apiVersion"].rsplit("/", 1)[-1]
    return f"{group_version.capitalize()}{obj['kind']}"


def test_every_object_is_a_valid_kubernetes_object(objects: list[dict[str, Any]]) -> None:
    assert manifest_files(), "no manifests"
    client = k8s.ApiClient()
    for obj in objects:
        body = {k: v for k, v in obj.items() if k != "__file__"}
        where = f"{obj['__file__']}: {obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
        assert {"apiVersion", "kind", "metadata"} <= set(body), where
        type_name = model_for(obj)
        assert hasattr(k8s, type_name), f"{where}: unknown kind {obj['apiVersion']} {obj['kind']}"
        problems: list[str] = []
        validate(body, type_name, where, problems)
        assert not problems, problems
        # Required fields: the client's models refuse None for them.
        client._ApiClient__deserialize(body, type_name)  # noqa: SLF001 - public API has no validator
        assert obj["metadata"]["name"]
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == NAMESPACE, where
        assert obj["metadata"]["labels"]["app.kubernetes.io/part-of"] == "minitwitter", where


def test_the_validation_catches_mistakes(objects: list[dict[str, Any]]) -> None:
    worker = {k: v for k, v in find(objects, "Deployment", "queue-worker").items() if k != "__file__"}
    import copy

    broken = copy.deepcopy(worker)
    broken["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["exec"]["comand"] = ["x"]
    broken["spec"]["replicas"] = "two"
    problems: list[str] = []
    validate(broken, "V1Deployment", "worker", problems)
    assert len(problems) == 2, problems
    missing = copy.deepcopy(worker)
    del missing["spec"]["template"]["spec"]["containers"][0]["name"]
    with pytest.raises(ValueError, match="name"):
        k8s.ApiClient()._ApiClient__deserialize(missing, "V1Deployment")  # noqa: SLF001


def test_kustomization_covers_every_manifest(objects: list[dict[str, Any]]) -> None:
    kustomization = yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text())
    assert kustomization["namespace"] == NAMESPACE
    assert sorted(kustomization["resources"]) == [p.name for p in manifest_files()]
    images = {i["name"]: i for i in kustomization["images"]}
    worker_image = find(objects, "Deployment", "queue-worker")["spec"]["template"]["spec"]["containers"][0]["image"]
    assert worker_image.rsplit(":", 1)[0] in images
    kubectl = shutil.which("kubectl")
    if kubectl:  # kustomize built into kubectl renders offline
        rendered = subprocess.run([kubectl, "kustomize", str(MANIFESTS)], capture_output=True, text=True,
                                  timeout=60)
        assert rendered.returncode == 0, rendered.stderr
        names = {(d["kind"], d["metadata"]["name"]) for d in yaml.safe_load_all(rendered.stdout) if d}
        assert names == {(o["kind"], o["metadata"]["name"]) for o in objects}


def test_components_next_to_openfaas(objects: list[dict[str, Any]]) -> None:
    kinds = {(o["kind"], o["metadata"]["name"]) for o in objects}
    assert {("Namespace", NAMESPACE), ("ConfigMap", "minitwitter-config"),
            ("Deployment", "queue-worker"),
            ("Deployment", "ollama"), ("Service", "ollama"), ("PersistentVolumeClaim", "ollama-models"),
            ("Job", "ollama-model-pull"),
            ("StatefulSet", "postgres"), ("Service", "postgres"),
            ("StatefulSet", "redis"), ("Service", "redis")} <= kinds
    assert not [o for o in objects if o["kind"] == "Secret"], "secrets are created from .secrets/, never committed"
    # Services select their pods and target named ports that exist.
    for service in (o for o in objects if o["kind"] == "Service"):
        selector = service["spec"]["selector"]
        pods = [o for o in objects if pod_spec(o) is not None
                and selector.items() <= o["spec"]["template"]["metadata"]["labels"].items()]
        assert len(pods) == 1, service["metadata"]["name"]
        port_names = {p.get("name") for c in pod_spec(pods[0])["containers"] for p in c.get("ports", [])}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in port_names, (service["metadata"]["name"], port)
    # The Ollama pod mounts the claim; the Job pulls through the Service.
    ollama = pod_spec(find(objects, "Deployment", "ollama"))
    assert ollama["volumes"][0]["persistentVolumeClaim"]["claimName"] == "ollama-models"
    assert find(objects, "Deployment", "ollama")["spec"]["strategy"]["type"] == "Recreate"
    job = pod_spec(find(objects, "Job", "ollama-model-pull"))
    assert job["restartPolicy"] == "OnFailure"
    assert job["containers"][0]["command"][:2] == ["ollama", "pull"]
    assert {e["name"]: e["value"] for e in job["containers"][0]["env"]}["OLLAMA_HOST"] == "http://ollama.minitwitter:11434"


def test_containers_have_limits_probes_and_least_privilege(objects: list[dict[str, Any]]) -> None:
    for obj in objects:
        spec = pod_spec(obj)
        if spec is None:
            continue
        name = obj["metadata"]["name"]
        assert spec.get("securityContext", {}).get("seccompProfile", {}).get("type") == "RuntimeDefault", name
        for container in spec["containers"]:
            resources = container["resources"]
            assert {"cpu", "memory"} <= set(resources["limits"]), name
            assert {"cpu", "memory"} <= set(resources["requests"]), name
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False and security["capabilities"]["drop"] == ["ALL"], name
            assert re.fullmatch(r"[\w./-]+:[\w.-]+", container["image"]), container["image"]
            if obj["kind"] != "Job":
                assert container.get("livenessProbe") or container.get("readinessProbe"), name
            if security.get("readOnlyRootFilesystem"):
                mounts = {m["mountPath"] for m in container["volumeMounts"]}
                assert "/tmp" in mounts, f"{name}: read-only root needs a writable /tmp"
    worker = pod_spec(find(objects, "Deployment", "queue-worker"))
    assert worker["securityContext"]["runAsNonRoot"] is True
    assert worker["securityContext"]["runAsUser"] == IMAGE_UID
    assert worker["terminationGracePeriodSeconds"] >= 40


def test_worker_runs_the_gateway_image_as_compose_does(objects: list[dict[str, Any]]) -> None:
    worker = pod_spec(find(objects, "Deployment", "queue-worker"))["containers"][0]
    assert worker["args"] == ["worker"]
    compose_worker = compose_services()["worker"]
    assert worker["livenessProbe"]["exec"]["command"] == compose_worker["healthcheck"]["test"][1:]
    dockerfile = (REPO_ROOT / "gateway" / "Dockerfile").read_text()
    assert f"USER {IMAGE_UID}:{IMAGE_UID}" in dockerfile
    env = {e["name"]: e["value"] for e in worker["env"]}
    assert env["WORKER_METRICS_PORT"] == str(worker["ports"][0]["containerPort"])
    template = find(objects, "Deployment", "queue-worker")["spec"]["template"]
    assert template["metadata"]["annotations"]["prometheus.io/port"] == env["WORKER_METRICS_PORT"]


def test_image_names_are_consistent_with_stack_and_compose(objects: list[dict[str, Any]]) -> None:
    stack = stack_defaults()
    images = [fn["image"] for fn in stack["functions"].values()]
    assert images
    prefixes = {image.rsplit("/", 1)[0] for image in images}
    tags = {image.rsplit(":", 1)[1] for image in images}
    assert len(prefixes) == 1 and len(tags) == 1, (prefixes, tags)
    registry, tag = prefixes.pop(), tags.pop()
    for name, fn in stack["functions"].items():
        assert fn["image"] == f"{registry}/{name}:{tag}", "function images are <registry>/<name>:<tag>"
    worker = pod_spec(find(objects, "Deployment", "queue-worker"))["containers"][0]["image"]
    assert worker == f"{registry}/{IMAGE_NAME}:{tag}"
    assert IMAGE_NAME not in stack["functions"], "the gateway image name must not clash with a function"
    # The raw stack uses the same REGISTRY/TAG variables as docker-compose.yml.
    raw = (REPO_ROOT / "stack.yml").read_text()
    assert "${REGISTRY:-" + registry + "}/" in raw and "${TAG:-" + tag + "}" in raw
    compose_image = "${REGISTRY:-" + registry + "}/" + IMAGE_NAME + ":${TAG:-" + tag + "}"
    assert compose_services()["worker"]["image"] == compose_image
    # Third-party images: one pin, used by both compose and Kubernetes.
    compose_images = {s["image"] for s in compose_services().values()}
    for obj in objects:
        spec = pod_spec(obj)
        for container in spec["containers"] if spec else []:
            if IMAGE_NAME not in container["image"]:
                assert container["image"] in compose_images, container["image"]


def test_services_match_stack_environment(objects: list[dict[str, Any]]) -> None:
    """The functions (stack.yml) reach the stores and Ollama these manifests create."""
    stack = stack_defaults()
    config = find(objects, "ConfigMap", "minitwitter-config")["data"]
    services = {(o["metadata"]["name"], o["metadata"]["namespace"]): {p["port"] for p in o["spec"]["ports"]}
                for o in objects if o["kind"] == "Service"}
    for name, fn in stack["functions"].items():
        env = fn.get("environment") or {}
        for key in ("DATABASE_URL", "REDIS_URL", "OLLAMA_HOST"):
            assert key in env, f"{name}: {key} missing"
            url = urlsplit(env[key])
            service, _, namespace = url.hostname.partition(".")
            assert url.port in services.get((service, namespace or "openfaas-fn"), set()), (name, key, env[key])
            assert env[key] == config[key], f"{key}: stack.yml and the worker's ConfigMap disagree"
        for key in ("DATABASE_PASSWORD_SECRET", "REDIS_PASSWORD_SECRET", "OLLAMA_MODEL", "SENTIMENT_BACKEND"):
            assert env.get(key) == config[key], (name, key)
        for secret in fn.get("secrets") or []:
            assert secret in SECRET_NAMES, (name, secret)
        for key in ("DATABASE_PASSWORD_SECRET", "REDIS_PASSWORD_SECRET"):
            assert env[key] in (fn.get("secrets") or []), f"{name}: {env[key]} is named but not mounted"
    assert config["SENTIMENT_BACKEND"] == "auto"
    job = pod_spec(find(objects, "Job", "ollama-model-pull"))["containers"][0]
    assert job["command"] == ["ollama", "pull", config["OLLAMA_MODEL"]]


def test_secrets_are_the_make_secrets_files(objects: list[dict[str, Any]]) -> None:
    config = find(objects, "ConfigMap", "minitwitter-config")["data"]
    for obj in objects:
        spec = pod_spec(obj)
        if spec is None:
            continue
        mounted: set[str] = set()
        for volume in spec.get("volumes", []):
            if "secret" in volume:
                assert volume["secret"]["secretName"] == SECRET, obj["metadata"]["name"]
                keys = [item["key"] for item in volume["secret"]["items"]]
                assert set(keys) <= set(SECRET_NAMES), keys
                assert all(item["path"] == item["key"] for item in volume["secret"]["items"])
                assert volume["secret"]["defaultMode"] == 0o440
                mounted |= set(keys)
        for container in spec["containers"]:
            for mount in container.get("volumeMounts", []):
                if mount["name"] == "secrets":
                    assert mount["mountPath"] == "/var/openfaas/secrets" and mount["readOnly"] is True
            for env in container.get("env", []):
                assert "value" not in env or not re.search(r"PASSWORD$|_KEY$|TOKEN", env["name"]), env
        if obj["metadata"]["name"] == "queue-worker":
            assert {config["DATABASE_PASSWORD_SECRET"], config["REDIS_PASSWORD_SECRET"],
                    "callback-signing-key"} <= mounted
            assert config["SECRETS_DIR"] == "/var/openfaas/secrets"
    docs = (REPO_ROOT / "docs" / "deploy-openfaas.md").read_text()
    assert f"create secret generic {SECRET}" in docs
    for name in ("postgres-password", "redis-password", "callback-signing-key", "jwt-secret"):
        assert f"faas-cli secret create {name}" in docs or f"--from-file=.secrets/{name}" in docs, name
