"""`make run` on a machine with nothing running: embedded stores, gateway, workers, clean stop.

The standard ports probed on 127.0.0.1 are pointed at unused ports (``LOCAL_PG_PORT`` /
``LOCAL_REDIS_PORT``), so this reproduces a bare machine without touching the machine's own
PostgreSQL and Redis.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from gateway import embedded
from minitwitter.config import REPO_ROOT, ensure_dev_secrets
from scripts.procfs import child_pids, process_name, process_tree

from .conftest import eventually

pytestmark = [pytest.mark.slow, pytest.mark.no_stores]


def test_make_run_on_a_bare_machine_serves_the_api_and_stops_everything(tmp_path: Path):
    ports = {name: embedded.free_port() for name in
             ("LOCAL_PG_PORT", "LOCAL_REDIS_PORT", "EMBEDDED_PG_PORT", "EMBEDDED_REDIS_PORT", "GATEWAY_PORT")}
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env.update({k: str(v) for k, v in ports.items()})
    env.update({
        "DATA_DIR": str(tmp_path / "data"), "SECRETS_DIR": str(ensure_dev_secrets(tmp_path / "secrets")),
        "WORKER_COUNT": "1", "GATEWAY_WORKERS": "1", "SENTIMENT_BACKEND": "vader",
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "shared"), str(REPO_ROOT)]),
    })
    proc = subprocess.Popen([sys.executable, "-m", "gateway.run"], env=env, cwd=REPO_ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    output: list[str] = []
    reader = threading.Thread(target=lambda: output.extend(iter(proc.stdout.readline, "")), daemon=True)
    reader.start()
    url = f"http://127.0.0.1:{ports['GATEWAY_PORT']}"
    try:
        eventually(lambda: any("Minitwitter is running" in line for line in output) or proc.poll() is not None,
                   timeout=180, interval=0.5)
        assert proc.poll() is None, "".join(output)[-3000:]
        text = "".join(output)
        assert "starting the embedded one" in text  # both stores were embedded
        assert f"postgresql://postgres@127.0.0.1:{ports['EMBEDDED_PG_PORT']}/minitwitter" in text
        assert f"redis://127.0.0.1:{ports['EMBEDDED_REDIS_PORT']}/0" in text
        assert "basic-auth-password" in text and url in text

        with httpx.Client(base_url=url, timeout=30) as client:
            assert client.get("/healthz").json()["status"] == "ok"
            creds = {"username": "bare_machine", "password": "correct horse battery"}
            assert client.post("/function/register", json=creds).status_code == 201
            token = client.post("/function/login", json=creds).json()["access_token"]
            post = client.post("/function/create-post", json={"content": "What a wonderful day!"},
                               headers={"Authorization": f"Bearer {token}"}).json()
            assert post["sentiment"]["status"] == "pending"

            def labelled():
                got = client.get(f"/function/get-post/{post['id']}").json()["sentiment"]
                return got if got["status"] == "done" else None

            verdict = eventually(labelled, timeout=60, interval=0.5)
            assert verdict["label"] == "positive"
        # The gateway and the queue side are forks of this process, not new programs, so that all
        # of them share its preloaded pages; it runs no thread (a fork would inherit its locks).
        names = sorted(name for name in map(process_name, process_tree(proc.pid)) if name.startswith("mt-"))
        assert names == ["mt-gateway", "mt-gateway-main", "mt-queue-worker", "mt-scheduler", "mt-worker-sup"], names
        run_cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes()
        forked = {process_name(pid): pid for pid in child_pids(proc.pid)}
        for name in ("mt-gateway-main", "mt-worker-sup"):
            assert Path(f"/proc/{forked[name]}/cmdline").read_bytes() == run_cmdline, name
        assert "Threads:\t1\n" in Path(f"/proc/{proc.pid}/status").read_text()
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # Ctrl-C
        try:
            code = proc.wait(90)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            raise
    assert code == 0, "".join(output)[-3000:]
    time.sleep(0.5)
    for name in ("GATEWAY_PORT", "EMBEDDED_PG_PORT", "EMBEDDED_REDIS_PORT"):
        assert not embedded.port_open("127.0.0.1", ports[name]), f"{name} still open after Ctrl-C"


def test_make_run_stops_at_once_when_its_port_is_taken(tmp_path: Path):
    """A port another program listens on is reported, not crash-looped behind a false banner."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {**os.environ, "GATEWAY_PORT": str(port), "DATA_DIR": str(tmp_path / "data"),
               "SECRETS_DIR": str(ensure_dev_secrets(tmp_path / "secrets")),
               "PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "shared"), str(REPO_ROOT)])}
        done = subprocess.run([sys.executable, "-m", "gateway.run"], env=env, cwd=REPO_ROOT,
                              capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"127.0.0.1:{port} is already in use by another program" in done.stderr
    assert "Minitwitter is running" not in done.stdout
