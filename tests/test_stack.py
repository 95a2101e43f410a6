"""stack.yml against every rule faas-cli and OpenFaaS Community Edition enforce.

A broken stack must fail here, in CI, not during ``faas-cli up``. The rules (contract doc §3 and
§7): faas-cli's parse checks (``version``, ``provider.name``, field types), at most 15 functions
(CE), function names that are DNS labels of at most 63 characters (the provider's validation),
a language template under ``./template/<lang>/``, a handler folder with ``handle``, an image,
``configuration.copy`` paths inside the project, scaling labels CE accepts (min/max 1..5,
min <= max, factor 1..100, no Pro-only labels), secrets that are files ``make secrets``
generates, no secret values in ``environment``, and Kubernetes resource quantities. The negative
tests feed deliberately broken stacks to :func:`stack_problems` and check each rule fires.
"""

from __future__ import annotations

import ast
import copy
import re
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import pytest
import yaml

from minitwitter.config import REPO_ROOT, SECRET_NAMES

from .faas_cli import (
    PROVIDER_NAME,
    VALID_VERSIONS,
    StackError,
    bare_variables,
    is_valid_template,
    load_stack,
    parse_stack_text,
    path_in_scope,
)

pytestmark = pytest.mark.no_stores

STACK_FILE = REPO_ROOT / "stack.yml"
EXPECTED_FUNCTIONS = (
    "register", "login", "get-user", "update-user", "follow-user", "create-post", "get-post",
    "update-post", "delete-post", "list-posts", "home-timeline", "like-post", "add-comment",
    "list-comments", "analyze-sentiment",
)
MAX_FUNCTIONS = 15  # CE refuses a 16th function
MAX_REPLICAS = 5  # CE hard maximum
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
SCALE_MIN, SCALE_MAX, SCALE_FACTOR = ("com.openfaas.scale.min", "com.openfaas.scale.max",
                                      "com.openfaas.scale.factor")
CE_FORBIDDEN_LABELS = ("com.openfaas.scale.zero", "com.openfaas.scale.zero-duration",
                       "com.openfaas.scale.target", "com.openfaas.scale.target-proportion",
                       "com.openfaas.scale.type")
#: The gateway's own credentials are never mounted into a function.
GATEWAY_ONLY_SECRETS = ("basic-auth-user", "basic-auth-password")
SECRET_LOOKING_KEY = re.compile(r"PASSWORD|SECRET|TOKEN|KEY", re.IGNORECASE)
URL_WITH_PASSWORD = re.compile(r"://[^/@\s:]*:[^/@\s]+@")
RESOURCE_KEYS = ("memory", "cpu")
IMAGE_REF = re.compile(r"^[a-z0-9]+([._-][a-z0-9]+)*(:[0-9]+)?(/[a-z0-9]+([._-][a-z0-9]+)*)*"
                       r"(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(@sha256:[a-f0-9]{64})?$")
_QUANTITY = re.compile(r"^(?P<num>[0-9]+(\.[0-9]*)?|\.[0-9]+)(?P<suffix>[a-zA-Z]*|[eE][-+]?[0-9]+)$")
_SUFFIX = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
           "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}


# --- the checker ------------------------------------------------------------------------------

def quantity(value: str, kind: str) -> Decimal:
    """A Kubernetes resource quantity in base units (bytes or cores); ValueError if invalid.

    Memory refuses the ``m`` (milli) suffix: ``128m`` is a valid quantity of 0.128 bytes and a
    classic typo for ``128Mi``. CPU takes plain cores or millicores.
    """
    match = _QUANTITY.match(value.strip())
    if not match:
        raise ValueError(f"{value!r} is not a resource quantity")
    number, suffix = Decimal(match["num"]), match["suffix"]
    if kind == "cpu":
        if suffix not in ("", "m"):
            raise ValueError(f"cpu {value!r} must be cores (0.5) or millicores (500m)")
        return number / 1000 if suffix == "m" else number
    if suffix in _SUFFIX:
        return number * _SUFFIX[suffix]
    if suffix[:1] in ("e", "E"):
        try:
            return number * Decimal(10) ** int(suffix[1:])
        except (ValueError, InvalidOperation):
            raise ValueError(f"{value!r} is not a resource quantity") from None
    raise ValueError(f"memory {value!r} needs a byte suffix such as Mi or Gi")


