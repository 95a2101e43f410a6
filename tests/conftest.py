"""Test harness: real PostgreSQL and Redis, a private database and Redis DB index per run.

Stores: ``MT_TEST_PG`` (a server URL) or the machine's 127.0.0.1:5432, else an embedded
PostgreSQL; ``MT_TEST_REDIS`` (a server URL) or 127.0.0.1:6379, else an embedded Redis. The
database is ``MT_TEST_DB`` (default ``minitwitter_test``), recreated each session; the Redis DB
index is ``MT_TEST_REDIS_DB`` (default 13), flushed around every test. Parallel runs on one
machine must set different values.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pg8000.native
import pytest

from gateway import embedded, serve
from gateway.run import stop_services
from minitwitter import cache, db, migrate
from minitwitter.config import REPO_ROOT, ensure_dev_secrets, load_config, set_config
from scripts.procfs import child_pids

DB_NAME = os.environ.get("MT_TEST_DB", "minitwitter_test")
REDIS_DB = int(os.environ.get("MT_TEST_REDIS_DB", "13"))
#: Tables emptied before every test, children first (gateway_functions is managed by the
#: gateway tests). DELETE + sequence reset: on tiny tables it is ~100x cheaper than TRUNCATE,
#: which rewrites every relation file.
DATA_TABLES = ("logs", "sentiment_callbacks", "callback_deliveries", "idempotency_keys", "likes",
               "comments", "posts", "follows", "users")
RESET_SQL = ("BEGIN; " + "; ".join(f"DELETE FROM {t}" for t in DATA_TABLES) + "; "
             "SELECT setval(c.oid, 1, false) FROM pg_class c WHERE c.relkind = 'S'; COMMIT")


def _server_urls(tmp: Path) -> tuple[str, str, list[Any]]:
    started: list[Any] = []
    pg = os.environ.get("MT_TEST_PG")
    if not pg:
        if embedded.port_open("127.0.0.1", 5432):
            pg = "postgresql://postgres@127.0.0.1:5432/postgres"
        else:
            server = embedded.start_postgres(tmp / "pg")
            started.append(server)
            pg = server.url
    rd = os.environ.get("MT_TEST_REDIS")
    if not rd:
        if embedded.port_open("127.0.0.1", 6379):
            rd = "redis://127.0.0.1:6379/0"
        else:
            server = embedded.start_redis(tmp / "redis")
            started.append(server)
            rd = server.url
    return pg, rd, started


@pytest.fixture(scope="session")
def stores(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Database and Redis URLs of this test session (database freshly created and migrated)."""
    tmp = tmp_path_factory.mktemp("stores")
    pg, rd, started = _server_urls(tmp)
    params = db.connect_params(pg)
    admin = pg8000.native.Connection(**{**params, "database": "postgres"})
    admin.run(f"DROP DATABASE IF EXISTS {pg8000.native.identifier(DB_NAME)} WITH (FORCE)")
    admin.run(f"CREATE DATABASE {pg8000.native.identifier(DB_NAME)}")
    admin.close()
    database_url = pg.rsplit("/", 1)[0] + "/" + DB_NAME
    redis_url = rd.rsplit("/", 1)[0] + f"/{REDIS_DB}"
    secrets_dir = ensure_dev_secrets(tmp / "secrets")
    urls = {"DATABASE_URL": database_url, "REDIS_URL": redis_url, "SECRETS_DIR": str(secrets_dir)}
    set_config(load_config(urls))
    migrate.migrate()
    db.close_connection()
    yield urls
    for server in started:
        server.stop()


def base_env(stores: dict[str, str], **extra: str) -> dict[str, str]:
    """Environment for processes the tests start (gateway, workers) and for load_config."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "REDIS_"))}
    env.update(stores)
    env.update({
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "shared"), str(REPO_ROOT)]),
        "LOG_LEVEL": "INFO",
        "RATE_LIMIT_ENABLED": "false",
        "CALLBACK_ALLOW_HOSTS": "127.0.0.1,localhost,::1",
        "SENTIMENT_BACKEND": "vader",
        "OLLAMA_HOST": "http://127.0.0.1:9",
        # Anonymous reads through a test gateway see every write at once; the micro-cache's own
        # tests (tests/test_microcache.py) turn it on.
        "GATEWAY_MICROCACHE_TTL": "0",
        # ...and every request line is stored, fast reads too (tests look requests up by call id).
        "LOG_STORE_READS_ONE_IN": "1",
    })
    env.update(extra)
    return env


@pytest.fixture(autouse=True)
def config(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A fresh process config per test (tests needing none of the stores skip it)."""
    if "no_stores" in request.keywords:
        yield None
        return
    stores = request.getfixturevalue("stores")
    env = base_env(stores)
    for key in ("DATABASE_URL", "REDIS_URL", "SECRETS_DIR", "RATE_LIMIT_ENABLED",
                "CALLBACK_ALLOW_HOSTS", "SENTIMENT_BACKEND", "OLLAMA_HOST"):
        monkeypatch.setenv(key, env[key])
    cfg = load_config(env)
    set_config(cfg)
    cache.reset()
    db.close_connection()
    db.run(RESET_SQL)
    cache.client().flushdb()
    yield cfg
    db.close_connection()
    cache.reset()
    set_config(None)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "no_stores: the test needs neither PostgreSQL nor Redis")


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """tests/containers/ (Docker images and the compose stack) runs only in
    `make test-containers`, which sets MT_CONTAINER_TESTS=1."""
    if collection_path.name == "containers" and collection_path.parent == Path(__file__).parent:
        return not os.environ.get("MT_CONTAINER_TESTS") or None
    return None


