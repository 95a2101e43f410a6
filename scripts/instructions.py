"""Instructions per request: what a request costs the gateway, the same on any machine.

The VMs this project is measured on differ from session to session by up to 3x in speed, so
requests per second from two sessions do not compare (docs/benchmarks.md). Valgrind's callgrind
counts the instructions a process executes, which for the same code and inputs barely change
from machine to machine or with the load beside it. Here the gateway's WSGI app (the functions,
the library, logging, metrics, the 504 hand-off; not granian's HTTP handling) is called
in-process under ``valgrind --tool=callgrind`` against the real PostgreSQL and Redis. Each
scenario runs twice, side by side: start-up, 20 requests of that scenario to warm up, then N
requests in one run and 2N in the other; its instructions per request are (the second total -
the first) / N, so start-up and warm-up cancel out. A run sends only its own scenario's requests:
a write in one run (create-post invalidates the author's cached account and the public
timeline) would otherwise change what a read in the other costs, which made counts differ by
up to 25 % between runs when all scenarios warmed up together. Every thread of the process
counts, the background log writer included.

    make bench-instructions                       # every scenario, N = 300
    python -m scripts.instructions --requests 100 --only get-user

Needs valgrind (Debian package). Uses its own database ``minitwitter_instrbench`` (dropped and
recreated) and Redis DB 12 (flushed) on the machine's servers, like ``make bench``. Two valgrind
runs at a time; about a minute each.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/minitwitter_instrbench"
REDIS_URL = "redis://127.0.0.1:6379/12"
WARMUP = 20
#: scenario -> (method, path template, needs a token); ``{post}``/``{user}`` come from the seed.
SCENARIOS: dict[str, tuple[str, str, bool]] = {
    "get-user": ("GET", "/function/get-user/id/{user}", False),
    "get-post": ("GET", "/function/get-post/{post}", False),
    "list-posts limit=20": ("GET", "/function/list-posts?limit=20", False),
    "list-posts limit=100": ("GET", "/function/list-posts?limit=100", False),
    "home-timeline": ("GET", "/function/home-timeline", True),
    "create-post": ("POST", "/function/create-post", True),
}
COLLECTED = re.compile(r"Collected\s*:\s*(\d+)")


def environment(prom_dir: str) -> dict[str, str]:
    """The gateway's settings, as ``make bench`` gives them (budgets raised, VADER), except that
    timed background work is held back (see :func:`child`)."""
    from scripts.bench import stack_env

    return {**stack_env(DATABASE_URL, REDIS_URL, 18999, Path(prom_dir)),
            "GATEWAY_STATE_TTL": "3600", "LOG_PRUNE_INTERVAL": "3600"}


def request_once(app: Any, method: str, target: str, token: str | None, body: bytes = b"") -> int:
    """One WSGI call of the gateway app; its status code."""
    path, _, query = target.partition("?")
    environ: dict[str, Any] = {
        "REQUEST_METHOD": method, "PATH_INFO": path, "QUERY_STRING": query, "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "18999", "SERVER_PROTOCOL": "HTTP/1.1", "REMOTE_ADDR": "127.0.0.1",
        "HTTP_HOST": "127.0.0.1:18999", "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO(body),
        "wsgi.errors": sys.stderr, "wsgi.multithread": True, "wsgi.multiprocess": True,
        "wsgi.run_once": False, "wsgi.version": (1, 0),
    }
    if body:
        environ["CONTENT_LENGTH"] = str(len(body))
        environ["CONTENT_TYPE"] = "application/json"
    if token:
        environ["HTTP_AUTHORIZATION"] = f"Bearer {token}"
    status: list[str] = []
    b"".join(app(environ, lambda s, _h, _e=None: status.append(s)))
    return int(status[0].split(" ", 1)[0])


class _Headers:
    """What the edge reads of granian's RSGI headers: ``items``, ``get``, ``in``."""

    def __init__(self, pairs: list[tuple[str, str]]) -> None:
        self.pairs = pairs

    def items(self) -> list[tuple[str, str]]:
        return self.pairs

    def get(self, key: str, default: Any = None) -> Any:
        return next((v for k, v in self.pairs if k == key), default)

    def __contains__(self, key: str) -> bool:
        return any(k == key for k, _ in self.pairs)


class _Scope:
    """An RSGI HTTP scope as granian builds it."""

    proto = "http"
    http_version = "1.1"
    scheme = "http"
    client = "127.0.0.1:50000"
    server = "127.0.0.1:18999"
    authority = None

    def __init__(self, method: str, path: str, query: str, headers: list[tuple[str, str]]) -> None:
        self.method, self.path, self.query_string = method, path, query
        self.headers = _Headers(headers)