def defines_handle(handler_py: Path) -> bool:
    """True when the file parses and defines a top-level ``handle`` function."""
    try:
        tree = ast.parse(handler_py.read_text(encoding="utf-8"), filename=str(handler_py))
    except (OSError, SyntaxError):
        return False
    return any(isinstance(node, ast.FunctionDef) and node.name == "handle" for node in tree.body)


def _labels_problems(name: str, labels: dict[str, Any]) -> list[str]:
    problems: list[str] = []
    for label in CE_FORBIDDEN_LABELS:
        if label in labels:
            problems.append(f"{name}: label {label} is not available in OpenFaaS CE")
    bounds: dict[str, int] = {}
    for label in (SCALE_MIN, SCALE_MAX):
        if label not in labels:
            problems.append(f"{name}: label {label} is required")
            continue
        try:
            value = int(str(labels[label]))
        except ValueError:
            problems.append(f"{name}: label {label} must be an integer, got {labels[label]!r}")
            continue
        if not 1 <= value <= MAX_REPLICAS:
            problems.append(f"{name}: label {label} must be within 1..{MAX_REPLICAS}, got {value}")
        bounds[label] = value
    if len(bounds) == 2 and bounds[SCALE_MIN] > bounds[SCALE_MAX]:
        problems.append(f"{name}: {SCALE_MIN} ({bounds[SCALE_MIN]}) exceeds {SCALE_MAX} ({bounds[SCALE_MAX]})")
    if SCALE_FACTOR in labels:
        try:
            factor = int(str(labels[SCALE_FACTOR]))
        except ValueError:
            factor = -1
        if not 1 <= factor <= 100:
            problems.append(f"{name}: label {SCALE_FACTOR} must be within 1..100, got {labels[SCALE_FACTOR]!r}")
    return problems


def _resources_problems(name: str, spec: dict[str, Any]) -> list[str]:
    problems: list[str] = []
    parsed: dict[str, dict[str, Decimal]] = {}
    for field in ("limits", "requests"):
        resources = spec.get(field)
        if not resources:
            problems.append(f"{name}: {field} (memory and cpu) are required")
            continue
        parsed[field] = {}
        for key, value in resources.items():
            if key not in RESOURCE_KEYS:
                problems.append(f"{name}: {field}.{key} is not a stack field (memory, cpu)")
                continue
            try:
                parsed[field][key] = quantity(str(value), key)
            except ValueError as exc:
                problems.append(f"{name}: {field}.{key}: {exc}")
        for key in RESOURCE_KEYS:
            if key not in resources:
                problems.append(f"{name}: {field}.{key} is required")
    for key in RESOURCE_KEYS:
        limit = parsed.get("limits", {}).get(key)
        request = parsed.get("requests", {}).get(key)
        if limit is not None and request is not None and request > limit:
            problems.append(f"{name}: requests.{key} must be less than or equal to limits.{key}")
    return problems


def _environment_problems(name: str, env: dict[str, Any], secrets: list[str]) -> list[str]:
    problems: list[str] = []
    for key, value in env.items():
        text = "" if value is None else str(value)
        if SECRET_LOOKING_KEY.search(key) and text not in secrets:
            # Only a reference to a mounted secret file (e.g. DATABASE_PASSWORD_SECRET:
            # postgres-password) may carry such a name; a value would be a leaked secret.
            problems.append(f"{name}: environment {key} looks like a secret; use `secrets`")
        if URL_WITH_PASSWORD.search(text):
            problems.append(f"{name}: environment {key} embeds a password in a URL")
    return problems


