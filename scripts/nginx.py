"""Debian's nginx, run by ``make bench`` and by the tests (one copy of the code for both).

* :func:`render_conf` turns the repository's ``gateway/nginx.conf`` (the compose stack's only
  public entry) into one that runs on this host, with exactly three substitutions: the two
  upstream servers (``gateway-1:8080`` / ``gateway-2:8080`` → local gateways), the listen address,
  and the ``/tmp`` paths (→ a private folder). Everything else runs as shipped.
  ``tests/test_nginx.py`` proves that file with it; ``scripts/bench.py --topology seed`` measures
  through it.
* :func:`static_conf` is the benchmark's yardstick: one worker process, access log off,
  sendfile on, serving the files of one folder.
* :func:`start` runs a configuration in the foreground (checked with ``nginx -t`` first) under a
  private prefix and waits until it listens; :func:`stop` ends it gracefully (SIGQUIT).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from gateway.embedded import port_open
from gateway.processes import parent_death_preexec
from scripts.procfs import child_pids

REPO_ROOT = Path(__file__).resolve().parents[1]
#: The production configuration (docker-compose.yml's nginx service mounts it).
NGINX_CONF = REPO_ROOT / "gateway" / "nginx.conf"


def binary() -> str | None:
    """Debian's nginx (``apt-get install nginx``; ``scripts/debian-tools.sh`` installs it), or None.

    /usr/sbin is not on every user's PATH, hence the fallbacks."""
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None)


def version() -> str:
    """``nginx/1.22.1`` or "?"."""
    found = binary()
    if found is None:
        return "?"
    done = subprocess.run([found, "-v"], capture_output=True, text=True, check=False)
    match = re.search(r"nginx/\S+", done.stderr + done.stdout)
    return match.group(0) if match else "?"


def render_conf(conf: str, upstreams: tuple[str, str], listen: str, tmp: Path) -> str:
    """The production config with local upstreams, listen address and temp paths.

    ValueError when the file no longer has exactly one of each thing substituted (the
    substitution would silently run something else than production)."""

    def sub_once(pattern: str, repl: str, text: str) -> str:
        out, count = re.subn(pattern, repl, text)
        if count != 1:
            raise ValueError(f"nginx.conf: expected exactly one match of {pattern!r}, got {count}")
        return out

    conf = sub_once(r"server gateway-1:8080\b", f"server {upstreams[0]}", conf)
    conf = sub_once(r"server gateway-2:8080\b", f"server {upstreams[1]}", conf)
    conf = sub_once(r"listen 8080\b", f"listen {listen}", conf)
    return conf.replace(" /tmp/", f" {tmp}/")


def static_conf(root: Path, listen: str, prefix: Path) -> str:
    """nginx serving the files in ``root`` on ``listen``: 1 worker, access log off, sendfile on,
    everything else nginx's defaults (HTTP keep-alive included); pid and temp files under
    ``prefix``."""
    temps = "\n".join(f"    {kind}_temp_path {prefix}/{kind}_temp;"
                      for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    return f"""\
worker_processes 1;
pid {prefix}/nginx.pid;
error_log stderr warn;

events {{
    worker_connections 4096;
}}

http {{
    access_log off;
    sendfile on;
    default_type application/json;
{temps}

    server {{
        listen {listen};
        root {root};
    }}
}}
"""


def private_dir(prefix: str = "mt-nginx-") -> Path:
    """A fresh folder nginx's workers can reach: not pytest's tmp_path nor a 0700 mkdtemp, since
    they run as "nobody" when nginx is started as root."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    return path


@dataclass
class Nginx:
    """A running nginx (foreground master process) and where its output goes."""

    proc: subprocess.Popen[bytes]
    url: str
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def start(conf: str, prefix: Path, port: int, log: Path, timeout: float = 10.0,
          stdout: Path | None = None, die_with_caller: bool = False) -> Nginx:
    """Write ``conf`` to ``prefix``/nginx.conf, check it (``nginx -t``), run it in the foreground
    with stderr (and stdout, unless ``stdout`` names another file: where gateway/nginx.conf's
    access log goes) appended to ``log``, and wait until 127.0.0.1:``port`` accepts.

    ``die_with_caller``: the kernel sends nginx SIGTERM (its fast shutdown) when the calling
    thread's process dies without stopping it; for a program's main thread, such as the
    benchmark harness (a test's fixture thread may end before the test does).

    RuntimeError when nginx is missing, rejects the configuration or does not listen in time."""
    found = binary()
    if found is None:
        raise RuntimeError("nginx is not installed (scripts/debian-tools.sh installs it)")
    conf_path = prefix / "nginx.conf"
    conf_path.write_text(conf)
    base = [found, "-e", "stderr", "-p", f"{prefix}/", "-c", str(conf_path)]
    test = subprocess.run([*base, "-t"], capture_output=True, text=True, check=False)
    if test.returncode != 0:
        raise RuntimeError(f"nginx -t rejected {conf_path}:\n{test.stderr}")
    with open(log, "ab") as err, open(stdout or log, "ab") as out:
        proc = subprocess.Popen([*base, "-g", "daemon off;"], stdout=out, stderr=err,
                                preexec_fn=parent_death_preexec() if die_with_caller else None)
    server = Nginx(proc, f"http://127.0.0.1:{port}", log)
    deadline = time.monotonic() + timeout
    while not port_open("127.0.0.1", port):
        if proc.poll() is not None:
            raise RuntimeError(f"nginx exited ({proc.returncode}): {server.output()[-2000:]}")
        if time.monotonic() > deadline:
            stop([server])
            raise RuntimeError(f"nginx did not listen on port {port} within {timeout:g} s")
        time.sleep(0.05)
    return server


def stop(servers: list[Nginx], grace: float = 10.0) -> None:
    """Graceful stop (SIGQUIT: finish the requests in flight), SIGKILL after ``grace``."""
    for server in servers:
        if server.proc.poll() is None:
            server.proc.send_signal(signal.SIGQUIT)
    for server in servers:
        try:
            server.proc.wait(grace)
        except subprocess.TimeoutExpired:
            workers = child_pids(server.proc.pid)
            server.proc.kill()
            server.proc.wait()
            for pid in workers:  # a killed master leaves its workers running
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


