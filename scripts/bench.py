"""HTTP benchmark of the API, as ratios of nginx on the same machine: ``make bench``
(``python -m scripts.bench``).

Machines differ up to 2.6 times in speed between sessions, so absolute requests/s do not compare
(issue 21). Every figure is therefore also given relative to a yardstick measured **in the same
run with the same wrk settings**: Debian's nginx (1 worker process, access log off, sendfile)
serving a static file of exactly the size of the seeded 100-post feed at 10 and 100 connections,
and a 100-byte file at 10 connections. The reference implementation's figures, measured the
same way, are constants here (:data:`REFERENCE`); the goals are multiples of them
(:data:`GOAL_MULTIPLE`).

1. The stack (``--topology``):

   * ``single`` (default): ``make run``'s gateway alone, started on a free loopback port as
     ``make run`` does (``python -m gateway.run``, which forks granian's main process and the
     queue-side supervisor);
   * ``seed``: the compose topology on this host: nginx with the repository's own
     ``gateway/nginx.conf`` (rendered by ``scripts/nginx.py`` as ``tests/test_nginx.py`` runs
     it) in front of two gateway replicas (``GATEWAY_WORKERS=2``, ``GATEWAY_THREADS=2`` each,
     as docker-compose.yml runs them), plus the queue workers; every request goes through nginx;
   * ``both``: single, then seed, in one invocation, sharing one yardstick nginx.

   Each stack gets its own database ``minitwitter_bench`` (dropped and migrated first) and Redis
   DB 11 (flushed first). ``BENCH_URL`` (or ``--url``) measures a running stack instead
   (``--topology`` then says which goals apply; no memory figures). Rate limits are counted as
   in production, with budgets raised to 10^9: every request comes from one loopback IP and a
   handful of accounts, so the real budgets would turn the load test into a 429 test.
2. Seeding through the real API: users (register + login), 100 posts (the reference feed size),
   follows and likes; then it waits until the sentiment workers labelled every post so the
   read scenarios measure a settled state.
3. Memory: PSS (``/proc/<pid>/smaps_rollup``) summed over every process of the stack the harness
   started (gateway main and server processes, queue-worker supervisor, workers, scheduler;
   nginx apart), idle after seeding and again after the load.
4. The yardstick's nginx starts once per invocation, after the first seeding, serving that
   seeding's feed. Then wrk on loopback for each scenario (``--repeats`` runs of ``--duration``
   seconds; medians are reported), create-post last because it grows the timeline. With
   ``--yardstick paired`` (the default) each run of a scenario comes right after a run of its
   yardstick with the same settings, and its "% of nginx" and "p99 x nginx" are the medians of the
   per-pair ratios: these VMs drift in speed within minutes, and a yardstick measured minutes
   before would read that drift as the product's. ``--yardstick once`` measures each yardstick
   ``--repeats`` times before the first topology's scenarios (pairing doubles the scenarios'
   wrk time). Requests/s, p50/p90/p99 latency, errors (non-2xx responses + socket errors), the
   paired nginx's requests/s and p99, "% of nginx", "p99 x nginx", "x reference" and the goals'
   PASS/FAIL are printed and saved as JSON and markdown in ``bench/results/``.

Each measurement first runs ``--warmup`` unmeasured seconds (thread pools and their per-thread
database connections, caches). ``--quick`` is one 3-second run per scenario. ``--profile``
records py-spy stacks of the thread holding the GIL (Python CPU) of every gateway server worker
during the first run of each scenario (``bench/results/profile-*.txt``, collapsed-stack format).
When ``scripts/bench_sentiment.py`` (issue 4's create → labelled benchmark) exists, it runs
afterwards as one more scenario and its output is saved with the rest (``--no-sentiment`` skips
it; ``--quick`` does too).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import IO, Any

import httpx

from scripts import nginx as nginx_tool
from scripts.procfs import child_pids, process_name, process_tree

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO_ROOT / "bench" / "results"
LUA_DIR = REPO_ROOT / "scripts" / "bench"
BENCH_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/minitwitter_bench"
BENCH_REDIS_URL = "redis://127.0.0.1:6379/11"
SEED_PASSWORD = "bench-password-1"
SEED_POSTS = 100  # the reference feed: 100 posts, about 25 KB
FOLLOWS_PER_USER = 5
LIKES_PER_USER = 10
POST_TEXTS = (
    "Shipped the new release today, everything went smoothly and the team is really happy",
    "Rainy Monday again. The coffee machine is broken and the build is red. Not great.",
    "Reading about PostgreSQL index types: B-tree, GIN and BRIN each have their place",
    "Does anyone know a good hiking trail near the lake? Planning a weekend trip soon",
    "Terrible traffic this morning, an hour stuck on the bridge with no way out at all",
)
TOPOLOGIES = ("single", "seed")
#: What docker-compose.yml gives each gateway replica (x-gateway's defaults).
SEED_REPLICA_ENV = {"GATEWAY_WORKERS": "2", "GATEWAY_THREADS": "2", "GATEWAY_MICROCACHE_TTL": "0"}


# -- wrk output ----------------------------------------------------------------------------------
_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}
_LATENCY_LINE = re.compile(r"^\s*(50|75|90|99)(?:\.0+)?%\s+([\d.]+)(us|ms|s|m|h)\s*$", re.M)
_RPS_LINE = re.compile(r"^Requests/sec:\s+([\d.]+)", re.M)
_TOTAL_LINE = re.compile(r"^\s*(\d+) requests in ([\d.]+)(us|ms|s|m|h),", re.M)
_SOCKET_LINE = re.compile(
    r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
_NON2XX_LINE = re.compile(r"Non-2xx or 3xx responses: (\d+)")


@dataclass
class WrkResult:
    """One wrk run, parsed from its ``--latency`` text output."""

    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    non_2xx: int = 0
    socket_errors: int = 0
    #: gateway CPU (all gateway server workers) per request, when the harness started the stack: a
    #: figure that stays meaningful when other processes compete for the cores
    cpu_ms_per_request: float | None = None
    #: the yardstick's run right before this one (``--yardstick paired``): this run's ratios divide
    #: by it
    nginx: WrkResult | None = None

    @property
    def errors(self) -> int:
        return self.non_2xx + self.socket_errors


def parse_wrk(text: str) -> WrkResult:
    """Parse wrk's output (run with ``--latency``); ValueError when a figure is missing."""
    latencies = {int(p): float(v) * _UNITS[u] for p, v, u in _LATENCY_LINE.findall(text)}
    rps, total = _RPS_LINE.search(text), _TOTAL_LINE.search(text)
    if rps is None or total is None or not {50, 90, 99} <= latencies.keys():
        raise ValueError(f"unrecognised wrk output:\n{text}")
    sockets = _SOCKET_LINE.search(text)
    non_2xx = _NON2XX_LINE.search(text)
    return WrkResult(
        requests=int(total.group(1)), seconds=float(total.group(2)) * _UNITS[total.group(3)] / 1e3,
        rps=float(rps.group(1)), p50_ms=latencies[50], p90_ms=latencies[90], p99_ms=latencies[99],
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=sum(int(n) for n in sockets.groups()) if sockets else 0)