def stack_problems(doc: dict[str, Any], project_dir: Path, *, check_handlers: bool = True) -> list[str]:
    """Every rule violation of a parsed stack (empty list: faas-cli and OpenFaaS CE accept it)."""
    problems: list[str] = []
    if doc.get("version") not in VALID_VERSIONS:
        problems.append(f"version must be one of {list(VALID_VERSIONS)}, got {doc.get('version')!r}")
    provider = doc.get("provider") or {}
    if provider.get("name") != PROVIDER_NAME:
        problems.append(f"provider.name must be {PROVIDER_NAME!r}")
    if not re.match(r"^https?://[^\s/]+", str(provider.get("gateway") or "")):
        problems.append("provider.gateway must be an http(s) URL")
    config = doc.get("configuration") or {}
    declared_templates = {t.get("name") for t in config.get("templates") or []}
    for path in config.get("copy") or []:
        try:
            absolute = path_in_scope(path, project_dir)
        except StackError as exc:
            problems.append(f"configuration.copy: {exc}")
            continue
        if not absolute.exists():
            problems.append(f"configuration.copy: {path} does not exist")
    functions: dict[str, Any] = doc.get("functions") or {}
    if not functions:
        problems.append("the stack has no functions")
    if len(functions) > MAX_FUNCTIONS:
        problems.append(f"{len(functions)} functions: OpenFaaS CE allows at most {MAX_FUNCTIONS}")
    for name, spec in functions.items():
        spec = spec or {}
        if not DNS_LABEL.match(name) or len(name) > 63:
            problems.append(f"{name}: a function name must be a DNS label (a-z, 0-9, '-', at most 63)")
        lang = spec.get("lang")
        if not lang:
            problems.append(f"{name}: lang is required")
        else:
            if not is_valid_template(project_dir, lang):
                problems.append(f"{name}: no template {lang} at ./template/{lang}/template.yml")
            if lang not in declared_templates:
                problems.append(f"{name}: lang {lang} is not listed in configuration.templates")
        handler = spec.get("handler")
        if not handler:
            problems.append(f"{name}: handler is required")
        elif check_handlers:
            handler_py = project_dir / handler / "handler.py"
            if not handler_py.is_file():
                problems.append(f"{name}: handler folder {handler} has no handler.py")
            elif not defines_handle(handler_py):
                problems.append(f"{name}: {handler}/handler.py does not define handle(request)")
        image = str(spec.get("image") or "")
        if not image:
            problems.append(f"{name}: image is required")
        elif not IMAGE_REF.match(image):
            problems.append(f"{name}: image {image!r} is not a valid image reference")
        problems += _labels_problems(name, spec.get("labels") or {})
        secrets = list(spec.get("secrets") or [])
        for secret in secrets:
            if secret not in SECRET_NAMES:
                problems.append(f"{name}: secret {secret} is not a file `make secrets` generates")
            elif secret in GATEWAY_ONLY_SECRETS:
                problems.append(f"{name}: secret {secret} belongs to the gateway, not a function")
        if len(set(secrets)) != len(secrets):
            problems.append(f"{name}: secrets are listed twice")
        problems += _environment_problems(name, spec.get("environment") or {}, secrets)
        problems += _resources_problems(name, spec)
    return problems


# --- the real stack ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def stack() -> dict[str, Any]:
    return load_stack(STACK_FILE, {})


def test_stack_parses_like_faas_cli(stack: dict[str, Any]) -> None:
    assert stack["version"] == "1.0"
    assert stack["provider"] == {"name": "openfaas", "gateway": "http://127.0.0.1:8080"}
    assert stack["configuration"]["templates"] == [{"name": "python3-ff"}]
    assert stack["configuration"]["copy"] == ["./shared"]


def test_stack_passes_every_rule_but_handlers(stack: dict[str, Any]) -> None:
    assert stack_problems(stack, REPO_ROOT, check_handlers=False) == []


def test_every_handler_exists_and_defines_handle(stack: dict[str, Any]) -> None:
    """Passes once every function's handler has been written."""
    problems = [p for p in stack_problems(stack, REPO_ROOT) if "handler" in p]
    assert problems == []


def test_stack_lists_exactly_the_fifteen_functions(stack: dict[str, Any]) -> None:
    assert tuple(stack["functions"]) == EXPECTED_FUNCTIONS
    for name, spec in stack["functions"].items():
        assert spec["lang"] == "python3-ff"
        assert spec["handler"] == f"./functions/{name}"
        assert spec["image"] == f"ghcr.io/minitwitter/{name}:latest"


def test_registry_tag_and_gateway_come_from_the_environment() -> None:
    env = {"REGISTRY": "registry.example.com:5000/team", "TAG": "1.2.3",
           "OPENFAAS_URL": "https://faas.example.com"}
    doc = load_stack(STACK_FILE, env)
    assert doc["provider"]["gateway"] == "https://faas.example.com"
    assert doc["functions"]["create-post"]["image"] == "registry.example.com:5000/team/create-post:1.2.3"
    assert stack_problems(doc, REPO_ROOT, check_handlers=False) == []


