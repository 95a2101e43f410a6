"""``make run``'s process tree as an operator meets it: children killed and replaced, Ctrl-C and
SIGTERM, and a Redis that goes away and comes back. Real processes, real stores; the stop and
replacement deadlines are the issue's functional bounds (a stop used to take 37-72 s and end in
SIGKILLs), not speed measurements."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway import embedded
from gateway.serve import MAIN_PROCESS_NAME, SERVER_PROCESS_NAME
from gateway.worker import QUEUE_WORKER_NAME, SCHEDULER_NAME, SUPERVISOR_NAME
from minitwitter import db
from minitwitter.config import REPO_ROOT

from .callback_receiver import Receiver
from .conftest import base_env, child_pids, eventually, process_running

pytestmark = pytest.mark.slow

FIXTURE_STACK = str(REPO_ROOT / "tests" / "fixtures" / "stack.yml")


class Run:
    """``python -m gateway.run`` in a session of its own, as a terminal would hold it."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.port = int(env["GATEWAY_PORT"])
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.proc = subprocess.Popen([sys.executable, "-m", "gateway.run"], env=env, cwd=REPO_ROOT,
                                     stdout=open(log_path, "ab"), stderr=subprocess.STDOUT,  # noqa: SIM115
                                     start_new_session=True)
        eventually(lambda: "Minitwitter is running" in log_path.read_text() or self.proc.poll() is not None,
                   timeout=120, interval=0.2)
        assert self.proc.poll() is None, log_path.read_text()[-3000:]

    def tree(self) -> list[int]:
        """Every process below ``make run`` (children, theirs, and so on)."""
        found, todo = [], [self.proc.pid]
        while todo:
            for pid in child_pids(todo.pop()):
                found.append(pid)
                todo.append(pid)
        return found

    def named(self, name: str) -> list[int]:
        return [pid for pid in self.tree() if comm(pid) == name]

    def kill_all(self) -> None:
        for pid in [self.proc.pid, *self.tree()]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(10)


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


@pytest.fixture
def make_run(stores: dict[str, str], tmp_path: Path) -> Iterator[Any]:
    running: list[Run] = []

    def start(**extra: str) -> Run:
        db.run("DELETE FROM gateway_functions")
        env = base_env(stores, GATEWAY_PORT=str(embedded.free_port()), DATA_DIR=str(tmp_path / "data"),
                       GATEWAY_WORKERS="2", WORKER_COUNT="2", **extra)
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        running.append(Run(env, tmp_path / f"run-{len(running)}.log"))
        return running[-1]

    yield start
    for run in running:
        if run.proc.poll() is None:
            run.kill_all()


class Writer:
    """Creates posts one after another, each with its own Idempotency-Key, retrying a post on a
    connection error or a 5xx until it is acknowledged (201, or 200 for a replay)."""

    def __init__(self, url: str, token: str) -> None:
        self.client = httpx.Client(base_url=url, timeout=30, headers={"Authorization": f"Bearer {token}"})
        self.acknowledged: list[str] = []
        self.failed_attempts = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        while not self.stop.is_set():
            key = uuid.uuid4().hex
            while True:
                try:
                    response = self.client.post("/function/create-post", json={"content": f"great day {key}"},
                                                headers={"Idempotency-Key": key})
                    if response.status_code in (200, 201):
                        self.acknowledged.append(response.json()["id"])
                        break
                    assert response.status_code >= 500, response.text  # only the stack's faults
                except httpx.TransportError:
                    pass
                self.failed_attempts += 1
                time.sleep(0.1)
            time.sleep(0.05)

    def __enter__(self) -> Writer:
        self.thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop.set()
        self.thread.join(60)
        self.client.close()


def kill_and_see_replaced(run: Run, find: Any, times: int = 3) -> None:
    """SIGKILL one process found by ``find()`` ``times`` times in a row; each time a new one must
    take its place within 5 s and the service answer."""
    for _ in range(times):
        before = find()
        assert before, "nothing to kill"
        victim = before[0]
        os.kill(victim, signal.SIGKILL)
        eventually(lambda: len(find()) == len(before) and victim not in find(), timeout=5, interval=0.05)  # noqa: B023
        eventually(lambda: healthy(run.url), timeout=10)