# -- scenarios, the yardstick, the reference and the goals (issue 21) ----------------------------
@dataclass(frozen=True)
class Scenario:
    """One wrk load: a path at a number of connections."""

    name: str
    path: str
    connections: int
    token: bool = False  # send one account's Bearer token
    script: str | None = None  # a Lua script in scripts/bench/ (gets the tokens file)
    #: the nginx static-file measurement this scenario's "% of nginx" and "p99 x nginx" divide by
    yardstick: str = "nginx feed c10"


#: The yardstick's files: the seeded 100-post feed as served (so exactly its size) and a small
#: JSON object of :data:`SMALL_FILE_BYTES` bytes, in the place of one account.
FEED_FILE, SMALL_FILE = "feed.json", "small.json"
SMALL_FILE_BYTES = 100
#: The yardstick: nginx serving those files, with the scenarios' wrk settings.
YARDSTICKS = (
    Scenario("nginx feed c10", "/" + FEED_FILE, 10),
    Scenario("nginx feed c100", "/" + FEED_FILE, 100),
    Scenario("nginx small c10", "/" + SMALL_FILE, 10),
)
FEED_C10, FEED_C100, SMALL_C10 = (y.name for y in YARDSTICKS)


@dataclass(frozen=True)
class Reference:
    """The reference implementation on one scenario, as ratios of nginx on the same machine."""

    scenario: str
    label: str  # the issue's words
    pct_of_nginx: float  # its requests/s as % of the scenario's yardstick's
    p99_x_nginx: float | None  # its p99 as a multiple of the yardstick's p99 (None: not given)


#: Issue 21's measurement of the reference (TypeScript API under bun, one process), the one place
#: these numbers live: "% of nginx" and "p99 x nginx" against the matching yardstick.
REFERENCE: dict[str, Reference] = {r.scenario: r for r in (
    Reference("list-posts limit=100 c10", "feed of 100 posts, 10 conns", 11.0, 1.3),
    Reference("list-posts limit=100 c100", "feed, 100 conns", 8.6, 5.2),
    Reference("get-user c10", "one account, 10 conns", 10.9, 1.6),
    Reference("create-post c10", "create post, 10 conns", 2.5, None),
)}
#: The goals per topology: at least this multiple of the reference's "% of nginx" on every
#: scenario above, a p99 multiple of nginx's no higher than the reference's, and no errors.
GOAL_MULTIPLE = {"single": 1.3, "seed": 2.0}
#: PSS of everything the single topology runs (gateway, queue workers, their supervisors), MiB.
MEMORY_GOALS_MIB = {"idle": 200.0, "after_load": 250.0}


def scenarios(seed: Seed) -> list[Scenario]:
    """The load profile; create-post last because it adds posts to the timeline.

    Yardsticks: feeds against the feed-size file at the same connection count, one object
    (get-user, get-post) against the small file, create-post against the feed file (as in the
    issue)."""
    listing = "/function/list-posts?limit={}"
    return [
        Scenario("list-posts limit=20 c10", listing.format(20), 10, yardstick=FEED_C10),
        Scenario("list-posts limit=20 c100", listing.format(20), 100, yardstick=FEED_C100),
        Scenario("list-posts limit=100 c10", listing.format(100), 10, yardstick=FEED_C10),
        Scenario("list-posts limit=100 c100", listing.format(100), 100, yardstick=FEED_C100),
        Scenario("get-post c10", f"/function/get-post/{seed.post_ids[0]}", 10, yardstick=SMALL_C10),
        Scenario("get-user c10", f"/function/get-user/id/{seed.user_ids[0]}", 10, yardstick=SMALL_C10),
        Scenario("home-timeline c10", "/function/home-timeline", 10, token=True, yardstick=FEED_C10),
        Scenario("create-post c10", "/function/create-post", 10, script="create_post.lua", yardstick=FEED_C10),
    ]


def compare(result: dict[str, Any], nginx: dict[str, Any] | None,
            reference: Reference | None) -> dict[str, float | None]:
    """A scenario's ratios: % of nginx (requests/s over the yardstick's), p99 x nginx (p99 over
    the yardstick's p99), x reference (% of nginx over the reference's % of nginx)."""
    pct = 100.0 * result["rps"] / nginx["rps"] if nginx and nginx["rps"] > 0 else None
    p99_x = result["p99_ms"] / nginx["p99_ms"] if nginx and nginx["p99_ms"] > 0 else None
    x_ref = pct / reference.pct_of_nginx if pct is not None and reference else None
    return {"pct_of_nginx": pct, "p99_x_nginx": p99_x, "x_reference": x_ref}


def compare_paired(runs: list[WrkResult], reference: Reference | None) -> dict[str, float | None]:
    """A scenario's ratios from runs each paired with the yardstick's run right before it: the
    medians of the per-pair ratios (each pair saw the machine at the same minute), not ratios of
    medians. Also the paired nginx runs' median requests/s and p99, for the report."""
    pairs = [(r, r.nginx) for r in runs if r.nginx is not None and r.nginx.rps > 0 and r.nginx.p99_ms > 0]
    if not pairs:
        return {"pct_of_nginx": None, "p99_x_nginx": None, "x_reference": None,
                "nginx_rps": None, "nginx_p99_ms": None}
    pct = statistics.median(100.0 * ours.rps / nginx.rps for ours, nginx in pairs)
    return {"pct_of_nginx": pct,
            "p99_x_nginx": statistics.median(ours.p99_ms / nginx.p99_ms for ours, nginx in pairs),
            "x_reference": pct / reference.pct_of_nginx if reference else None,
            "nginx_rps": statistics.median(nginx.rps for _, nginx in pairs),
            "nginx_p99_ms": statistics.median(nginx.p99_ms for _, nginx in pairs)}


