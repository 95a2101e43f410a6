"""What faas-cli 0.18.12 does with a stack file, for the tests (faas-cli cannot be installed here).

Two parts, following the contract doc (§3, §4) and faas-cli's source (go-sdk ``stack``,
``builder``):

- :func:`load_stack`: environment substitution, then YAML decoded the way Go's ``yaml.v3`` fills
  faas-cli's ``Services`` struct (scalars stay their literal text, so ``version: 1.0`` is the
  string ``"1.0"`` and ``1.00`` is not), then faas-cli's own checks (``provider.name`` must be
  ``openfaas``, ``version`` must be ``1.0`` when present) and the type errors the struct decoding
  raises (``environment`` must map names to scalars, ``secrets`` must be a list, ...).
- :func:`shrinkwrap`: ``faas-cli build --shrinkwrap``. For every function, ``build/<fn>/`` =
  a copy of ``./template/<lang>/``, the handler folder overlaid into ``function/`` (its
  ``build`` and ``template`` entries skipped), and each ``configuration.copy`` path copied to
  ``function/<path>``; a copy path must lie inside the project and must not be the project.

faas-cli resolves every path against its working directory; here that directory is
``project_dir`` (default: the stack file's folder) and the output goes to ``build_dir`` so
tests can write under ``tmp_path``.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from gateway.stack import envsubst

PROVIDER_NAME = "openfaas"
VALID_VERSIONS = ("1.0",)
TEMPLATE_DIR = "template"
HANDLER_OVERLAY = "function"
#: Handler entries faas-cli never copies into the build context.
SKIPPED_HANDLER_ENTRIES = ("build", "template")
#: Function fields decoded into Go maps of strings / lists of strings / resources.
STRING_MAPS = ("environment", "labels", "annotations", "build_args")
STRING_LISTS = ("secrets", "environment_file", "build_options", "constraints")
RESOURCE_FIELDS = ("limits", "requests")
BOOL_FIELDS = ("skip_build", "readonly_root_filesystem")
_BARE_VAR = re.compile(r"\$(?!\{)[A-Za-z_][A-Za-z0-9_]*")


class StackError(ValueError):
    """faas-cli would refuse this stack (the message says why, in faas-cli's words)."""


class GoScalarLoader(yaml.SafeLoader):
    """YAML as yaml.v3 decodes it into string fields: every scalar keeps its literal text.

    Merge keys (``<<: *anchor``) and anchors work as in yaml.v3; ``null`` stays ``None``.
    """


def _literal(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> str:
    return str(loader.construct_scalar(node))


for _tag in ("int", "float", "bool", "timestamp"):
    GoScalarLoader.add_constructor(f"tag:yaml.org,2002:{_tag}", _literal)


def bare_variables(text: str) -> list[str]:
    """``$NAME`` references: faas-cli's envsubst expands them, the local gateway does not."""
    return sorted(set(_BARE_VAR.findall(text)))


def parse_stack_text(text: str, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Substitute, decode and validate stack text the way faas-cli does; return the document."""
    try:
        doc = yaml.load(envsubst(text, environ or {}), Loader=GoScalarLoader)  # noqa: S506 - safe loader subclass
    except yaml.YAMLError as exc:
        raise StackError(f"Error with YAML file: {exc}") from None
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise StackError("yaml: cannot unmarshal the document into a stack (not a mapping)")
    provider = doc.get("provider") or {}
    if not isinstance(provider, dict):
        raise StackError("yaml: provider must be a mapping")
    name = provider.get("name") or ""
    if name != PROVIDER_NAME:
        raise StackError(f"['{PROVIDER_NAME}'] is the only valid \"provider.name\" for the OpenFaaS "
                         f"CLI, but you gave: {name}")
    version = doc.get("version")
    if version not in (None, "") and version not in VALID_VERSIONS:
        raise StackError(f"{list(VALID_VERSIONS)} are the only valid versions for the stack file "
                         f"- found: {version}")
    _check_types(doc)
    return doc


def load_stack(path: str | Path, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """:func:`parse_stack_text` of a file (``environ`` defaults to an empty environment)."""
    return parse_stack_text(Path(path).read_text(encoding="utf-8"), environ)


def _check_types(doc: dict[str, Any]) -> None:
    """The errors yaml.v3 raises when a value does not fit faas-cli's struct fields."""
    config = doc.get("configuration") or {}
    if not isinstance(config, dict):
        raise StackError("yaml: configuration must be a mapping")
    copy = config.get("copy") or []
    if not isinstance(copy, list) or not all(isinstance(p, str) for p in copy):
        raise StackError("yaml: configuration.copy must be a list of paths")
    templates = config.get("templates") or []
    if not isinstance(templates, list) or not all(isinstance(t, dict) for t in templates):
        raise StackError("yaml: configuration.templates must be a list of {name, source}")
    functions = doc.get("functions") or {}
    if not isinstance(functions, dict):
        raise StackError("yaml: functions must be a mapping of name to function")
    for fn, spec in functions.items():
        if spec is None:
            continue
        if not isinstance(spec, dict):
            raise StackError(f"yaml: function {fn} must be a mapping")
        for key, value in spec.items():
            if value is None:
                continue
            if key in STRING_MAPS and not (isinstance(value, dict) and all(
                    isinstance(v, str) or v is None for v in value.values())):
                raise StackError(f"yaml: {fn}.{key} must map names to scalar values")
            if key in STRING_LISTS and not (isinstance(value, list) and all(
                    isinstance(v, str) for v in value)):
                raise StackError(f"yaml: {fn}.{key} must be a list of strings")
            if key in RESOURCE_FIELDS and not (isinstance(value, dict) and all(
                    isinstance(v, str) or v is None for v in value.values())):
                raise StackError(f"yaml: {fn}.{key} must be a mapping with memory/cpu")
            if key in BOOL_FIELDS and value not in ("true", "false"):
                raise StackError(f"yaml: {fn}.{key} must be true or false, got {value!r}")
            if key in ("lang", "handler", "image", "fprocess", "namespace") and not isinstance(value, str):
                raise StackError(f"yaml: {fn}.{key} must be a string")


def template_path(project_dir: Path, lang: str) -> Path:
    """Where faas-cli looks for a language template: ``./template/<lang>/`` (lower-cased)."""
    return project_dir / TEMPLATE_DIR / lang.lower()


def is_valid_template(project_dir: Path, lang: str) -> bool:
    """faas-cli's check: the template folder exists and its template.yml parses."""
    folder = template_path(project_dir, lang)
    try:
        yaml.load((folder / "template.yml").read_text(encoding="utf-8"), Loader=GoScalarLoader)  # noqa: S506
    except (OSError, yaml.YAMLError):
        return False
    return folder.is_dir()


def path_in_scope(path: str, scope: Path) -> Path:
    """A ``configuration.copy`` entry as an absolute path inside ``scope``.

    faas-cli compares absolute paths without resolving symlinks (``filepath.Abs``), so a
    symlinked folder inside the project is accepted. Its check is a plain string prefix; this
    one requires a real sub-path, which only refuses more.
    """
    scope = Path(os.path.abspath(scope))
    absolute = Path(os.path.abspath(scope / path))
    if absolute == scope:
        raise StackError(f"forbidden path appears to equal the entire project: {path} ({absolute})")
    if not absolute.is_relative_to(scope):
        raise StackError(f"forbidden path appears to be outside of the build context: {path} ({absolute})")
    return absolute


def _copy(src: Path, dst: Path) -> None:
    if src.is_dir():
        shutil.copytree(src, dst, dirs_exist_ok=True)
    else:
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst)


def create_build_context(name: str, spec: Mapping[str, Any], copy_paths: Iterable[str],
                         project_dir: Path, build_dir: Path) -> Path:
    """``build/<name>/`` for one function, exactly as faas-cli lays it out."""
    lang = str(spec.get("lang") or "")
    handler = str(spec.get("handler") or "")
    if not lang:
        raise StackError(f"please provide a valid language for your function: {name}")
    if lang.lower() == "dockerfile":
        raise StackError(f"{name}: the dockerfile language is not a template build")
    if not is_valid_template(project_dir, lang):
        raise StackError(f"language template: {lang} not supported, build a custom Dockerfile")
    handler_dir = project_dir / handler
    if not handler or not handler_dir.exists():
        raise StackError(f"building {name}, {handler} is an invalid path")
    context = build_dir / name
    shutil.rmtree(context, ignore_errors=True)
    overlay = context / HANDLER_OVERLAY
    overlay.mkdir(parents=True)
    shutil.copytree(template_path(project_dir, lang), context, dirs_exist_ok=True)
    for entry in sorted(handler_dir.iterdir()):
        if entry.name in SKIPPED_HANDLER_ENTRIES:
            continue
        _copy(entry, overlay / entry.name)
    for extra in copy_paths:
        source = path_in_scope(extra, project_dir)
        _copy(source, overlay / os.path.normpath(extra))
    return context


def shrinkwrap(stack_file: str | Path, build_dir: Path, *, project_dir: Path | None = None,
               environ: Mapping[str, str] | None = None,
               only: Iterable[str] | None = None) -> dict[str, Path]:
    """``faas-cli build --shrinkwrap -f stack_file [--filter]``: name → build context folder."""
    stack_file = Path(stack_file)
    project = Path(project_dir) if project_dir is not None else stack_file.parent
    doc = load_stack(stack_file, environ)
    functions: dict[str, Any] = doc.get("functions") or {}
    wanted = set(only) if only is not None else set(functions)
    missing = wanted - set(functions)
    if missing:
        raise StackError(f"no functions matching --filter/--regex were found in the YAML file: {sorted(missing)}")
    copy_paths = list((doc.get("configuration") or {}).get("copy") or [])
    return {name: create_build_context(name, functions[name] or {}, copy_paths, project, build_dir)
            for name in sorted(wanted)}