def healthy(url: str) -> bool:
    try:
        return httpx.get(url + "/healthz", timeout=5).status_code == 200
    except httpx.TransportError:
        return False


def test_every_kind_of_child_is_replaced_and_nothing_acknowledged_is_lost(make_run: Any) -> None:
    # A queue worker killed mid-batch leaves its items pending: the reconciler re-enqueues those
    # pending longer than the grace (60 s by default, 5 s here, so the test ends sooner).
    run = make_run(SENTIMENT_PENDING_GRACE="5", RECONCILE_INTERVAL="5")
    creds = {"username": "supervised", "password": "correct horse battery"}
    assert httpx.post(run.url + "/function/register", json=creds, timeout=30).status_code == 201
    token = httpx.post(run.url + "/function/login", json=creds, timeout=30).json()["access_token"]
    with Writer(run.url, token) as writer:
        eventually(lambda: len(writer.acknowledged) >= 5)
        kill_and_see_replaced(run, lambda: run.named(SERVER_PROCESS_NAME))  # gateway server processes
        kill_and_see_replaced(run, lambda: run.named(QUEUE_WORKER_NAME))   # queue workers
        kill_and_see_replaced(run, lambda: run.named(SCHEDULER_NAME))      # the scheduler
        kill_and_see_replaced(run, lambda: run.named(MAIN_PROCESS_NAME), times=1)  # and their supervisors
        kill_and_see_replaced(run, lambda: run.named(SUPERVISOR_NAME), times=1)
        written = len(writer.acknowledged)
        eventually(lambda: len(writer.acknowledged) >= written + 5)  # still writing
    acknowledged = writer.acknowledged
    assert len(acknowledged) == len(set(acknowledged))
    stored = {str(i) for (i,) in db.run("SELECT id FROM posts")}
    assert stored == set(acknowledged)  # nothing acknowledged lost, nothing written twice
    eventually(lambda: db.scalar("SELECT count(*) FROM posts WHERE sentiment_status <> 'done'") == 0,
               timeout=60, interval=0.5)  # every post labelled (the reconciler picks up stragglers)
    metrics = httpx.get(run.url + "/metrics").text
    for kind, least in (("gateway-server", 3), ("queue-worker", 3), ("scheduler", 3), ("gateway", 1),
                        ("worker-supervisor", 1)):
        line = next(x for x in metrics.splitlines()
                    if x.startswith(f'minitwitter_process_restarts_total{{kind="{kind}"}}'))
        assert float(line.rsplit(" ", 1)[1]) >= least, line
    log = run.log_path.read_text()
    assert log.count("starting a new one") >= 11  # one line per restart


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_a_stop_finishes_the_request_in_flight_and_leaves_nothing_behind(make_run: Any, how: str) -> None:
    """Ctrl-C in a terminal sends SIGINT to the whole foreground process group; an operator's
    stop sends SIGTERM to ``make run`` alone. Either way: the request in flight is answered,
    everything is gone within a few seconds, the port is closed, exit code 0."""
    run = make_run(STACK_FILE=FIXTURE_STACK)
    tree = run.tree()
    assert len(tree) >= 7  # 2 supervisors, 2 server processes, 2 queue workers, the scheduler
    answers: list[httpx.Response] = []
    caller = threading.Thread(target=lambda: answers.append(
        httpx.get(run.url + "/function/sleepy?seconds=2", timeout=30)))
    caller.start()
    eventually(lambda: 'gateway_function_invocation_inflight{function_name="sleepy.openfaas-fn"} 1.0'
               in httpx.get(run.url + "/metrics").text, interval=0.05)
    started = time.monotonic()
    if how == "ctrl-c":
        os.killpg(run.proc.pid, signal.SIGINT)
    else:
        run.proc.send_signal(signal.SIGTERM)
    assert run.proc.wait(30) == 0
    stopped_in = time.monotonic() - started
    caller.join()
    assert answers[0].status_code == 200 and answers[0].json() == {"slept": 2.0}
    assert stopped_in < 2 + 5, f"stop took {stopped_in:.1f} s"  # the request's 2 s, then < 5 s
    assert not [pid for pid in tree if process_running(pid)]
    assert not embedded.port_open("127.0.0.1", run.port)
    assert "killed after the grace period" not in run.log_path.read_text()