def test_no_bare_variables_that_only_faas_cli_would_expand() -> None:
    assert bare_variables(STACK_FILE.read_text(encoding="utf-8")) == []


def test_functions_share_one_environment_and_no_secret_values(stack: dict[str, Any]) -> None:
    envs = {name: spec["environment"] for name, spec in stack["functions"].items()}
    base = envs["register"]
    for name, env in envs.items():
        assert {k: v for k, v in env.items() if k in base} == base, name
    assert base["DATABASE_URL"].startswith("postgresql://") and "@" in base["DATABASE_URL"]
    assert base["REDIS_URL"].startswith("redis://")
    # Passwords arrive as secret files named by the environment, never as values.
    assert base["DATABASE_PASSWORD_SECRET"] == "postgres-password"
    assert base["REDIS_PASSWORD_SECRET"] == "redis-password"
    values = " ".join(str(v) for env in envs.values() for v in env.values())
    for secret_file in (REPO_ROOT / ".secrets").glob("*"):
        content = secret_file.read_text(encoding="utf-8").strip()
        if len(content) >= 12:
            assert content not in values, secret_file.name


def test_every_function_mounts_the_secrets_it_needs(stack: dict[str, Any]) -> None:
    for name, spec in stack["functions"].items():
        assert {"jwt-secret", "postgres-password", "redis-password"} <= set(spec["secrets"]), name
    for name in ("create-post", "update-post", "add-comment"):
        assert "callback-signing-key" in stack["functions"][name]["secrets"]


def test_template_declares_the_language_the_stack_uses() -> None:
    template = yaml.safe_load((REPO_ROOT / "template" / "python3-ff" / "template.yml").read_text())
    assert template["language"] == "python3-ff"
    assert template["fprocess"] == "python index.py"
    assert (REPO_ROOT / "template").is_symlink()
    assert (REPO_ROOT / "template").readlink() == Path("templates")


# --- faas-cli's parse errors ------------------------------------------------------------------

MINIMAL = """\
version: {version}
provider:
  name: {provider}
  gateway: http://127.0.0.1:8080
functions:
  fn:
    lang: python3-ff
    handler: ./fn
    image: fn:latest
"""


@pytest.mark.parametrize(("version", "provider", "message"), [
    ("1.0", "openfaas", None),
    ("2.0", "openfaas", "only valid versions"),
    ("1", "openfaas", "only valid versions"),
    ("1.00", "openfaas", "only valid versions"),
    ("1.0", "faas", 'is the only valid "provider.name"'),
    ("1.0", "''", 'is the only valid "provider.name"'),
])
def test_faas_cli_parse_rules(version: str, provider: str, message: str | None) -> None:
    text = MINIMAL.format(version=version, provider=provider)
    if message is None:
        assert parse_stack_text(text)["version"] == "1.0"
    else:
        with pytest.raises(StackError, match=re.escape(message)):
            parse_stack_text(text)


@pytest.mark.parametrize(("field", "value", "message"), [
    ("environment", "{A: {nested: 1}}", "must map names to scalar values"),
    ("secrets", "jwt-secret", "must be a list of strings"),
    ("labels", "[a, b]", "must map names to scalar values"),
    ("limits", "512Mi", "must be a mapping with memory/cpu"),
    ("readonly_root_filesystem", "maybe", "must be true or false"),
])
def test_faas_cli_type_errors(field: str, value: str, message: str) -> None:
    text = MINIMAL.format(version="1.0", provider="openfaas") + f"    {field}: {value}\n"
    with pytest.raises(StackError, match=re.escape(message)):
        parse_stack_text(text)


def test_scalars_stay_literal_and_substitution_applies() -> None:
    text = MINIMAL.format(version="1.0", provider="openfaas") + (
        "    labels:\n      com.openfaas.scale.max: 5\n"
        "    environment:\n      A: ${A:-fallback}\n      B: ${B}\n")
    doc = parse_stack_text(text, {"B": "set"})
    fn = doc["functions"]["fn"]
    assert fn["labels"]["com.openfaas.scale.max"] == "5"
    assert fn["environment"] == {"A": "fallback", "B": "set"}


# --- each rule fires on a broken stack --------------------------------------------------------