class _Protocol:
    """An RSGI HTTP protocol: the body whole (``await proto()``) or in one chunk, the response
    captured."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.status = 0

    async def __call__(self) -> bytes:
        return self.body

    def __aiter__(self) -> Any:
        async def chunks() -> Any:
            if self.body:
                yield self.body
        return chunks()

    def response_bytes(self, status: int, _headers: list[tuple[str, str]], _body: bytes) -> None:
        self.status = status


async def edge_request(edge: Any, method: str, target: str, token: str | None, body: bytes = b"") -> int:
    """One request through the serving edge (RSGI, as granian calls it)."""
    path, _, query = target.partition("?")
    headers = [("host", "127.0.0.1:18999")]
    if body:
        headers += [("content-length", str(len(body))), ("content-type", "application/json")]
    if token:
        headers.append(("authorization", f"Bearer {token}"))
    proto = _Protocol(body)
    await edge.__rsgi__(_Scope(method, path, query, headers), proto)
    return proto.status


def caller(app: Any, seed: dict[str, Any], scenario: str) -> Callable[[range], list[int]]:
    """``call(numbers)``: the scenario's requests with those numbers (create-post writes a new
    text each time), one after the other; their status codes. Through the serving edge they
    run on one event loop, as granian runs them (one loop run for all of them)."""
    method, template, needs_token = SCENARIOS[scenario]
    target = template.format(user=seed["user_ids"][0], post=seed["post_ids"][0])
    token = seed["tokens"][0] if needs_token else None

    def body(i: int) -> bytes:
        return json.dumps({"content": f"instruction count post {i}"}).encode() if method == "POST" else b""

    if not hasattr(app, "__rsgi__"):
        return lambda numbers: [request_once(app, method, target, token, body(i)) for i in numbers]
    import uvloop

    loop = uvloop.new_event_loop()
    app.start(loop)

    async def requests(numbers: range) -> list[int]:
        return [await edge_request(app, method, target, token, body(i)) for i in numbers]

    return lambda numbers: loop.run_until_complete(requests(numbers))


def child(scenario: str, requests: int, seed_file: str) -> None:
    """Inside valgrind: start-up, the scenario's warm-up, then ``requests`` more of it.

    Work done on a timer (the log writer's 50 ms ticks, the metrics' 100 ms flushes, the
    registry's re-read every second, the log pruner) would run far more often under valgrind's
    ~50x slow-down than beside the same requests in a real server, and by chance: held back
    here, the log lines and metric updates are written and stored in one batch at the end
    (counted), the registry is read once at start-up.
    """
    from minitwitter import logs, metrics

    logs.WRITE_INTERVAL = logs.SHIP_INTERVAL = metrics.FLUSH_INTERVAL = 3600.0
    from gateway import rsgi

    app = rsgi.gateway if os.environ.get("INSTR_THROUGH") == "wsgi" else rsgi.app
    seed = json.loads(Path(seed_file).read_text())
    call = caller(app, seed, scenario)
    statuses = call(range(WARMUP))
    if not all(200 <= status < 300 for status in statuses):  # 0: the edge sent no response
        raise SystemExit(f"{scenario} answered {statuses} during the warm-up")
    call(range(WARMUP, WARMUP + requests))
    metrics.flush()
    logs.flush()


def seed_stores(seed_file: str) -> None:
    """Seed through the functions, in-process (``make bench``'s seed over a WSGI transport)."""
    import httpx

    from gateway.rsgi import gateway as app  # the WSGI Gateway behind the serving edge
    from scripts.bench import seed

    with httpx.Client(transport=httpx.WSGITransport(app=app), base_url="http://gateway") as client:
        made = seed(client, prefix="instr")
    Path(seed_file).write_text(json.dumps({"user_ids": made.user_ids, "post_ids": made.post_ids,
                                           "tokens": made.tokens}))


def run_python(args: list[str], env: dict[str, str], valgrind: bool = False) -> str:
    """Run this script's own mode in a new process; its stderr."""
    command = [sys.executable, "-m", "scripts.instructions", *args]
    if valgrind:
        out = tempfile.mktemp(prefix="callgrind-", suffix=".out")
        command = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *command]
    done = subprocess.run(command, env=env, cwd=REPO_ROOT, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True, check=False)
    if valgrind:
        Path(out).unlink(missing_ok=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{done.stderr[-2000:]}")
    return done.stderr


def instructions(args: list[str], env: dict[str, str]) -> int:
    """Instructions callgrind counted for one run of this script's ``--child`` mode."""
    found = COLLECTED.findall(run_python(args, env, valgrind=True))
    if not found:
        raise SystemExit("valgrind printed no instruction count")
    return int(found[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=300, help="requests per scenario (300)")
    parser.add_argument("--only", action="append", default=[], help="scenarios whose name contains this")
    parser.add_argument("--through", choices=["edge", "wsgi"], default="edge",
                        help="edge: requests enter the serving edge as granian hands them over "
                             "(default); wsgi: the Gateway's WSGI app, without the edge")
    parser.add_argument("--child", nargs=2, metavar=("SCENARIO", "N"), help=argparse.SUPPRESS)
    parser.add_argument("--seed", metavar="FILE", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]), os.environ["INSTR_SEED_FILE"])
        return 0
    if args.seed:
        seed_stores(args.seed)
        return 0
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (apt-get install valgrind)")
    from scripts.bench import reset_stores

    names = [n for n in SCENARIOS if not args.only or any(o in n for o in args.only)]
    with tempfile.TemporaryDirectory(prefix="instr-") as tmp:
        env = {**environment(tmp), "INSTR_SEED_FILE": str(Path(tmp) / "seed.json"),
               "INSTR_THROUGH": args.through}
        reset_stores(DATABASE_URL, REDIS_URL)
        subprocess.run([sys.executable, "-m", "minitwitter.migrate"], env=env, cwd=REPO_ROOT, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        run_python(["--seed", env["INSTR_SEED_FILE"]], env)
        print(f"Instructions per request (callgrind, in-process, through the {args.through}, runs of "
              f"{args.requests} and {2 * args.requests} requests per scenario):\n")
        print("| scenario | instructions per request |\n|---|---:|")
        with ThreadPoolExecutor(max_workers=2) as pool:
            for name in names:
                short, long = pool.map(lambda n, name=name: instructions(["--child", name, str(n)], env),
                                       (args.requests, 2 * args.requests))
                print(f"| {name} | {(long - short) / args.requests:,.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