def test_an_idle_stack_stops_within_five_seconds(make_run: Any) -> None:
    run = make_run(STACK_FILE=FIXTURE_STACK)
    tree = run.tree()
    started = time.monotonic()
    os.killpg(run.proc.pid, signal.SIGINT)
    assert run.proc.wait(30) == 0
    assert time.monotonic() - started < 5
    assert not [pid for pid in tree if process_running(pid)]


# --- Redis going away and coming back -------------------------------------------------------------

@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[Any]:
    servers = [embedded.start_redis(tmp_path / "redis", binary=embedded.system_redis_binary())]

    class Handle:
        url = servers[0].url
        port = servers[0].port

        def stop(self) -> None:
            servers[-1].stop()

        def start(self) -> None:
            servers.append(embedded.start_redis(tmp_path / "redis", port=self.port,
                                                binary=embedded.system_redis_binary()))

    yield Handle()
    for server in servers:
        server.stop()


def test_after_a_redis_restart_scheduled_work_resumes_and_nothing_answers_500(
        start_gateway: Any, start_workers: Any, own_redis: Any, stores: dict[str, str]) -> None:
    env = {"REDIS_URL": own_redis.url, "STACK_FILE": FIXTURE_STACK, "SENTIMENT_PENDING_GRACE": "1",
           "RECONCILE_INTERVAL": "3600"}
    gw = start_gateway(**env)
    start_workers(GATEWAY_URL=gw.url, **env)
    with Receiver(fail_first=1) as receiver, httpx.Client(base_url=gw.url, timeout=30) as client:
        # A callback whose first delivery fails: its retry waits in RQ's scheduled registry.
        assert client.post("/async-function/echo", content=b"scheduled",
                           headers={"X-Callback-Url": receiver.url}).status_code == 202
        eventually(lambda: receiver.attempts >= 1)
        own_redis.stop()  # the retry is in its append-only file
        # A post written while Redis is away (as create-post does then: stored, not queued).
        author = db.scalar("INSERT INTO users (username, password_hash) VALUES ('outage', 'x') RETURNING id")
        post = db.scalar("INSERT INTO posts (author_id, content) VALUES (:a, 'what a lovely day')"
                         " RETURNING id", a=author)
        health = client.get("/healthz")
        assert health.status_code == 200
        assert health.json() == {"status": "degraded", "checks": {"postgres": "ok", "redis": "down"}}
        during = client.post("/async-function/echo", content=b"x", headers={"X-Callback-Url": receiver.url})
        assert during.status_code == 503 and during.headers["Retry-After"]
        assert during.json()["error"].startswith("Error queuing request")
        time.sleep(2)
        own_redis.start()
        back = time.monotonic()
        # The first calls on connections made before the restart: retried or 503, never 500.
        for _ in range(6):
            answer = client.post("/async-function/echo", content=b"after", headers={"X-Callback-Url": receiver.url})
            assert answer.status_code in (202, 503), answer.text
        eventually(lambda: any(b'"body":"scheduled"' in r["body"] for r in receiver.received), timeout=10)
        # the reconciler ran on Redis's return (its interval is an hour) and the post was labelled
        eventually(lambda: db.scalar("SELECT sentiment_status FROM posts WHERE id = :i", i=post) == "done",
                   timeout=10)
        assert time.monotonic() - back < 10
        eventually(lambda: client.get("/healthz").json()["status"] == "ok")
