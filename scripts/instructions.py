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


def caller(app: Any, seed: dict[str, Any], scenario: str) -> Callable[[int], int]:
    """``call(i)``: the scenario's i-th request (create-post writes a new text each time)."""
    method, template, needs_token = SCENARIOS[scenario]
    target = template.format(user=seed["user_ids"][0], post=seed["post_ids"][0])
    token = seed["tokens"][0] if needs_token else None
    if method == "POST":
        return lambda i: request_once(app, method, target, token,
                                      json.dumps({"content": f"instruction count post {i}"}).encode())
    return lambda _i: request_once(app, method, target, token)


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
    from gateway.rsgi import gateway as app  # the WSGI Gateway behind the serving edge

    seed = json.loads(Path(seed_file).read_text())
    call = caller(app, seed, scenario)
    for i in range(WARMUP):
        status = call(i)
        if status >= 300:
            raise SystemExit(f"{scenario} answered {status} during the warm-up")
    for i in range(requests):
        call(WARMUP + i)
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
        env = {**environment(tmp), "INSTR_SEED_FILE": str(Path(tmp) / "seed.json")}
        reset_stores(DATABASE_URL, REDIS_URL)
        subprocess.run([sys.executable, "-m", "minitwitter.migrate"], env=env, cwd=REPO_ROOT, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        run_python(["--seed", env["INSTR_SEED_FILE"]], env)
        print(f"Instructions per request (callgrind, in-process gateway app, runs of {args.requests}"
              f" and {2 * args.requests} requests per scenario):\n")
        print("| scenario | instructions per request |\n|---|---:|")
        with ThreadPoolExecutor(max_workers=2) as pool:
            for name in names:
                short, long = pool.map(lambda n, name=name: instructions(["--child", name, str(n)], env),
                                       (args.requests, 2 * args.requests))
                print(f"| {name} | {(long - short) / args.requests:,.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