@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A minimal valid project: the real template, one handler, a shared folder."""
    (tmp_path / "template").symlink_to(REPO_ROOT / "templates")
    (tmp_path / "shared").mkdir()
    handler = tmp_path / "functions" / "fn"
    handler.mkdir(parents=True)
    (handler / "handler.py").write_text("def handle(request):\n    return 'ok'\n")
    return tmp_path


def valid_doc() -> dict[str, Any]:
    return {
        "version": "1.0",
        "provider": {"name": "openfaas", "gateway": "http://127.0.0.1:8080"},
        "configuration": {"templates": [{"name": "python3-ff"}], "copy": ["./shared"]},
        "functions": {"fn": {
            "lang": "python3-ff", "handler": "./functions/fn", "image": "ghcr.io/x/fn:latest",
            "environment": {"LOG_LEVEL": "INFO", "DATABASE_PASSWORD_SECRET": "postgres-password"},
            "secrets": ["jwt-secret", "postgres-password"],
            "labels": {SCALE_MIN: "1", SCALE_MAX: "5", SCALE_FACTOR: "20"},
            "limits": {"memory": "256Mi", "cpu": "500m"},
            "requests": {"memory": "64Mi", "cpu": "0.05"},
        }},
    }


def _fn(doc: dict[str, Any]) -> dict[str, Any]:
    return doc["functions"]["fn"]


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(doc: dict[str, Any]) -> None:
        target = doc
        *parents, last = path.split("/")
        for key in parents:
            target = target[key]
        if value is _DELETE:
            del target[last]
        else:
            target[last] = value
    return mutate


_DELETE = object()


def _many_functions(doc: dict[str, Any]) -> None:
    for i in range(MAX_FUNCTIONS):
        doc["functions"][f"fn{i}"] = copy.deepcopy(_fn(doc))


def _rename(new: str) -> Callable[[dict[str, Any]], None]:
    def mutate(doc: dict[str, Any]) -> None:
        doc["functions"] = {new: _fn(doc)}
    return mutate


BROKEN: list[tuple[str, Callable[[dict[str, Any]], None], str]] = [
    ("version", _set("version", "2.0"), "version must be"),
    ("version missing", _set("version", _DELETE), "version must be"),
    ("provider", _set("provider/name", "faas"), "provider.name must be"),
    ("gateway", _set("provider/gateway", "127.0.0.1:8080"), "provider.gateway"),
    ("16 functions", _many_functions, "at most 15"),
    ("no functions", _set("functions", {}), "no functions"),
    ("uppercase name", _rename("Create-Post"), "DNS label"),
    ("underscore name", _rename("create_post"), "DNS label"),
    ("long name", _rename("a" * 64), "DNS label"),
    ("trailing dash", _rename("post-"), "DNS label"),
    ("lang missing", _set("functions/fn/lang", _DELETE), "lang is required"),
    ("unknown template", _set("functions/fn/lang", "python3-http"), "no template python3-http"),
    ("template not declared", _set("configuration/templates", []), "not listed in configuration.templates"),
    ("handler missing", _set("functions/fn/handler", _DELETE), "handler is required"),
    ("handler folder absent", _set("functions/fn/handler", "./functions/nope"), "has no handler.py"),
    ("image missing", _set("functions/fn/image", _DELETE), "image is required"),
    ("image invalid", _set("functions/fn/image", "Bad Image:latest"), "not a valid image reference"),
    ("copy outside", _set("configuration/copy", ["../elsewhere"]),  # outside-on-purpose
     "outside of the build context"),
    ("copy whole project", _set("configuration/copy", ["."]), "equal the entire project"),
    ("copy absent", _set("configuration/copy", ["./missing"]), "does not exist"),
    ("scale.min missing", _set("functions/fn/labels", {SCALE_MAX: "5"}), f"{SCALE_MIN} is required"),
    ("scale.max above CE", _set(f"functions/fn/labels/{SCALE_MAX}", "6"), "within 1..5"),
    ("scale.min zero", _set(f"functions/fn/labels/{SCALE_MIN}", "0"), "within 1..5"),
    ("scale.max not int", _set(f"functions/fn/labels/{SCALE_MAX}", "five"), "must be an integer"),
    ("min above max", _set("functions/fn/labels", {SCALE_MIN: "4", SCALE_MAX: "2"}), "exceeds"),
    ("factor zero", _set(f"functions/fn/labels/{SCALE_FACTOR}", "0"), "within 1..100"),
    ("factor above 100", _set(f"functions/fn/labels/{SCALE_FACTOR}", "101"), "within 1..100"),
    ("scale.zero", _set("functions/fn/labels/com.openfaas.scale.zero", "true"), "not available in OpenFaaS CE"),
    ("scale.zero-duration", _set("functions/fn/labels/com.openfaas.scale.zero-duration", "5m"),
     "not available in OpenFaaS CE"),
    ("scale.target", _set("functions/fn/labels/com.openfaas.scale.target", "50"), "not available in OpenFaaS CE"),
    ("scale.type", _set("functions/fn/labels/com.openfaas.scale.type", "rps"), "not available in OpenFaaS CE"),
    ("unknown secret", _set("functions/fn/secrets", ["db-password"]), "not a file `make secrets` generates"),
    ("gateway secret", _set("functions/fn/secrets", ["basic-auth-password"]), "belongs to the gateway"),
    ("duplicate secret", _set("functions/fn/secrets", ["jwt-secret", "jwt-secret"]), "listed twice"),
    ("password in env", _set("functions/fn/environment/DB_PASSWORD", "hunter2"), "looks like a secret"),
    ("token in env", _set("functions/fn/environment/API_TOKEN", "abc"), "looks like a secret"),
    ("key in env", _set("functions/fn/environment/signing_key", "abc"), "looks like a secret"),
    ("secret ref not mounted", _set("functions/fn/environment/REDIS_PASSWORD_SECRET", "redis-password"),
     "looks like a secret"),
    ("password in URL", _set("functions/fn/environment/DATABASE_URL", "postgresql://u:pw@db/x"),
     "embeds a password"),
    ("limits missing", _set("functions/fn/limits", _DELETE), "limits (memory and cpu) are required"),
    ("cpu missing", _set("functions/fn/requests", {"memory": "64Mi"}), "requests.cpu is required"),
    ("memory milli", _set("functions/fn/limits/memory", "256m"), "needs a byte suffix"),
    ("memory garbage", _set("functions/fn/limits/memory", "lots"), "not a resource quantity"),
    ("cpu binary suffix", _set("functions/fn/limits/cpu", "1Ki"), "cores"),
    ("unknown resource", _set("functions/fn/limits/gpu", "1"), "not a stack field"),
    ("request above limit", _set("functions/fn/requests/memory", "512Mi"), "less than or equal"),
]


def test_the_valid_document_has_no_problems(project: Path) -> None:
    assert stack_problems(valid_doc(), project) == []


@pytest.mark.parametrize(("mutate", "message"), [(m, msg) for _, m, msg in BROKEN],
                         ids=[case for case, _, _ in BROKEN])
def test_each_rule_fires(project: Path, mutate: Callable[[dict[str, Any]], None], message: str) -> None:
    doc = valid_doc()
    mutate(doc)
    problems = stack_problems(doc, project)
    assert any(message in p for p in problems), problems


def test_handler_without_handle_is_refused(project: Path) -> None:
    (project / "functions" / "fn" / "handler.py").write_text("def main(request):\n    return 'ok'\n")
    assert any("does not define handle" in p for p in stack_problems(valid_doc(), project))
    (project / "functions" / "fn" / "handler.py").write_text("def handle(:\n")
    assert any("does not define handle" in p for p in stack_problems(valid_doc(), project))


@pytest.mark.parametrize(("value", "kind", "expected"), [
    ("256Mi", "memory", Decimal(256 * 2**20)),
    ("1G", "memory", Decimal(10**9)),
    ("1.5Gi", "memory", Decimal("1.5") * 2**30),
    ("128974848", "memory", Decimal(128974848)),
    ("129e6", "memory", Decimal(129 * 10**6)),
    ("500m", "cpu", Decimal("0.5")),
    ("2", "cpu", Decimal(2)),
    ("0.1", "cpu", Decimal("0.1")),
])
def test_quantities(value: str, kind: str, expected: Decimal) -> None:
    assert quantity(value, kind) == expected


@pytest.mark.no_stores
def test_every_function_runs_read_only_and_is_ready_only_when_it_answers() -> None:
    """The template writes only under /tmp; readiness is the function server's own /_/ready."""
    stack = load_stack(STACK_FILE, {})
    for name, spec in stack["functions"].items():
        assert spec["readonly_root_filesystem"] == "true", name
        assert spec["annotations"]["com.openfaas.ready.http.path"] == "/_/ready", name
