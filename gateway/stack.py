"""Reading stack.yml the way faas-cli does: ``${VAR}`` / ``${VAR:-default}`` substitution first,
then YAML. Only the fields the local gateway needs are interpreted here; the full rule set that
faas-cli and OpenFaaS CE enforce is checked by ``tests/test_stack.py``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def envsubst(text: str, environ: Mapping[str, str] | None = None) -> str:
    """Replace ``${VAR}`` and ``${VAR:-default}`` like faas-cli's envsubst."""
    env = os.environ if environ is None else environ

    def repl(match: re.Match[str]) -> str:
        value = env.get(match.group(1), "")
        if not value and match.group(2) is not None:
            return match.group(2)
        return value

    return _VAR.sub(repl, text)


@dataclass(frozen=True)
class StackFunction:
    name: str
    lang: str
    handler: Path
    image: str
    environment: dict[str, str] = field(default_factory=dict)
    secrets: list[str] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    limits: dict[str, str] = field(default_factory=dict)
    requests: dict[str, str] = field(default_factory=dict)

    def deployment(self, namespace: str) -> dict[str, Any]:
        """The FunctionDeployment faas-cli would send for this function."""
        return {
            "service": self.name,
            "image": self.image,
            "namespace": namespace,
            "envProcess": "python index.py",
            "envVars": dict(self.environment),
            "secrets": list(self.secrets),
            "labels": dict(self.labels),
            "annotations": dict(self.annotations),
            "limits": dict(self.limits),
            "requests": dict(self.requests),
        }


def load_stack(path: str | Path, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The parsed stack document after env substitution."""
    text = Path(path).read_text(encoding="utf-8")
    return yaml.safe_load(envsubst(text, environ)) or {}


def stack_functions(path: str | Path, environ: Mapping[str, str] | None = None) -> dict[str, StackFunction]:
    """Every function of the stack, with its handler directory resolved against the stack file."""
    root = Path(path).resolve().parent
    doc = load_stack(path, environ)
    out: dict[str, StackFunction] = {}
    for name, spec in (doc.get("functions") or {}).items():
        spec = spec or {}
        out[name] = StackFunction(
            name=name,
            lang=str(spec.get("lang", "")),
            handler=(root / str(spec.get("handler", ""))).resolve(),
            image=str(spec.get("image", "")),
            environment={k: str(v) for k, v in (spec.get("environment") or {}).items()},
            secrets=[str(s) for s in spec.get("secrets") or []],
            labels={k: str(v) for k, v in (spec.get("labels") or {}).items()},
            annotations={k: str(v) for k, v in (spec.get("annotations") or {}).items()},
            limits={k: str(v) for k, v in (spec.get("limits") or {}).items()},
            requests={k: str(v) for k, v in (spec.get("requests") or {}).items()},
        )
    return out