def check_goals(topology: str, summary: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """PASS/FAIL of the topology's goal on every reference scenario that ran (with its ratios)."""
    multiple = GOAL_MULTIPLE.get(topology)
    if multiple is None:
        return []
    verdicts = []
    for ref in REFERENCE.values():
        got = summary.get(ref.scenario)
        if got is None or got.get("pct_of_nginx") is None:
            continue
        min_pct = round(multiple * ref.pct_of_nginx, 6)
        p99_ok = ref.p99_x_nginx is None or (got["p99_x_nginx"] is not None
                                             and got["p99_x_nginx"] <= ref.p99_x_nginx)
        goal = f"≥ {round(min_pct, 2):g} % of nginx ({multiple:g} × {ref.pct_of_nginx:g} %)"
        measured = f"{got['pct_of_nginx']:.1f} % ({got['x_reference']:.2f} × ref)"
        if ref.p99_x_nginx is not None:
            goal += f", p99 ≤ {ref.p99_x_nginx:g} × nginx's"
            measured += f", p99 {_num(got['p99_x_nginx'], '.2f')} ×"
        verdicts.append({
            "topology": topology, "name": ref.scenario, "goal": goal + ", no errors",
            "measured": measured + f", {got['errors']:.0f} errors",
            "min_pct_of_nginx": min_pct, "max_p99_x_nginx": ref.p99_x_nginx,
            "pct_of_nginx": got["pct_of_nginx"], "p99_x_nginx": got["p99_x_nginx"],
            "x_reference": got["x_reference"], "errors": got["errors"],
            "passed": got["pct_of_nginx"] >= min_pct and p99_ok and got["errors"] == 0})
    return verdicts


def check_memory(topology: str, memory: dict[str, dict[str, Any] | None]) -> list[dict[str, Any]]:
    """PASS/FAIL of the memory goals (the single topology's: the issue's figures are for one
    gateway with its workers)."""
    if topology != "single":
        return []
    verdicts = []
    for when, limit in MEMORY_GOALS_MIB.items():
        measured = memory.get(when)
        if measured is None:
            continue
        verdicts.append({"topology": topology, "name": f"memory {when.replace('_', ' ')}",
                         "goal": f"PSS ≤ {limit:g} MiB", "measured": f"{measured['total_mib']:.1f} MiB",
                         "max_mib": limit, "mib": measured["total_mib"],
                         "passed": measured["total_mib"] <= limit})
    return verdicts


def _num(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


# -- seeding through the API ---------------------------------------------------------------------
@dataclass
class Seed:
    """What the seeding created: ids and tokens the scenarios use."""

    user_ids: list[str] = field(default_factory=list)
    usernames: list[str] = field(default_factory=list)
    tokens: list[str] = field(default_factory=list)
    post_ids: list[str] = field(default_factory=list)
    follows: int = 0
    likes: int = 0


def _ok(response: httpx.Response, *expected: int) -> Any:
    if response.status_code not in expected:
        raise RuntimeError(f"{response.request.method} {response.request.url} answered "
                           f"{response.status_code}: {response.text[:300]}")
    return response.json() if response.content else {}


def seed(client: httpx.Client, users: int = 10, posts: int = SEED_POSTS, prefix: str = "bench") -> Seed:
    """Create ``users`` accounts, ``posts`` posts, follows and likes through the gateway.

    Accounts that exist already (a reused stack) are logged into rather than re-registered.
    """
    out = Seed()
    for i in range(users):
        username = f"{prefix}_user_{i:02d}"
        reply = client.post("/function/register", json={"username": username, "password": SEED_PASSWORD,
                                                        "display_name": f"Bench user {i}"})
        if reply.status_code != 409:
            _ok(reply, 201)
        token = _ok(client.post("/function/login", json={"username": username,
                                                         "password": SEED_PASSWORD}), 200)["access_token"]
        me = _ok(client.get("/function/get-user/me", headers=bearer(token)), 200)
        out.usernames.append(username)
        out.tokens.append(token)
        out.user_ids.append(str(me["id"]))
    for i in range(posts):
        text = f"{POST_TEXTS[i % len(POST_TEXTS)]} (#{i})"
        post = _ok(client.post("/function/create-post", json={"content": text},
                               headers=bearer(out.tokens[i % users])), 201)
        out.post_ids.append(str(post["id"]))
    for i, token in enumerate(out.tokens):
        for step in range(1, min(FOLLOWS_PER_USER, users - 1) + 1):
            _ok(client.post(f"/function/follow-user/{out.usernames[(i + step) % users]}",
                            headers=bearer(token)), 200)
            out.follows += 1
        for k in range(min(LIKES_PER_USER, posts)):
            _ok(client.post(f"/function/like-post/{out.post_ids[(i * 7 + k) % posts]}",
                            headers=bearer(token)), 200)
            out.likes += 1
    return out


def bearer(token: str) -> dict[str, str]:
    """The Authorization header for ``token``."""
    return {"Authorization": f"Bearer {token}"}


def wait_labelled(client: httpx.Client, timeout: float = 60.0) -> bool:
    """Wait until the newest 100 posts carry a sentiment verdict (the workers caught up)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        page = _ok(client.get("/function/list-posts?limit=100"), 200)
        if all(p["sentiment"]["status"] != "pending" for p in page):
            return True
        time.sleep(0.5)
    return False


# -- the stack -----------------------------------------------------------------------------------
# -- the yardstick: nginx serving static files ---------------------------------------------------
def small_body(size: int = SMALL_FILE_BYTES) -> bytes:
    """A JSON object of exactly ``size`` bytes, shaped like one account."""
    head, tail = b'{"id":1,"username":"bench_user_00","display_name":"Bench user 0","bio":"', b'"}'
    if size < len(head) + len(tail):
        raise ValueError(f"a small file needs at least {len(head) + len(tail)} bytes")
    return head + b"x" * (size - len(head) - len(tail)) + tail


def write_yardstick_files(root: Path, feed: bytes) -> dict[str, int]:
    """The yardstick's document root: ``feed`` as served by the API (so exactly the feed's size)
    and the small file; readable by nginx's workers. Their sizes by file name."""
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o755)
    sizes = {}
    for name, body in ((FEED_FILE, feed), (SMALL_FILE, small_body())):
        (root / name).write_bytes(body)
        (root / name).chmod(0o644)
        sizes[name] = (root / name).stat().st_size
    return sizes


@contextmanager
def static_nginx(feed: bytes) -> Iterator[nginx_tool.Nginx]:
    """nginx (:func:`scripts.nginx.static_conf`: 1 worker, access log off, sendfile) serving the
    yardstick's files on a free loopback port, under a private prefix removed afterwards."""
    from gateway.embedded import free_port

    prefix = nginx_tool.private_dir("bench-yardstick-")
    try:
        write_yardstick_files(prefix / "www", feed)
        port = free_port()
        conf = nginx_tool.static_conf(prefix / "www", f"127.0.0.1:{port}", prefix)
        server = nginx_tool.start(conf, prefix, port, prefix / "nginx.out", die_with_caller=True)
        try:
            yield server
        finally:
            nginx_tool.stop([server])
    finally:
        shutil.rmtree(prefix, ignore_errors=True)


