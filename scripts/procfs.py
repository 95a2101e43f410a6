"""What ``/proc`` says about running processes, for the benchmarks and the tests (one copy)."""

from __future__ import annotations

from pathlib import Path


def child_pids(pid: int) -> list[int]:
    """The processes ``pid``'s main thread forked (granian, the supervisors and ``make run`` fork
    there); empty when ``pid`` is gone."""
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def process_tree(root: int) -> list[int]:
    """``root`` and all its descendants alive now, forked by any thread (parent pids from
    ``/proc/*/stat``); empty when ``root`` is gone."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(stat.parent.name))
    if not Path(f"/proc/{root}").exists():
        return []
    tree, todo = [], [root]
    while todo:
        pid = todo.pop(0)
        tree.append(pid)
        todo.extend(sorted(children.get(pid, [])))
    return tree


def process_name(pid: int) -> str:
    """What ``ps -o comm`` shows for ``pid`` (``mt-gateway``); ``?`` when it is gone."""
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"
