"""HTTP benchmark of the API through the gateway: ``make bench`` (``python -m scripts.bench``).

1. The stack: ``BENCH_URL`` (or ``--url``) names a running gateway; otherwise this starts one on a
   free loopback port exactly as ``make run`` does (granian via ``python -m gateway.serve``
   plus ``python -m gateway.worker``) against its own database ``minitwitter_bench`` (dropped and
   migrated first) and Redis DB 11 (flushed first). Rate limits are counted as in
   production, with budgets raised to 10^9: every request comes from one loopback IP and a
   handful of accounts, so the real budgets would turn the load test into a 429 test.
2. Seeding through the real API: users (register + login), 100 posts (the reference feed size),
   follows and likes; then it waits until the sentiment workers labelled every post so the
   read scenarios measure a settled state.
3. wrk on loopback for each scenario (``--repeats`` runs of ``--duration`` seconds; medians are
   reported), create-post last because it grows the timeline. Requests/s, p50/p90/p99 latency
   and errors (non-2xx responses + socket errors) are printed and saved as JSON and a markdown
   table in ``bench/results/``, with pass/fail against the issue's targets.

Each scenario first runs ``--warmup`` unmeasured seconds (thread pools and their per-thread
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
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

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


# -- scenarios and targets -----------------------------------------------------------------------
@dataclass(frozen=True)
class Scenario:
    """One wrk load: a gateway path at a number of connections."""

    name: str
    path: str
    connections: int
    token: bool = False  # send one account's Bearer token
    script: str | None = None  # a Lua script in scripts/bench/ (gets the tokens file)


@dataclass(frozen=True)
class Target:
    """The issue's goal: twice the reference implementation's rate with p99 no higher."""

    scenario: str
    min_rps: float
    max_p99_ms: float
    reference: str


TARGETS = (
    Target("list-posts limit=100 c10", 4540, 9, "feed of 100 posts 2,270/s p99 9 ms"),
    Target("list-posts limit=100 c100", 4800, 62, "feed of 100 posts 2,400/s p99 62 ms"),
    Target("get-user c10", 5240, 9, "one account by id 2,620/s p99 9 ms"),
    Target("create-post c10", 1288, 29, "create post 644/s p99 29 ms"),
)


def scenarios(seed: Seed) -> list[Scenario]:
    """The load profile; create-post last because it adds posts to the timeline."""
    listing = "/function/list-posts?limit={}"
    return [
        Scenario("list-posts limit=20 c10", listing.format(20), 10),
        Scenario("list-posts limit=20 c100", listing.format(20), 100),
        Scenario("list-posts limit=100 c10", listing.format(100), 10),
        Scenario("list-posts limit=100 c100", listing.format(100), 100),
        Scenario("get-post c10", f"/function/get-post/{seed.post_ids[0]}", 10),
        Scenario("get-user c10", f"/function/get-user/id/{seed.user_ids[0]}", 10),
        Scenario("home-timeline c10", "/function/home-timeline", 10, token=True),
        Scenario("create-post c10", "/function/create-post", 10, script="create_post.lua"),
    ]


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


@contextmanager
def local_stack(database_url: str, redis_url: str, log_dir: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """Start migrations, the gateway server and the workers; yield (url, server process)."""
    from gateway import serve
    from gateway.embedded import free_port
    from gateway.run import stop_services

    reset_stores(database_url, redis_url)
    port = free_port()
    prom_dir = Path(tempfile.mkdtemp(prefix="bench-prom-"))
    env = stack_env(database_url, redis_url, port, prom_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "minitwitter.migrate"], env=env, cwd=REPO_ROOT, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        with open(log_dir / "stack.log", "ab") as stack_log:
            for argv in (serve.command(), [sys.executable, "-m", "gateway.worker"]):
                procs.append(subprocess.Popen(argv, env=env, cwd=REPO_ROOT, stdout=stack_log,
                                              stderr=stack_log))
        url = f"http://127.0.0.1:{port}"
        _wait_healthy(url, procs[0])
        yield url, procs[0]
    finally:
        stop_services(procs, grace=30)
        shutil.rmtree(prom_dir, ignore_errors=True)


def _wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit("the gateway exited during start-up; see bench/results/logs/stack.log")
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"the gateway at {url} did not become healthy within {timeout:.0f} s")


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


def server_workers(master_pid: int) -> list[int]:
    """Pids of the gateway server main process's worker processes."""
    try:
        return [int(p) for p in Path(f"/proc/{master_pid}/task/{master_pid}/children").read_text().split()]
    except OSError:
        return []