#: ``--yardstick``: ``paired`` (the default) runs a scenario's yardstick right before each of the
#: scenario's runs, and each run's ratios divide by that adjacent nginx run; ``once`` measures each
#: yardstick ``--repeats`` times once per invocation, before the first topology's scenarios. These
#: VMs' speed drifts within minutes (session 20 saw the same create-post code at 700 and 1,200/s a
#: few minutes apart), and a yardstick measured minutes earlier reads that drift as the product's.
YARDSTICK_MODES = ("paired", "once")


class Yardstick:
    """nginx serving the yardstick's files, started once per invocation (with the first
    topology's feed, so the file is exactly its size), and every run of it measured."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.paired = args.yardstick == "paired"
        self.runs: dict[str, list[WrkResult]] = {}
        self.feed_bytes: int | None = None
        self._cleanup = ExitStack()
        self._server: nginx_tool.Nginx | None = None
        self._warm: set[str] = set()

    def __enter__(self) -> Yardstick:
        return self

    def __exit__(self, *exc: object) -> None:
        self._cleanup.close()

    def start(self, feed: bytes) -> None:
        """Start nginx serving ``feed`` and the small file, unless it runs already."""
        if self._server is None:
            print(f"yardstick: nginx serving a {len(feed):,}-byte file (the feed) and a "
                  f"{SMALL_FILE_BYTES}-byte one, {'before each run' if self.paired else 'once'} ...", flush=True)
            self._server = self._cleanup.enter_context(static_nginx(feed))
            self.feed_bytes = len(feed)

    def run(self, name: str) -> WrkResult:
        """One measured run of the yardstick ``name`` with the scenarios' wrk settings (the first
        of each after ``--warmup`` unmeasured seconds), kept for the report."""
        if self._server is None:
            raise RuntimeError("the yardstick's nginx is not started")
        scenario = next(y for y in YARDSTICKS if y.name == name)
        if name not in self._warm and self.args.warmup > 0:
            run_wrk(self._server.url, scenario, self.args.warmup, self.args.threads)
        self._warm.add(name)
        result = run_wrk(self._server.url, scenario, self.args.duration, self.args.threads)
        self.runs.setdefault(name, []).append(result)
        return result

    def measure_once(self, names: set[str]) -> None:
        """``--yardstick once``: ``--repeats`` runs of each yardstick named not yet measured."""
        for name in sorted(names - self.runs.keys()):
            for i in range(self.args.repeats):
                result = self.run(name)
                print(f"  {name:34} run {i + 1}: {result.rps:9,.0f} req/s  p99 {result.p99_ms:7.2f} ms", flush=True)

    def results(self) -> dict[str, dict[str, Any]]:
        """Each yardstick's medians over all its runs."""
        return {name: median_result(runs) for name, runs in self.runs.items()}

    def report(self) -> dict[str, Any] | None:
        if self.feed_bytes is None:
            return None
        return {"nginx": nginx_tool.version(), "config": "1 worker process, access_log off, sendfile on",
                "mode": self.args.yardstick, "feed_bytes": self.feed_bytes, "small_bytes": SMALL_FILE_BYTES,
                "results": self.results(),
                "runs": {name: [asdict(r) for r in rs] for name, rs in self.runs.items()}}


# -- memory: PSS of a stack's processes ----------------------------------------------------------
def pss_kib(pid: int) -> int | None:
    """Proportional set size of ``pid`` in KiB (``/proc/<pid>/smaps_rollup``); None when gone."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return None
    match = re.search(r"^Pss:\s+(\d+) kB", text, re.M)
    return int(match.group(1)) if match else None


def measure_memory(groups: dict[str, list[int]], apart: tuple[str, ...] = ("nginx",)) -> dict[str, Any]:
    """PSS of every process in the trees rooted at each group's pids, per group and process;
    ``total_mib`` sums the groups not named in ``apart`` (nginx is reported on its own)."""
    out: dict[str, Any] = {"groups": {}}
    for group, roots in groups.items():
        processes: list[dict[str, Any]] = []
        for pid in (p for root in roots for p in process_tree(root)):
            kib = pss_kib(pid)
            if kib is None:  # exited meanwhile, or a zombie
                continue
            processes.append({"pid": pid, "name": process_name(pid), "pss_kib": kib})
        out["groups"][group] = {"pss_mib": round(sum(p["pss_kib"] for p in processes) / 1024, 1),
                                "processes": processes}
    out["total_mib"] = round(sum(g["pss_mib"] for name, g in out["groups"].items() if name not in apart), 1)
    out["processes"] = sum(len(g["processes"]) for name, g in out["groups"].items() if name not in apart)
    return out


# -- the stacks ----------------------------------------------------------------------------------
@dataclass
class Stack:
    """What a benchmark runs against: its URL and, when the harness started it, its processes."""

    topology: str
    url: str
    description: str
    #: group name → root pids whose process trees make up the group (memory); "nginx" is apart
    groups: dict[str, list[int]] = field(default_factory=dict)
    #: the gateway server main processes (granian), whose children serve the requests
    gateway_mains: list[int] = field(default_factory=list)

    def server_workers(self) -> list[int]:
        return [pid for main in self.gateway_mains for pid in child_pids(main)]


def stack_env(database_url: str, redis_url: str, port: int, prom_dir: Path) -> dict[str, str]:
    """Environment of the gateway and workers the benchmark starts."""
    from minitwitter.config import ensure_dev_secrets

    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "REDIS_"))}
    env.setdefault("SENTIMENT_BACKEND", "vader")  # offline and deterministic unless told otherwise
    env.update({
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "shared"), str(REPO_ROOT)]),
        "STACK_FILE": str(REPO_ROOT / "stack.yml"),
        "DATABASE_URL": database_url, "REDIS_URL": redis_url,
        "GATEWAY_PORT": str(port), "GATEWAY_BIND": "127.0.0.1",
        "GATEWAY_URL": f"http://127.0.0.1:{port}",
        # Rate limiting runs as in production (one Redis round trip per request and scope), but
        # one client IP and ten accounts generate all the load, so the budgets are raised.
        "RATE_LIMIT_IP": "1000000000", "RATE_LIMIT_ACCOUNT": "1000000000",
        "RATE_LIMIT_LOGIN": "1000000000", "RATE_LIMIT_REGISTER": "1000000000",
        "PROMETHEUS_MULTIPROC_DIR": str(prom_dir),
        "SECRETS_DIR": str(ensure_dev_secrets()),
    })
    return env


def reset_stores(database_url: str, redis_url: str) -> None:
    """Drop and recreate the bench database, flush the bench Redis DB."""
    import pg8000.native
    import redis

    from minitwitter.db import connect_params

    params = connect_params(database_url, timeout=60)  # DROP ... WITH (FORCE) can take a while
    if not params["database"].endswith("bench"):
        raise SystemExit(f"refusing to reset {params['database']!r}: not a *bench database")
    admin = pg8000.native.Connection(**{**params, "database": "postgres"})
    try:
        admin.run(f"DROP DATABASE IF EXISTS {pg8000.native.identifier(params['database'])} WITH (FORCE)")
        admin.run(f"CREATE DATABASE {pg8000.native.identifier(params['database'])}")
    finally:
        admin.close()
    redis.Redis.from_url(redis_url).flushdb()


def _prepare_database(database_url: str, redis_url: str, env: dict[str, str]) -> None:
    reset_stores(database_url, redis_url)
    subprocess.run([sys.executable, "-m", "minitwitter.migrate"], env=env, cwd=REPO_ROOT, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _start(argv: list[str], env: dict[str, str], log: IO[bytes]) -> subprocess.Popen[bytes]:
    # A session of its own: the process group holds whatever it forks (RQ's scheduler too), and a
    # terminal's Ctrl-C reaches only this harness, which stops everything in order. Should the
    # harness die without stopping it (SIGKILL), the kernel sends it SIGTERM.
    from gateway.processes import parent_death_preexec

    return subprocess.Popen(argv, env=env, cwd=REPO_ROOT, stdout=log, stderr=log, start_new_session=True,
                            preexec_fn=parent_death_preexec())


def _stop(procs: list[subprocess.Popen[bytes]], grace: float = 30.0) -> None:
    """SIGTERM (granian drains, workers finish their job), SIGKILL after ``grace``; then any
    straggler left in each process's group."""
    from gateway.run import stop_services

    stop_services(procs, grace=grace)
    for proc in procs:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def _sizes(env: dict[str, str]) -> tuple[int, int, int]:
    from minitwitter.config import load_config

    config = load_config(env)
    return config.gateway_workers, config.gateway_threads, config.worker_count


