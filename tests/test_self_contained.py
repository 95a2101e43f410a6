"""The repository is self-contained: no test, script or build file refers to a path outside it.

A user's clone is all there is: nothing beside it (a team folder, another checkout) and nothing
at a path of the machine it was developed on. Every tracked file that code or tools read (not
the prose in ``*.md``, nor vendored fixtures) is scanned for:

- relative paths with ``..`` that leave the repository: in code (Python, shell, the Makefile)
  resolved from the repository root, where ``make`` and pytest run; in configuration (YAML,
  Dockerfiles, nginx) from the file's own folder, as the tools that read it do;
- ``Path(__file__)`` walked up (``.parent``, ``.parents[k]``) above the repository root, and
  ``REPO_ROOT.parent``;
- absolute paths of development machines (``/work/``, ``/home/<user>/``).

A line that names an outside path on purpose, as input to a check that must refuse it, carries
the marker ``outside-on-purpose``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from minitwitter.config import REPO_ROOT

MARKER = "outside-on-purpose"
#: Files whose relative paths are resolved from the current directory (the repository root).
CODE_SUFFIXES = (".py", ".sh", ".lua")
CODE_NAMES = ("Makefile", "run")
SKIPPED_SUFFIXES = (".md", ".png", ".svg", ".ico")
SKIPPED_DIRS = ("tests/fixtures/compose-spec/",)
#: This file names the patterns it looks for; its own cases are checked by the second test.
SELF = "tests/test_self_contained.py"

RELATIVE_UP = re.compile(r"(?<![\w./~-])((?:\.\./)+(?:[\w.-]+/?)*)|\bcd\s+(\.\.)(?=[\s;&)]|$)")
FILE_WALK = re.compile(r"Path\(__file__\)(?:\.resolve\(\))?((?:\.parent\b|\.parents\[\d+\])+)")
ROOT_PARENT = re.compile(r"\bREPO_ROOT\.parent\b")
MACHINE_PATH = re.compile(r"(?<![\w.])/(?:work|home/[\w.-]+)/")


def tracked_files() -> list[Path]:
    out = subprocess.run(["git", "ls-files", "-z"], cwd=REPO_ROOT, capture_output=True, check=True)
    files = []
    for name in out.stdout.decode().split("\0"):
        if not name or name == SELF or name.endswith(SKIPPED_SUFFIXES) or name.startswith(SKIPPED_DIRS):
            continue
        path = REPO_ROOT / name
        if path.is_file() and not path.is_symlink():
            files.append(path)
    return files


def escapes(base: Path, relative: str) -> bool:
    """Whether ``relative``, taken from ``base``, lands outside the repository root."""
    depth = len(base.relative_to(REPO_ROOT).parts)
    for part in Path(relative).parts:
        if part == "..":
            depth -= 1
            if depth < 0:
                return True
        elif part != ".":
            depth += 1
    return False


def walk_escapes(file: Path, chain: str) -> bool:
    """Whether ``Path(file)`` followed by ``chain`` (``.parent`` / ``.parents[k]``) leaves the root."""
    depth = len(file.parent.relative_to(REPO_ROOT).parts)  # Path(__file__).parent is at this depth
    ups = -1  # Path(__file__) itself is the file
    for step in re.findall(r"\.parent\b|\.parents\[(\d+)\]", chain):
        ups += int(step) + 1 if step else 1
    return depth - ups < 0


def problems_in(text: str, file: Path) -> list[str]:
    """What in ``text``, read as the contents of ``file``, refers to a path outside the repository."""
    is_code = file.suffix in CODE_SUFFIXES or file.name in CODE_NAMES
    base = REPO_ROOT if is_code else file.parent
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        if MARKER in line:
            continue
        where = f"{file.relative_to(REPO_ROOT)}:{number}: {line.strip()}"
        for match in RELATIVE_UP.finditer(line):
            relative = match.group(1) or match.group(2)
            if escapes(base, relative):
                found.append(f"{where}  (relative path {relative!r} leaves the repository)")
        for match in FILE_WALK.finditer(line):
            if walk_escapes(file, match.group(1)):
                found.append(f"{where}  (walks above the repository root)")
        if ROOT_PARENT.search(line):
            found.append(f"{where}  (REPO_ROOT.parent is outside the repository)")
        if MACHINE_PATH.search(line):
            found.append(f"{where}  (a development machine's absolute path)")
    return found


def text_of(file: Path) -> str:
    try:
        return file.read_text()
    except UnicodeDecodeError:  # binary: nothing to read paths from
        return ""


@pytest.mark.no_stores
def test_no_tracked_file_refers_to_a_path_outside_the_repository() -> None:
    files = tracked_files()
    assert len(files) > 100  # the scan really ran over the repository
    problems = [p for file in files for p in problems_in(text_of(file), file)]
    assert not problems, "paths outside the repository:\n" + "\n".join(problems)


@pytest.mark.no_stores
@pytest.mark.parametrize(("relative_to", "line", "bad"), [
    ("tests/test_x.py", 'SCHEMA = REPO_ROOT.parent / "shared" / "data"', True),
    ("tests/test_x.py", 'SCHEMA = Path("../shared/data/compose-spec.json")', True),
    ("tests/test_x.py", 'ROOT = Path(__file__).resolve().parents[1]', False),
    ("tests/test_x.py", 'ROOT = Path(__file__).resolve().parents[2]', True),
    ("scripts/x.py", 'ROOT = Path(__file__).parent.parent', False),
    ("scripts/x.py", 'ROOT = Path(__file__).parent.parent.parent', True),
    ("monitoring/tests/x.yml", "  - ../rules/alerts.yml", False),
    ("Makefile", "\tcat ../shared/docs/design.md", True),
    ("Makefile", "\tcd .. && ls", True),
    ("scripts/bench/x.lua", 'error("no tokens in " .. path)', False),
    ("shared/minitwitter/sentiment/x.py", "from .. import cache", False),
    ("gateway/Dockerfile", "COPY ../../secrets /run", True),
    ("templates/python3-ff/Dockerfile", "COPY ../../shared /app", False),
    ("tests/test_x.py", 'DATA = "/work/shared/data"', True),
    ("tests/test_x.py", 'URL = "http://host/work/x"', False),
    ("tests/test_x.py", 'PATH = "/a/./b/../c"', False),
    ("tests/test_x.py", '("../elsewhere", "refused"),  # outside-on-purpose', False),
])
def test_the_scan_tells_inside_from_outside(relative_to: str, line: str, bad: bool) -> None:
    """The scanner itself, on one line read as though it were in a file at ``relative_to``."""
    found = problems_in(line + "\n", REPO_ROOT / relative_to)
    assert bool(found) == bad, found


# --- the Debian tools make test installs -------------------------------------------------------

TOOLS_SCRIPT = REPO_ROOT / "scripts" / "debian-tools.sh"
TEST_PACKAGES = ["nginx", "prometheus", "prometheus-redis-exporter", "prometheus-postgres-exporter",
                 "wrk", "iproute2"]


@pytest.fixture
def tool_dir() -> Iterator[Path]:
    """An empty folder an ordinary user can read (pytest's tmp_path is private to root)."""
    with tempfile.TemporaryDirectory(prefix="mt-tools-") as name:
        path = Path(name)
        path.chmod(0o755)
        yield path


def run_tools_script(tool_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The script as a user who is not root, whose PATH and TOOL_DIRS are ``tool_dir`` only."""
    bash = shutil.which("bash")
    assert bash
    argv = [bash, str(TOOLS_SCRIPT), *args]
    if os.geteuid() == 0:  # become an ordinary user, as a developer running make test would be
        setpriv = shutil.which("setpriv")
        assert setpriv
        argv = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", "--", *argv]
    env = {"PATH": str(tool_dir), "TOOL_DIRS": str(tool_dir)}
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=30, check=False)


@pytest.mark.no_stores
def test_make_test_runs_the_tools_script_and_ci_runs_make_test() -> None:
    makefile = (REPO_ROOT / "Makefile").read_text()
    recipe = makefile.split("\ntest:", 1)[1].split("\n\n", 1)[0]
    assert "scripts/debian-tools.sh test" in recipe
    assert recipe.index("debian-tools.sh") < recipe.index("pytest")
    ci = (REPO_ROOT / ".ci" / "run").read_text()
    assert "make test" in ci and "apt-get" not in ci  # one list of packages, not two


@pytest.mark.no_stores
def test_tools_missing_and_not_root_stops_with_the_exact_install_command(tool_dir: Path) -> None:
    result = run_tools_script(tool_dir, "test")
    assert result.returncode == 1, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"apt-get install -y --no-install-recommends {' '.join(TEST_PACKAGES)}'" in lines[0]
    assert result.stdout == ""


@pytest.mark.no_stores
def test_tools_present_is_silent_success(tool_dir: Path) -> None:
    for name in ("nginx", "prometheus", "promtool", "prometheus-redis-exporter",
                 "prometheus-postgres-exporter", "wrk", "ss"):
        tool = tool_dir / name
        tool.write_text("#!/bin/sh\nexit 0\n")
        tool.chmod(0o755)
    result = run_tools_script(tool_dir, "test")
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    (tool_dir / "wrk").unlink()  # one missing: only its package is named
    result = run_tools_script(tool_dir, "test")
    assert result.returncode == 1
    assert result.stderr.strip().endswith("apt-get install -y --no-install-recommends wrk' "
                                          "(or install them otherwise), then retry")