# -- running -------------------------------------------------------------------------------------
def run_wrk(url: str, scenario: Scenario, seconds: float, threads: int, token: str,
            tokens_file: Path) -> WrkResult:
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


def check_targets(summary: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Pass/fail of every target whose scenario ran."""
    verdicts = []
    for target in TARGETS:
        got = summary.get(target.scenario)
        if got is None:
            continue
        verdicts.append({**asdict(target), "rps": got["rps"], "p99_ms": got["p99_ms"],
                         "passed": got["rps"] >= target.min_rps and got["p99_ms"] <= target.max_p99_ms
                         and got["errors"] == 0})
    return verdicts


def python_speed_ms() -> float:
    """Milliseconds this machine's Python takes for a fixed workload (best of 5): calls, dicts,
    strings and lists, the stuff of request handling, 100,000 times.

    VMs of the same name differ from session to session (the same code served list-posts at
    1,580/s on one and 4,653/s on another); this figure, saved with every run, tells how two
    runs' machines compare. It is a rough guide: a loop this small stays in the CPU's caches,
    a server does not.
    """
    def step(i: int) -> str:
        record = {"id": i, "name": f"user{i}", "tags": [i, i + 1]}
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
            "python_loop_ms": python_speed_ms(),
            "wrk": (wrk.stdout or wrk.stderr).splitlines()[0] if (wrk.stdout or wrk.stderr) else "?"}


def markdown(report: dict[str, Any]) -> str:
    """The results as the markdown tables docs/benchmarks.md shows."""
    lines = [f"Runs: {report['repeats']} × {report['duration_s']:g} s per scenario, wrk "
             f"{report['threads']} threads, medians. Machine: {report['machine']['nproc']} cores "
             f"({report['machine']['cpu']}), {report['machine']['ram_gib']} GiB RAM.", "",
             f"Load average before the run: {report['loadavg_before']}. Python speed "
             f"(`bench.python_speed_ms`): {report['machine'].get('python_loop_ms', '?')} ms.", "",
             "| scenario | requests/s | p50 ms | p90 ms | p99 ms | errors | gateway CPU ms/req |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name, s in report["scenarios"].items():
        cpu = f"{s['cpu_ms_per_request']:.2f}" if s.get("cpu_ms_per_request") is not None else "n/a"
        lines.append(f"| {name} | {s['rps']:,.0f} | {s['p50_ms']:.2f} | {s['p90_ms']:.2f} | "
                     f"{s['p99_ms']:.2f} | {s['errors']:.0f} | {cpu} |")
    if report["targets"]:
        lines += ["", "| target | goal | measured | result |", "|---|---|---|---|"]
        for t in report["targets"]:
            lines.append(f"| {t['scenario']} | ≥ {t['min_rps']:,.0f}/s, p99 ≤ {t['max_p99_ms']:g} ms | "
                         f"{t['rps']:,.0f}/s, p99 {t['p99_ms']:.1f} ms | {'PASS' if t['passed'] else 'FAIL'} |")
    if report.get("sentiment"):
        lines += ["", "Sentiment (scripts/bench_sentiment.py):", "", "```", report["sentiment"].strip(), "```"]
    return "\n".join(lines) + "\n"


def profile(master_pid: int, seconds: float, label: str) -> list[subprocess.Popen[bytes]]:
    """Start ``py-spy record`` (collapsed stacks) on every gateway server worker for ``seconds``."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    slug = re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")
    return [subprocess.Popen([spy, "record", "--pid", str(pid), "--duration", str(max(1, int(seconds))),
                              "--rate", "200", "--format", "raw", "--nonblocking", "--gil",
                              "--output", str(RESULTS_DIR / f"profile-{slug}-{pid}.txt")],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for pid in server_workers(master_pid)]


def run_sentiment_bench() -> str | None:
    """Run the sentiment pipeline benchmark (issue 4) when its script exists; its output."""
    if not (REPO_ROOT / "scripts" / "bench_sentiment.py").is_file():
        return None
    done = subprocess.run([sys.executable, "-m", "scripts.bench_sentiment"], cwd=REPO_ROOT,
                          capture_output=True, text=True, check=False)
    return done.stdout + (f"\n(exit {done.returncode}) {done.stderr[-2000:]}" if done.returncode else "")


def bench(url: str, args: argparse.Namespace, master_pid: int | None) -> dict[str, Any]:
    """Seed, run every scenario, and build the report."""
    # Other processes competing for the cores skew every figure but CPU per request: record it.
    loadavg = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    with httpx.Client(base_url=url, timeout=30) as client:
        print(f"seeding {args.users} users, {SEED_POSTS} posts, follows and likes via {url} ...", flush=True)
        seeded = seed(client, users=args.users)
        if not wait_labelled(client):
            print("warning: some seeded posts are still pending sentiment", flush=True)
        feed_bytes = len(client.get("/function/list-posts?limit=100").content)
    tokens_file = RESULTS_DIR / "tokens.txt"
    tokens_file.write_text("\n".join(seeded.tokens) + "\n")
    runs: dict[str, list[WrkResult]] = {}
    try:
        for scenario in scenarios(seeded):
            if args.only and not any(part in scenario.name for part in args.only):
                continue
            runs[scenario.name] = []
            if args.warmup > 0:  # fill thread pools, connections and caches before measuring
                run_wrk(url, scenario, args.warmup, args.threads, seeded.tokens[0], tokens_file)
            for i in range(args.repeats):
                spying = args.profile and master_pid is not None and i == 0
                spies = profile(master_pid, args.duration, scenario.name) if spying and master_pid else []
                workers = server_workers(master_pid) if master_pid else []
                cpu_before = cpu_seconds(workers)
                result = run_wrk(url, scenario, args.duration, args.threads, seeded.tokens[0], tokens_file)
                if workers and result.requests:
                    result.cpu_ms_per_request = (cpu_seconds(workers) - cpu_before) * 1e3 / result.requests
                for spy in spies:
                    spy.wait(30)
                runs[scenario.name].append(result)
                print(f"  {scenario.name:28} run {i + 1}: {result.rps:9,.0f} req/s  p50 {result.p50_ms:6.2f}  "
                      f"p90 {result.p90_ms:6.2f}  p99 {result.p99_ms:7.2f} ms  errors {result.errors}"
                      + (f"  cpu {result.cpu_ms_per_request:.2f} ms/req" if result.cpu_ms_per_request else ""),
                      flush=True)
    finally:
        tokens_file.unlink(missing_ok=True)
    summary = {name: median_result(results) for name, results in runs.items()}
    return {
        "started_at": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "url": url, "duration_s": args.duration, "repeats": args.repeats, "threads": args.threads,
        "machine": machine(), "feed_limit_100_bytes": feed_bytes, "loadavg_before": loadavg,
        "seed": {"users": len(seeded.user_ids), "posts": len(seeded.post_ids),
                 "follows": seeded.follows, "likes": seeded.likes},
        "scenarios": summary, "runs": {n: [asdict(r) for r in rs] for n, rs in runs.items()},
        "targets": check_targets(summary),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Minitwitter HTTP benchmark (wrk through the gateway)")
    parser.add_argument("--url", default=os.environ.get("BENCH_URL"),
                        help="a running gateway (default $BENCH_URL; unset: start a stack)")
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
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument("--database-url", default=BENCH_DATABASE_URL)
    parser.add_argument("--redis-url", default=BENCH_REDIS_URL)
    args = parser.parse_args(argv)
    if args.quick:
        args.duration, args.repeats, args.warmup = 3.0, 1, min(args.warmup, 1.0)
    if args.sentiment is None:
        args.sentiment = not args.quick
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (apt-get install -y wrk)")
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    if args.url:
        report = bench(args.url.rstrip("/"), args, None)
    else:
        with local_stack(args.database_url, args.redis_url, RESULTS_DIR / "logs") as (url, master):
            report = bench(url, args, master.pid)
    if args.sentiment:
        report["sentiment"] = run_sentiment_bench()
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    table = markdown(report)
    for name in (f"bench-{stamp}", "latest"):
        (RESULTS_DIR / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
        (RESULTS_DIR / f"{name}.md").write_text(table)
    print("\n" + table + f"\nsaved to {RESULTS_DIR}/bench-{stamp}.{{json,md}}")
    missed = [t["scenario"] for t in report["targets"] if not t["passed"]]
    print("targets: " + ("all met" if not missed else "missed: " + ", ".join(missed)))
    return 1 if missed and args.strict else 0


if __name__ == "__main__":
    sys.exit(main())