@contextmanager
def single_stack(database_url: str, redis_url: str, log_dir: Path) -> Iterator[Stack]:
    """``make run``'s gateway alone: ``python -m gateway.run`` on the bench stores (it forks the
    gateway server and the queue side from one preloaded process), on a free loopback port."""
    from gateway import serve
    from gateway.embedded import free_port

    port = free_port()
    data_dir = Path(tempfile.mkdtemp(prefix="bench-run-"))  # its metrics folder, not the repo's
    env = {**stack_env(database_url, redis_url, port, data_dir / "prometheus"), "DATA_DIR": str(data_dir)}
    reset_stores(database_url, redis_url)  # gateway.run migrates and deploys the stack itself
    log_dir.mkdir(parents=True, exist_ok=True)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        with open(log_dir / "stack.log", "ab") as log:
            procs.append(_start([sys.executable, "-m", "gateway.run"], env, log))
        url = f"http://127.0.0.1:{port}"
        _wait_healthy(url, procs[0], timeout=60.0)
        workers, threads, queue = _sizes(env)
        mains = [pid for pid in process_tree(procs[0].pid) if process_name(pid) == serve.MAIN_PROCESS_NAME]
        yield Stack("single", url, f"`make run`'s gateway alone ({workers} server processes × {threads} "
                    f"threads) + {queue} queue workers", {"make run": [procs[0].pid]}, mains)
    finally:
        _stop(procs)
        shutil.rmtree(data_dir, ignore_errors=True)


def seed_nginx_conf(upstreams: tuple[str, str], listen: str, prefix: Path) -> str:
    """The repository's gateway/nginx.conf for the seed topology on this host (the rendering
    tests/test_nginx.py proves)."""
    return nginx_tool.render_conf(nginx_tool.NGINX_CONF.read_text(), upstreams, listen, prefix)


@contextmanager
def seed_stack(database_url: str, redis_url: str, log_dir: Path) -> Iterator[Stack]:
    """The compose topology on this host: nginx (gateway/nginx.conf) → two gateway replicas
    (:data:`SEED_REPLICA_ENV`, trusting nginx's X-Forwarded-For) and the queue workers (whose
    async calls go through nginx, as in compose). nginx's access log (JSON lines on stdout, as
    shipped) is written to a file in its private folder and removed afterwards; its errors go to
    the stack log."""
    from gateway import serve
    from gateway.embedded import free_port

    prefix = nginx_tool.private_dir("bench-seed-nginx-")
    temp_dirs = [prefix]
    procs: list[subprocess.Popen[bytes]] = []
    nginx: nginx_tool.Nginx | None = None
    log_dir.mkdir(parents=True, exist_ok=True)
    try:
        ports, env = [], {}
        with open(log_dir / "stack.log", "ab") as log:
            for _ in range(2):  # one after the other: each seeds the function registry on start
                ports.append(free_port())
                temp_dirs.append(Path(tempfile.mkdtemp(prefix="bench-prom-")))
                env = {**stack_env(database_url, redis_url, ports[-1], temp_dirs[-1]), **SEED_REPLICA_ENV,
                       "TRUSTED_PROXIES": "127.0.0.1/32"}
                if len(ports) == 1:
                    _prepare_database(database_url, redis_url, env)
                procs.append(_start(serve.command(), env, log))
                _wait_healthy(f"http://127.0.0.1:{ports[-1]}", procs[-1])
            nginx_port = free_port()
            conf = seed_nginx_conf((f"127.0.0.1:{ports[0]}", f"127.0.0.1:{ports[1]}"),
                                   f"127.0.0.1:{nginx_port}", prefix)
            nginx = nginx_tool.start(conf, prefix, nginx_port, log_dir / "stack.log", stdout=prefix / "access.log",
                                     die_with_caller=True)
            temp_dirs.append(Path(tempfile.mkdtemp(prefix="bench-prom-")))
            worker_env = {**env, "GATEWAY_URL": nginx.url, "PROMETHEUS_MULTIPROC_DIR": str(temp_dirs[-1])}
            procs.append(_start([sys.executable, "-m", "gateway.worker"], worker_env, log))
        _wait_healthy(nginx.url, nginx.proc)
        workers, threads, queue = _sizes(env)
        yield Stack("seed", nginx.url, f"nginx (gateway/nginx.conf) → 2 gateway replicas ({workers} server "
                    f"processes × {threads} threads each) + {queue} queue workers",
                    {"gateway-1": [procs[0].pid], "gateway-2": [procs[1].pid], "queue workers": [procs[2].pid],
                     "nginx": [nginx.proc.pid]}, [procs[0].pid, procs[1].pid])
    finally:
        if nginx is not None:
            nginx_tool.stop([nginx])
        _stop(procs)
        for path in temp_dirs:
            shutil.rmtree(path, ignore_errors=True)


def _wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"a process exited during start-up ({url}); see bench/results/logs/stack.log")
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{url} did not become healthy within {timeout:.0f} s")


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds used so far by ``pids`` (processes that vanished count 0)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (after the comm field)
    return total / os.sysconf("SC_CLK_TCK")


