"""Sentiment throughput benchmark: create → labelled with VADER through real RQ worker processes.

Two measurements against real PostgreSQL and Redis:

1. **end to end** - posts are created the way ``create-post`` creates them (one INSERT committed
   per post, then ``jobs.enqueue_sentiment``) by ``--creators`` processes, while
   ``python -m gateway.worker`` (``WORKER_COUNT`` processes, ``SENTIMENT_BACKEND=vader``) labels
   them; throughput = posts / (last label time - first create time).
2. **backlog** - posts are queued while the workers are stopped, then the workers drain the
   backlog; reports labelled posts per second and the workers' CPU cost per item (user + system
   time of every worker process, divided by the items labelled).

It uses its own database (``--database``, created and migrated, emptied first) and Redis DB index
(``--redis-db``, flushed first), so it never touches other data. Run::

    python -m scripts.bench_sentiment [--posts 20000] [--workers 2] [--creators 4]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from minitwitter import cache, db, jobs, migrate
from minitwitter.config import REPO_ROOT, ensure_dev_secrets, load_config, set_config
from scripts.procfs import process_tree

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by a process tree (exited children included)."""
    total = 0
    for p in process_tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # utime, stime, and cutime, cstime: RQ runs each job in a forked work horse that has
        # exited (and been waited for) by the time we read, so its CPU is in its parent's c*time.
        total += int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])
    return total / CLOCK_TICKS


class Workers:
    """``python -m gateway.worker`` as a subprocess."""

    running: list[Workers] = []

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env, self.log_path = env, log_path
        self.proc: subprocess.Popen[bytes] | None = None
        Workers.running.append(self)

    def start(self) -> Workers:
        log = open(self.log_path, "ab")  # noqa: SIM115 - lives as long as the process
        self.proc = subprocess.Popen([sys.executable, "-m", "gateway.worker"], env=self.env,
                                     cwd=REPO_ROOT, stdout=log, stderr=log)
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def labelled() -> int:
    return int(db.scalar("SELECT count(*) FROM posts WHERE sentiment_status = 'done'"))


def wait_all_labelled(total: int, timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if labelled() >= total:
            return time.monotonic()
        time.sleep(0.02)
    raise SystemExit(f"only {labelled()} of {total} posts labelled after {timeout}s")


TEXTS = ["I love this, what a great day!", "This is terrible, I hate waiting.",
         "The meeting moved to Thursday.", "Best coffee in town, so happy :)",
         "Ugh, the train is late again. Awful.", "Reading a book about databases."]


def create(user: int, count: int, offset: int) -> None:
    """Create posts like create-post: one committed INSERT each, then the enqueue."""
    cache.reset()
    for n in range(count):
        text = f"{TEXTS[(offset + n) % len(TEXTS)]} #{offset + n}"
        with db.transaction():
            post = int(db.scalar("INSERT INTO posts (author_id, content) VALUES (:a, :c) RETURNING id",
                                 a=user, c=text))
        jobs.enqueue_sentiment("post", post, 1, None)
    db.close_connection()


def create_all(users: list[int], per: int) -> None:
    """Run one creator process per account, ``per`` posts each (like several API replicas).

    One account per creator, as real traffic comes from many accounts: every post updates its
    author's ``posts_count`` (a trigger), so creators sharing one account would queue on that
    row's lock (measured: 8 creators on one account 890 posts/s, waiting on ``transactionid``).
    """
    db.close_connection()  # nothing connected may be inherited by the forked creators
    cache.reset()
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=create, args=(user, per, i * per)) for i, user in enumerate(users)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join()


def reset_data(accounts: int) -> list[int]:
    """Empty every table and the Redis DB; create ``accounts`` accounts and return their ids."""
    db.run("TRUNCATE users, posts, comments, likes, follows, callback_deliveries, sentiment_callbacks,"
           " logs RESTART IDENTITY CASCADE")
    cache.client().flushdb()
    rows = db.run("INSERT INTO users (username, password_hash) SELECT 'bench' || g, 'x'"
                  " FROM generate_series(1, :n) g RETURNING id", n=accounts)
    return [int(row[0]) for row in rows]


def main() -> int:
    parser = argparse.ArgumentParser(description="sentiment create→labelled benchmark (VADER)")
    parser.add_argument("--posts", type=int, default=20000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--creators", type=int, default=4)
    parser.add_argument("--server", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--database", default="minitwitter_bench_sentiment")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379")
    parser.add_argument("--redis-db", type=int, default=15, help="flushed first: use one nothing else uses")
    args = parser.parse_args()

    database_url = args.server.rsplit("/", 1)[0] + "/" + args.database
    migrate.ensure_database(database_url)
    tmp = Path(tempfile.mkdtemp(prefix="bench-sentiment-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "REDIS_"))}
    env.update({"DATABASE_URL": database_url, "REDIS_URL": f"{args.redis}/{args.redis_db}",
                "SECRETS_DIR": str(ensure_dev_secrets(tmp / "secrets")), "SENTIMENT_BACKEND": "vader",
                "WORKER_COUNT": str(args.workers), "LOG_LEVEL": env.get("LOG_LEVEL", "WARNING"),
                "PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "shared"), str(REPO_ROOT)])})
    set_config(load_config(env))
    migrate.migrate()
    print(f"posts={args.posts} workers={args.workers} creators={args.creators} cpus={os.cpu_count()}")

    try:
        run(args, env, tmp)
    finally:
        for workers in Workers.running:
            workers.stop()
    return 0


def run(args: argparse.Namespace, env: dict[str, str], tmp: Path) -> None:
    """The two measurements (workers are stopped by the caller whatever happens)."""
    # 1. end to end: creating while the workers label
    users = reset_data(args.creators)
    workers = Workers(env, tmp / "workers-e2e.log").start()
    time.sleep(2.0)  # worker start-up is not part of the measurement
    per = args.posts // args.creators
    started = time.monotonic()
    create_all(users, per)
    created = time.monotonic()
    total = per * args.creators
    done = wait_all_labelled(total, 600)
    workers.stop()
    lag = db.scalar("SELECT percentile_cont(ARRAY[0.5, 0.99]) WITHIN GROUP (ORDER BY EXTRACT(EPOCH FROM"
                    " sentiment_updated_at - created_at)) FROM posts")
    print(f"end to end: {total} posts created in {created - started:.2f}s"
          f" ({total / (created - started):.0f}/s); all labelled after {done - started:.2f}s"
          f" -> {total / (done - started):.0f} posts/s create→labelled;"
          f" create→label latency p50 {lag[0] * 1000:.0f} ms, p99 {lag[1] * 1000:.0f} ms")

    # 2. backlog: queue first, then let the workers drain it
    users = reset_data(args.creators)
    create_all(users, per)
    workers = Workers(env, tmp / "workers-backlog.log").start()
    time.sleep(0.5)
    assert workers.proc is not None
    cpu_before = cpu_seconds(workers.proc.pid)
    wait_all_labelled(total, 600)
    cpu_used = cpu_seconds(workers.proc.pid) - cpu_before
    span = float(db.scalar("SELECT EXTRACT(EPOCH FROM max(sentiment_updated_at) - min(sentiment_updated_at))"
                           " FROM posts"))
    workers.stop()
    print(f"backlog: {total} posts labelled in {span:.2f}s -> {total / span:.0f} posts/s;"
          f" worker CPU {cpu_used:.2f}s = {cpu_used / total * 1e6:.0f} µs per item"
          f" ({args.workers} worker processes)")


if __name__ == "__main__":
    sys.exit(main())