# --- processes ------------------------------------------------------------------------------

def wait_http(url: str, timeout: float = 30.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Wait until ``url`` answers (any status)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} answered")
        try:
            httpx.get(url, timeout=1.0)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout}s")


class Gateway:
    """A real gateway (``python -m gateway.serve``: granian) subprocess."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.port = embedded.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**env, "GATEWAY_PORT": str(self.port), "GATEWAY_BIND": "127.0.0.1",
                    "GATEWAY_URL": self.url}
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        if "PROMETHEUS_MULTIPROC_DIR" not in self.env:
            prom = log_path.with_suffix(".prom")
            prom.mkdir(exist_ok=True)
            self.env["PROMETHEUS_MULTIPROC_DIR"] = str(prom)

    def start(self) -> Gateway:
        log = open(self.log_path, "ab")  # noqa: SIM115 - lives as long as the process
        self.proc = subprocess.Popen(
            serve.command(), env=self.env, cwd=REPO_ROOT, stdout=log, stderr=log)
        wait_http(self.url + "/healthz", proc=self.proc)
        return self

    def stop(self) -> None:
        if self.proc:
            stop_services([self.proc], grace=20)

    def auth(self) -> tuple[str, str]:
        secrets = Path(self.env["SECRETS_DIR"])
        return ((secrets / "basic-auth-user").read_text().strip(),
                (secrets / "basic-auth-password").read_text().strip())


class Workers:
    """Real RQ worker processes (``python -m gateway.worker``)."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env = env
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Workers:
        log = open(self.log_path, "ab")  # noqa: SIM115
        # Own process group: RQ forks a scheduler process that must not outlive the test.
        self.proc = subprocess.Popen([sys.executable, "-m", "gateway.worker"], env=self.env,
                                     cwd=REPO_ROOT, stdout=log, stderr=log, start_new_session=True)
        return self

    def stop(self, sig: int | None = None) -> None:
        """Stop the workers (SIGTERM: warm shutdown; SIGKILL: the supervisor and every child it
        forked die at once, as in a crash of the whole container)."""
        if self.proc is None:
            return
        family = [self.proc.pid, *child_pids(self.proc.pid)]
        if self.proc.poll() is None:
            if sig == signal.SIGKILL:
                for pid in family:
                    with suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                self.proc.wait(20)
            else:
                stop_services([self.proc], grace=40, sig=sig or signal.SIGTERM)
        for pid in family:  # any straggler
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def start_gateway(stores: dict[str, str], tmp_path: Path) -> Iterator[Any]:
    """Factory: start a gateway subprocess with extra env; all are stopped after the test."""
    running: list[Gateway] = []

    def start(**extra: str) -> Gateway:
        if not running:
            db.run("DELETE FROM gateway_functions")  # each test starts from its own stack file
        gw = Gateway(base_env(stores, **extra), tmp_path / f"gateway-{len(running)}.log").start()
        running.append(gw)
        return gw

    yield start
    for gw in running:
        gw.stop()


@pytest.fixture
def start_workers(stores: dict[str, str], tmp_path: Path) -> Iterator[Any]:
    """Factory: start queue-worker processes with extra env; all are stopped after the test."""
    running: list[Workers] = []

    def start(**extra: str) -> Workers:
        workers = Workers(base_env(stores, **extra), tmp_path / f"workers-{len(running)}.log").start()
        running.append(workers)
        return workers

    yield start
    for workers in running:
        workers.stop()


T = TypeVar("T")


def at_once(call: Callable[[], T], times: int) -> list[T]:
    """Run ``call`` on ``times`` threads at once; their results (each thread closes its own
    database connection when done)."""
    results: list[T] = []

    def run() -> None:
        try:
            results.append(call())
        finally:
            db.close_connection()

    threads = [threading.Thread(target=run) for _ in range(times)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


@contextmanager
def writing_meanwhile(write: Callable[[], int]) -> Iterator[list[int]]:
    """Run ``write`` in a loop on one thread for the duration of the block, which starts once a
    first write has landed; yields the ids written (the list grows meanwhile).

    One writer, so ids become visible in the order they were given (with two, a higher id could
    show before a lower one: each write's cache update follows its own commit).
    """
    stop = threading.Event()
    written: list[int] = []

    def writer() -> None:
        try:
            while not stop.is_set():
                written.append(write())
        finally:
            db.close_connection()

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        eventually(lambda: written)
        yield written
    finally:
        stop.set()
        thread.join()


def eventually(check: Any, timeout: float = 15.0, interval: float = 0.1) -> Any:
    """Poll ``check()`` until it returns a truthy value (bounded); return that value."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s (last value: {last!r})")


def record_redis_writes(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Record every write on this thread's Redis connection from now on (one entry per write,
    however many commands it carries): how tests count round trips."""
    connection = cache.client().connection
    writes: list[bytes] = []
    send = connection.send_packed_command

    def recording(command: Any, *args: Any, **kwargs: Any) -> Any:
        writes.append(b"".join(command) if isinstance(command, list) else bytes(command))
        return send(command, *args, **kwargs)

    monkeypatch.setattr(connection, "send_packed_command", recording)
    return writes


@pytest.fixture
def api() -> Any:
    """An :class:`tests.api.Api` for calling functions in-process."""
    from tests.api import Api

    return Api()


def process_running(pid: int) -> bool:
    """True while ``pid`` exists and is neither a zombie nor dead."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    state = next((line.split()[1] for line in status.splitlines() if line.startswith("State:")), "")
    return state not in ("Z", "X")