# -- running -------------------------------------------------------------------------------------
def run_wrk(url: str, scenario: Scenario, seconds: float, threads: int, token: str = "",
            tokens_file: Path | None = None) -> WrkResult:
    """One wrk run of ``scenario``."""
    cmd = ["wrk", f"-t{min(threads, scenario.connections)}", f"-c{scenario.connections}",
           f"-d{seconds:g}s", "--latency", "--timeout", "5s"]
    if scenario.token:
        cmd += ["-H", f"Authorization: Bearer {token}"]
    if scenario.script:
        cmd += ["-s", str(LUA_DIR / scenario.script)]
    cmd.append(url + scenario.path)
    if scenario.script:
        cmd += ["--", str(tokens_file)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
    return parse_wrk(done.stdout)


def measure(url: str, scenario: Scenario, args: argparse.Namespace, stack: Stack | None = None,
            token: str = "", tokens_file: Path | None = None,
            pair: Callable[[], WrkResult] | None = None) -> list[WrkResult]:
    """``--warmup`` unmeasured seconds, then ``--repeats`` runs of ``--duration`` seconds; with a
    stack the harness started, the gateway's CPU per request (and py-spy with ``--profile``).
    ``pair`` (the yardstick's run) runs right before each run and is kept as its ``nginx``."""
    if args.warmup > 0:  # fill thread pools, connections and caches before measuring
        run_wrk(url, scenario, args.warmup, args.threads, token, tokens_file)
    results = []
    label = f"{stack.topology} {scenario.name}" if stack else scenario.name
    for i in range(args.repeats):
        nginx = pair() if pair else None
        workers = stack.server_workers() if stack else []
        spies = profile(workers, args.duration, label) if workers and args.profile and i == 0 else []
        cpu_before = cpu_seconds(workers)
        result = run_wrk(url, scenario, args.duration, args.threads, token, tokens_file)
        if workers and result.requests:
            result.cpu_ms_per_request = (cpu_seconds(workers) - cpu_before) * 1e3 / result.requests
        for spy in spies:
            spy.wait(30)
        result.nginx = nginx
        results.append(result)
        print(f"  {label:34} run {i + 1}: {result.rps:9,.0f} req/s  p50 {result.p50_ms:6.2f}  "
              f"p90 {result.p90_ms:6.2f}  p99 {result.p99_ms:7.2f} ms  errors {result.errors}"
              + (f"  cpu {result.cpu_ms_per_request:.2f} ms/req" if result.cpu_ms_per_request else "")
              + (f"  (nginx {nginx.rps:,.0f} req/s, p99 {nginx.p99_ms:.2f} ms)" if nginx else ""),
              flush=True)
    return results


def median_result(runs: list[WrkResult]) -> dict[str, Any]:
    """Per-figure medians of several runs (errors are summed)."""
    cpu = [r.cpu_ms_per_request for r in runs if r.cpu_ms_per_request is not None]
    return {
        "cpu_ms_per_request": statistics.median(cpu) if cpu else None,
        "rps": statistics.median(r.rps for r in runs),
        "p50_ms": statistics.median(r.p50_ms for r in runs),
        "p90_ms": statistics.median(r.p90_ms for r in runs),
        "p99_ms": statistics.median(r.p99_ms for r in runs),
        "errors": sum(r.errors for r in runs),
        "requests": sum(r.requests for r in runs),
    }


def summarise(runs: dict[str, list[WrkResult]], chosen: list[Scenario],
              yardstick: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Medians of each scenario's runs with its yardstick's name and its ratios: to the nginx run
    paired with each run (:func:`compare_paired`) when they were paired, else to ``yardstick``
    (each yardstick's medians, measured once)."""
    summary = {}
    for scenario in chosen:
        got = median_result(runs[scenario.name])
        got["yardstick"] = scenario.yardstick
        reference = REFERENCE.get(scenario.name)
        if any(r.nginx is not None for r in runs[scenario.name]):
            got.update(compare_paired(runs[scenario.name], reference))
        else:
            nginx = yardstick.get(scenario.yardstick)
            got.update(compare(got, nginx, reference))
            got["nginx_rps"], got["nginx_p99_ms"] = (nginx["rps"], nginx["p99_ms"]) if nginx else (None, None)
        summary[scenario.name] = got
    return summary


def python_speed_ms() -> float:
    """Milliseconds this machine's Python takes for a fixed workload (best of 5): calls, dicts,
    strings and lists, the stuff of request handling, 100,000 times.

    VMs of the same name differ from session to session (the same code served list-posts at
    1,580/s on one and 4,653/s on another); this figure, saved with every run, tells how two
    runs' machines compare. It is a rough guide: a loop this small stays in the CPU's caches,
    a server does not.
    """
    def step(i: int) -> str:
        record: dict[str, Any] = {"id": i, "name": f"user{i}", "tags": [i, i + 1]}
        record["size"] = len(record["name"]) + sum(record["tags"])
        return "{name}:{size}".format(**record)

    best = float("inf")
    for _ in range(5):
        started = time.process_time()
        out = [step(i) for i in range(100_000)]
        best = min(best, time.process_time() - started)
        del out
    return round(best * 1000, 1)


def machine() -> dict[str, Any]:
    """The facts the README records next to the numbers."""
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    mem_kib = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal:"))
    wrk = subprocess.run(["wrk", "--version"], capture_output=True, text=True, check=False)
    return {"nproc": os.cpu_count(), "cpu": cpu, "ram_gib": round(mem_kib / 1024 / 1024, 1),
            "python": platform.python_version(), "kernel": platform.release(),
            "python_loop_ms": python_speed_ms(), "nginx": nginx_tool.version(),
            "wrk": (wrk.stdout or wrk.stderr or "?").splitlines()[0].split(" Copyright")[0]}


def _memory_rows(topology: str, memory: dict[str, dict[str, Any] | None]) -> list[str]:
    rows = []
    for when, m in memory.items():
        if m is None:
            continue
        groups = ", ".join(f"{name} {g['pss_mib']:.1f}" for name, g in m["groups"].items() if name != "nginx")
        nginx = m["groups"].get("nginx")
        rows.append(f"| {topology} | {when.replace('_', ' ')} | {m['total_mib']:.1f} | {groups} | "
                    f"{m['processes']} | {nginx['pss_mib']:.1f} |" if nginx else
                    f"| {topology} | {when.replace('_', ' ')} | {m['total_mib']:.1f} | {groups} | "
                    f"{m['processes']} | |")
    return rows


def _ratio_cell(pct: float | None, p99_x: float | None, x_ref: float | None = None) -> str:
    if pct is None:
        return "n/a"
    return (f"{pct:.1f} %" + (f", p99 {p99_x:.2f} ×" if p99_x is not None else "")
            + (f", {x_ref:.2f} × ref" if x_ref is not None else ""))


def markdown(report: dict[str, Any]) -> str:
    """The results as markdown: machine, yardstick, each topology's scenarios with their ratios,
    the ratios side by side, the goals' verdicts, memory."""
    m = report["machine"]
    lines = [f"Runs: {report['repeats']} × {report['duration_s']:g} s per measurement (after "
             f"{report['warmup_s']:g} s warm-up), wrk {report['threads']} threads, medians. Machine: "
             f"{m['nproc']} cores ({m['cpu']}), {m['ram_gib']} GiB RAM, Python {m['python']}, "
             f"{m['wrk']}, {m['nginx']}.", "",
             f"Load average before the run: {report['loadavg_before']}. Python speed "
             f"(`bench.python_speed_ms`): {m.get('python_loop_ms', '?')} ms."]
    y = report.get("yardstick")
    if y:
        when = ("right before each run of each scenario that divides by it, each run's ratios to its own nginx "
                "run (medians of those per-pair ratios below; this table: medians of all its runs)"
                if y.get("mode", "paired") == "paired" else "once, before the scenarios")
        lines += ["", f"**Yardstick**, in the same run with the same wrk settings, measured {when}: {y['nginx']} "
                  f"({y['config']}) serving the seeded `list-posts?limit=100` response as a file "
                  f"({y['feed_bytes']:,} bytes) and a {y['small_bytes']}-byte file:", "",
                  "| yardstick | requests/s | p50 ms | p90 ms | p99 ms | errors |", "|---|---:|---:|---:|---:|---:|"]
        for name, s in y["results"].items():
            lines.append(f"| {name} | {s['rps']:,.0f} | {s['p50_ms']:.2f} | {s['p90_ms']:.2f} | "
                         f"{s['p99_ms']:.2f} | {s['errors']:.0f} |")
    goals = {(g["topology"], g["name"]): g for g in report["goals"]}
    for topology, t in report["topologies"].items():
        lines += ["", f"**Topology `{topology}`**: {t['description']}, {t['url']}. Load average before: "
                  f"{t['loadavg_before']}.", ""]
        if y and t["feed_limit_100_bytes"] != y["feed_bytes"]:
            lines += [f"(This stack's 100-post feed is {t['feed_limit_100_bytes']:,} bytes; the yardstick's "
                      f"file {y['feed_bytes']:,}.)", ""]
        lines += ["| scenario | requests/s | p50 ms | p90 ms | p99 ms | errors | nginx req/s, p99 ms | % of nginx "
                  "| p99 × nginx | × reference | goal | gateway CPU ms/req |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|"]
        for name, s in t["scenarios"].items():
            goal = goals.get((topology, name))
            verdict = ("PASS" if goal["passed"] else "FAIL") if goal else ""
            nginx = (f"{s['nginx_rps']:,.0f}, {s['nginx_p99_ms']:.2f}" if s.get("nginx_rps") is not None
                     and s.get("nginx_p99_ms") is not None else "n/a")
            lines.append(f"| {name} | {s['rps']:,.0f} | {s['p50_ms']:.2f} | {s['p90_ms']:.2f} | "
                         f"{s['p99_ms']:.2f} | {s['errors']:.0f} | {nginx} | {_num(s['pct_of_nginx'], '.1f')} | "
                         f"{_num(s['p99_x_nginx'], '.2f')} | {_num(s['x_reference'], '.2f')} | {verdict} | "
                         f"{_num(s['cpu_ms_per_request'], '.2f')} |")
    memory = [row for topology, t in report["topologies"].items() for row in _memory_rows(topology, t["memory"])]
    if memory:
        lines += ["", "Memory: PSS (MiB) of every process the harness started for the stack, idle after seeding "
                  "and after the load; nginx apart:", "",
                  "| topology | when | total | by group | processes | nginx |", "|---|---|---:|---|---:|---:|",
                  *memory]
    if report["topologies"]:
        names = list(report["topologies"])
        lines += ["", "Ratios to nginx (% of its requests/s, p99 as a multiple of its p99) and to the reference:",
                  "", "| scenario | vs nginx | reference | " + " | ".join(names) + " |",
                  "|---|---|---|" + "---|" * len(names)]
        scenario_names = list(dict.fromkeys(n for t in report["topologies"].values() for n in t["scenarios"]))
        for name in scenario_names:
            ref = REFERENCE.get(name)
            cells = []
            for topology in names:
                s = report["topologies"][topology]["scenarios"].get(name)
                cells.append(_ratio_cell(s["pct_of_nginx"], s["p99_x_nginx"], s["x_reference"]) if s else "")
            yard = next(s["yardstick"] for t in report["topologies"].values() if (s := t["scenarios"].get(name)))
            lines.append(f"| {name} | {yard} | {_ratio_cell(ref.pct_of_nginx, ref.p99_x_nginx) if ref else ''} | "
                         + " | ".join(cells) + " |")
    if report["goals"]:
        lines += ["", "Goals (issue 21: `single` ≥ 1.3 × the reference's ratio, `seed` ≥ 2 ×, p99 multiple no "
                  "higher than the reference's; memory of the single topology):", "",
                  "| topology | goal | target | measured | result |", "|---|---|---|---|---|"]
        for g in report["goals"]:
            lines.append(f"| {g['topology']} | {g['name']} | {g['goal']} | {g['measured']} | "
                         f"{'PASS' if g['passed'] else 'FAIL'} |")
    if report.get("sentiment"):
        lines += ["", "Sentiment (scripts/bench_sentiment.py):", "", "```", report["sentiment"].strip(), "```"]
    return "\n".join(lines) + "\n"


def profile(pids: list[int], seconds: float, label: str) -> list[subprocess.Popen[bytes]]:
    """Start ``py-spy record`` (collapsed stacks) on each of ``pids`` (gateway server workers)."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    slug = re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")
    return [subprocess.Popen([spy, "record", "--pid", str(pid), "--duration", str(max(1, int(seconds))),
                              "--rate", "200", "--format", "raw", "--nonblocking", "--gil",
                              "--output", str(RESULTS_DIR / f"profile-{slug}-{pid}.txt")],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for pid in pids]


def run_sentiment_bench() -> str | None:
    """Run the sentiment pipeline benchmark (issue 4) when its script exists; its output."""
    if not (REPO_ROOT / "scripts" / "bench_sentiment.py").is_file():
        return None
    done = subprocess.run([sys.executable, "-m", "scripts.bench_sentiment"], cwd=REPO_ROOT,
                          capture_output=True, text=True, check=False)
    return done.stdout + (f"\n(exit {done.returncode}) {done.stderr[-2000:]}" if done.returncode else "")


def bench_topology(stack: Stack, args: argparse.Namespace, yardstick: Yardstick) -> dict[str, Any]:
    """Seed through ``stack``, take its idle memory, start the yardstick's nginx (the first time),
    run every chosen scenario (each run right after its yardstick's with ``--yardstick paired``;
    the yardsticks first with ``once``), take the memory after the load. The topology's report."""
    # Other processes competing for the cores skew every figure but CPU per request: record it.
    loadavg = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"[{stack.topology}] {stack.description}", flush=True)
    with httpx.Client(base_url=stack.url, timeout=30) as client:
        print(f"seeding {args.users} users, {SEED_POSTS} posts, follows and likes via {stack.url} ...", flush=True)
        seeded = seed(client, users=args.users)
        if not wait_labelled(client):
            print("warning: some seeded posts are still pending sentiment", flush=True)
        page = client.get("/function/list-posts?limit=100")
        _ok(page, 200)
        feed = page.content  # the yardstick's feed file: these bytes
    memory: dict[str, Any] = {"idle": measure_memory(stack.groups) if stack.groups else None}
    chosen = [s for s in scenarios(seeded) if not args.only or any(part in s.name for part in args.only)]
    yardstick.start(feed)
    if not yardstick.paired:
        yardstick.measure_once({s.yardstick for s in chosen})
    tokens_file = RESULTS_DIR / "tokens.txt"
    tokens_file.write_text("\n".join(seeded.tokens) + "\n")
    try:
        runs = {s.name: measure(stack.url, s, args, stack if stack.groups else None, seeded.tokens[0], tokens_file,
                                pair=partial(yardstick.run, s.yardstick) if yardstick.paired else None)
                for s in chosen}
    finally:
        tokens_file.unlink(missing_ok=True)
    memory["after_load"] = measure_memory(stack.groups) if stack.groups else None
    summary = summarise(runs, chosen, yardstick.results())
    return {
        "topology": stack.topology, "description": stack.description, "url": stack.url,
        "loadavg_before": loadavg, "feed_limit_100_bytes": len(feed),
        "seed": {"users": len(seeded.user_ids), "posts": len(seeded.post_ids),
                 "follows": seeded.follows, "likes": seeded.likes},
        "scenarios": summary, "runs": {n: [asdict(r) for r in rs] for n, rs in runs.items()},
        "memory": memory,
        "goals": check_goals(stack.topology, summary) + check_memory(stack.topology, memory),
    }


def stop_on_sigterm() -> None:
    """SIGTERM ends the harness as Ctrl-C does: the stacks and nginx it started are stopped in
    order on the way out (before, a ``kill`` left them running, listening and loading the cores)."""
    def handler(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


def main(argv: list[str] | None = None) -> int:
    stop_on_sigterm()
    parser = argparse.ArgumentParser(description="Minitwitter HTTP benchmark (wrk), as ratios of nginx")
    parser.add_argument("--url", default=os.environ.get("BENCH_URL"),
                        help="a running stack (default $BENCH_URL; unset: start one)")
    parser.add_argument("--topology", choices=(*TOPOLOGIES, "both"), default="single",
                        help="single: make run's gateway alone (default); seed: nginx → two gateway "
                             "replicas; both: single then seed. With --url: which goals apply")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per wrk run (10)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per scenario, medians reported (3)")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads (2)")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds first (2)")
    parser.add_argument("--users", type=int, default=10, help="seeded accounts (10)")
    parser.add_argument("--quick", action="store_true", help="one 3-second run per scenario")
    parser.add_argument("--only", action="append", help="run scenarios whose name contains this")
    parser.add_argument("--profile", action="store_true", help="py-spy the gateway server workers")
    parser.add_argument("--sentiment", action=argparse.BooleanOptionalAction, default=None,
                        help="also run scripts/bench_sentiment.py (issue 4) when it exists "
                             "(default: yes, except with --quick)")
    parser.add_argument("--yardstick", choices=YARDSTICK_MODES, default="paired",
                        help="paired: nginx's run right before each run, ratios per pair (default); "
                             "once: each yardstick measured once, before the scenarios")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a goal is missed")
    parser.add_argument("--database-url", default=BENCH_DATABASE_URL)
    parser.add_argument("--redis-url", default=BENCH_REDIS_URL)
    args = parser.parse_args(argv)
    if args.quick:
        args.duration, args.repeats, args.warmup = 3.0, 1, min(args.warmup, 1.0)
    if args.sentiment is None:
        args.sentiment = not args.quick
    if args.url and args.topology == "both":
        parser.error("--topology both starts its own stacks: not with --url / BENCH_URL")
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (scripts/debian-tools.sh bench installs it)")
    if nginx_tool.binary() is None:
        raise SystemExit("nginx is not installed (scripts/debian-tools.sh bench installs it)")
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "started_at": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "duration_s": args.duration, "repeats": args.repeats, "threads": args.threads, "warmup_s": args.warmup,
        "loadavg_before": " / ".join(f"{x:.2f}" for x in os.getloadavg()), "machine": machine(),
        "reference": [asdict(r) for r in REFERENCE.values()], "goal_multiple": GOAL_MULTIPLE,
        "memory_goals_mib": MEMORY_GOALS_MIB, "topologies": {},
    }
    with Yardstick(args) as yardstick:
        for topology in (TOPOLOGIES if args.topology == "both" else (args.topology,)):
            if args.url:
                url = args.url.rstrip("/")
                stack: Any = nullcontext(Stack(topology, url, f"a running stack ({topology} goals)"))
            elif topology == "single":
                stack = single_stack(args.database_url, args.redis_url, RESULTS_DIR / "logs")
            else:
                stack = seed_stack(args.database_url, args.redis_url, RESULTS_DIR / "logs")
            with stack as running:
                report["topologies"][topology] = bench_topology(running, args, yardstick)
    report["yardstick"] = yardstick.report()
    report["goals"] = [g for t in report["topologies"].values() for g in t["goals"]]
    if args.sentiment:
        report["sentiment"] = run_sentiment_bench()
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    table = markdown(report)
    for name in (f"bench-{stamp}", "latest"):
        (RESULTS_DIR / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
        (RESULTS_DIR / f"{name}.md").write_text(table)
    print("\n" + table + f"\nsaved to {RESULTS_DIR}/bench-{stamp}.{{json,md}}")
    for g in report["goals"]:
        print(f"{'PASS' if g['passed'] else 'FAIL'}  {g['topology']:6}  {g['name']:26}  {g['measured']}  "
              f"(goal {g['goal']})")
    missed = [f"{g['topology']} {g['name']}" for g in report["goals"] if not g["passed"]]
    print("goals: " + ("all met" if not missed else "missed: " + ", ".join(missed)))
    return 1 if missed and args.strict else 0


if __name__ == "__main__":
    sys.exit(main())
