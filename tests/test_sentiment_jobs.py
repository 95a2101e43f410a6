"""Sentiment jobs in-process against real PostgreSQL, Redis and RQ (SimpleWorker, burst mode)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pg8000.native
import pytest
from rq import Queue, SimpleWorker

from minitwitter import cache, db, jobs, metrics, verdicts
from minitwitter.config import Config, set_config
from minitwitter.worklist import WorkList
from tests.fake_ollama import FakeOllama

MODEL = "qwen2.5:1.5b"


# --- helpers shared with the end-to-end tests ---------------------------------------------------

def make_user(name: str = "alice") -> int:
    return int(db.scalar("INSERT INTO users (username, password_hash) VALUES (:u, 'x') RETURNING id", u=name))


def make_post(author: int, text: str) -> int:
    return int(db.scalar("INSERT INTO posts (author_id, content) VALUES (:a, :c) RETURNING id", a=author, c=text))


def make_comment(post: int, author: int, text: str) -> int:
    return int(db.scalar("INSERT INTO comments (post_id, author_id, content) VALUES (:p, :a, :c) RETURNING id",
                         p=post, a=author, c=text))


def sentiment_row(kind: str, item_id: int) -> dict[str, Any]:
    table = {"post": "posts", "comment": "comments"}[kind]
    row = db.one(f"SELECT sentiment_status, sentiment_label, sentiment_score, sentiment_backend, "  # noqa: S608
                 f"sentiment_model, sentiment_reason, sentiment_version, sentiment_attempts, "
                 f"sentiment_next_at, updated_at FROM {table} WHERE id = :id", id=item_id)
    assert row is not None
    keys = ("status", "label", "score", "backend", "model", "reason", "version", "attempts", "next_at",
            "updated_at")
    return dict(zip(keys, row, strict=True))


def statuses(kind: str = "post") -> dict[str, int]:
    table = {"post": "posts", "comment": "comments"}[kind]
    return dict(db.run(f"SELECT sentiment_status, count(*) FROM {table} GROUP BY 1"))  # noqa: S608


def run_worker() -> None:
    """Run every queued job to completion in this process (real RQ, burst mode)."""
    SimpleWorker([jobs.SENTIMENT_QUEUE, "callbacks"], connection=cache.client()).work(
        burst=True, logging_level="ERROR")


@pytest.fixture
def fake() -> Iterator[FakeOllama]:
    with FakeOllama() as server:
        yield server


def use(config: Config, **changes: Any) -> Config:
    cfg = config.with_overrides(**changes)
    set_config(cfg)
    return cfg


# --- enqueue ---------------------------------------------------------------------------------

def test_enqueue_is_deduplicated_per_item_version() -> None:
    post = make_post(make_user(), "hello")
    assert jobs.enqueue_sentiment("post", post, 1, "call-1")
    assert jobs.enqueue_sentiment("post", post, 1, "call-2")  # accepted, but a no-op
    assert jobs.enqueue_sentiment("post", post, 2)
    assert cache.client().lrange(jobs.TODO_KEY, 0, -1) == [f"post:{post}:1:call-1".encode(),
                                                            f"post:{post}:2:".encode()]
    assert Queue(jobs.SENTIMENT_QUEUE, connection=cache.client()).count == 1


def test_enqueue_never_raises_when_redis_is_down(config: Config) -> None:
    use(config, redis_url="redis://127.0.0.1:1/0", redis_timeout=0.2)
    cache.reset()
    assert jobs.enqueue_sentiment("post", 1, 1) is False
    assert cache.is_down()  # the next calls skip Redis instead of waiting for a timeout each
    assert jobs.enqueue_sentiment("post", 2, 1) is False
    assert jobs.enqueue_sentiment("poll", 3, 1) is False


def sentiment_jobs() -> int:
    return Queue(jobs.SENTIMENT_QUEUE, connection=cache.client()).count


def test_one_drain_job_per_busy_spell() -> None:
    """Items queued while a drain job waits or runs queue no job of their own; once the job has
    found the list empty and ended, the next item queues a new one."""
    user = make_user()
    for n in range(5):
        jobs.enqueue_sentiment("post", make_post(user, f"post {n} is fine"), 1)
    assert sentiment_jobs() == 1 and cache.client().exists(jobs.TODO_LIST.mark_key)
    run_worker()
    assert statuses() == {"done": 5}
    assert sentiment_jobs() == 0 and not cache.client().exists(jobs.TODO_LIST.mark_key)
    jobs.enqueue_sentiment("post", make_post(user, "and one more"), 1)
    assert sentiment_jobs() == 1
    run_worker()
    assert statuses() == {"done": 6}


def test_an_item_queued_as_the_drain_job_ends_is_drained_by_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """The race the draining mark must survive: an item pushed after the job's last empty pop,
    while the mark still stands (so it queues no job), is found by the job's way out."""
    user = make_user()
    first, late = make_post(user, "a lovely day"), make_post(user, "an awful, terrible day")
    jobs.enqueue_sentiment("post", first, 1)
    calls: list[int] = []

    class LateProducer(WorkList):
        def finished(self, r: Any) -> bool:
            if not calls:
                assert jobs.enqueue_sentiment("post", late, 1)
                assert sentiment_jobs() == 0  # the running job holds the mark: no job queued
            calls.append(1)
            return super().finished(r)

    monkeypatch.setattr(jobs, "TODO_LIST", LateProducer(jobs.TODO_KEY, jobs.DRAIN_TRIGGER))
    run_worker()
    assert len(calls) == 2  # the first way out found the late item; the second ended the job
    assert sentiment_row("post", late)["label"] == "negative"
    assert not cache.client().exists(jobs.TODO_LIST.mark_key)


def test_a_failed_drain_job_clears_its_mark(monkeypatch: pytest.MonkeyPatch, config: Config) -> None:
    user = make_user()
    post = make_post(user, "nice")
    jobs.enqueue_sentiment("post", post, 1)

    def broken(*_args: Any) -> int:
        raise RuntimeError("worker bug")

    monkeypatch.setattr(verdicts, "process_batch", broken)
    run_worker()
    assert not cache.client().exists(jobs.TODO_LIST.mark_key)  # the next item starts a new job
    monkeypatch.undo()
    jobs.requeue([f"post:{post}:1:"])
    assert sentiment_jobs() == 1
    run_worker()
    assert sentiment_row("post", post)["status"] == "done"


def test_reconciler_starts_a_drain_behind_a_dead_jobs_mark(config: Config) -> None:
    """A killed worker leaves its mark (until it expires): items then queue no job, and the
    reconciler's look at the list starts one."""
    cache.client().set(jobs.TODO_LIST.mark_key, "1", ex=jobs.TODO_LIST.mark_ttl)
    post = make_post(make_user(), "good morning")
    jobs.enqueue_sentiment("post", post, 1)
    assert sentiment_jobs() == 0
    verdicts.reconcile(config)
    assert sentiment_jobs() == 1
    run_worker()
    assert sentiment_row("post", post)["status"] == "done"
    assert not cache.client().exists(jobs.TODO_LIST.mark_key)


# --- the worker ------------------------------------------------------------------------------

def test_pending_post_and_comment_are_labelled_without_touching_updated_at() -> None:
    user = make_user()
    post = make_post(user, "I love this wonderful community!")
    comment = make_comment(post, user, "This is terrible, I hate it.")
    before = sentiment_row("post", post)["updated_at"]
    assert sentiment_row("post", post)["status"] == "pending"
    jobs.enqueue_sentiment("post", post, 1)
    jobs.enqueue_sentiment("comment", comment, 1)
    run_worker()
    p, c = sentiment_row("post", post), sentiment_row("comment", comment)
    assert (p["status"], p["label"], p["backend"]) == ("done", "positive", "vader")
    assert p["model"].startswith("vader-") and p["score"] > 0.05 and p["attempts"] == 1
    assert (c["status"], c["label"]) == ("done", "negative") and c["score"] < -0.05
    assert p["updated_at"] == before
    assert cache.client().llen(jobs.TODO_KEY) == 0


def test_outdated_version_does_nothing_and_done_is_not_redone() -> None:
    post = make_post(make_user(), "great news")
    db.run("UPDATE posts SET content = 'awful news', sentiment_version = 2 WHERE id = :id", id=post)
    jobs.enqueue_sentiment("post", post, 1)  # the job of the first version arrives late
    run_worker()
    assert sentiment_row("post", post)["status"] == "pending"
    jobs.enqueue_sentiment("post", post, 2)
    run_worker()
    row = sentiment_row("post", post)
    assert (row["status"], row["label"], row["version"]) == ("done", "negative", 2)
    db.run("UPDATE posts SET sentiment_label = 'neutral' WHERE id = :id", id=post)
    jobs.requeue([f"post:{post}:2:"])  # a duplicate delivery of the same job
    run_worker()
    assert sentiment_row("post", post)["label"] == "neutral"  # not reprocessed


def test_item_locked_by_another_worker_is_skipped(stores: dict[str, str]) -> None:
    post = make_post(make_user(), "good")
    other = pg8000.native.Connection(**db.connect_params(stores["DATABASE_URL"]))
    try:
        other.run("SELECT pg_advisory_lock(:k)", k=jobs.Item("post", post, 1).lock_key)
        jobs.enqueue_sentiment("post", post, 1)
        run_worker()
        assert sentiment_row("post", post)["status"] == "pending"
    finally:
        other.close()  # the "other worker" dies: its lock goes with its connection
    jobs.enqueue_sentiment("post", post, 1)
    run_worker()
    assert sentiment_row("post", post)["status"] == "done"


def test_batches_are_large_for_vader() -> None:
    user = make_user()
    ids = [make_post(user, f"post number {n} is good") for n in range(300)]
    before = metrics.SENTIMENT_BATCH.labels("vader")._sum.get()  # noqa: SLF001
    for post in ids:
        jobs.enqueue_sentiment("post", post, 1)
    run_worker()
    assert statuses() == {"done": 300}
    assert metrics.SENTIMENT_BATCH.labels("vader")._sum.get() - before == 300  # noqa: SLF001


# --- Ollama through the worker -----------------------------------------------------------------

def test_ollama_verdicts_are_recorded_and_cached(config: Config, fake: FakeOllama) -> None:
    use(config, sentiment_backend="ollama", ollama_host=fake.url)
    user = make_user()
    first, second = make_post(user, "I love it"), make_post(user, "I love it")
    jobs.enqueue_sentiment("post", first, 1)
    run_worker()
    jobs.enqueue_sentiment("post", second, 1)
    run_worker()
    for post in (first, second):
        row = sentiment_row("post", post)
        assert (row["status"], row["label"], row["backend"], row["model"]) == ("done", "positive", "ollama", MODEL)
    assert len(fake.chats) == 1  # the second identical text came from the verdict cache


def test_transient_errors_retry_with_backoff_then_fail(config: Config, fake: FakeOllama) -> None:
    cfg = use(config, sentiment_backend="ollama", ollama_host=fake.url, sentiment_max_attempts=3,
              sentiment_retry_base=0.5)
    fake.mode = "error"
    post = make_post(make_user(), "good")
    jobs.enqueue_sentiment("post", post, 1)
    run_worker()
    row = sentiment_row("post", post)
    assert (row["status"], row["attempts"], row["label"]) == ("pending", 1, None)
    assert "500" in row["reason"] and row["next_at"] is not None
    scheduled = Queue(jobs.SENTIMENT_QUEUE, connection=cache.client()).scheduled_job_registry
    assert scheduled.count == 1  # the retry, scheduled with backoff
    for attempt in (2, 3):
        jobs.requeue([f"post:{post}:1:"])
        run_worker()
        assert sentiment_row("post", post)["attempts"] == attempt
    row = sentiment_row("post", post)
    assert (row["status"], row["label"], row["score"]) == ("failed", None, None)
    gaps = db.scalar("SELECT EXTRACT(EPOCH FROM sentiment_next_at - sentiment_updated_at) FROM posts"
                     " WHERE id = :id", id=post)
    assert float(gaps) == pytest.approx(cfg.sentiment_retry_base * 4, abs=0.05)  # 0.5 * 2**2


def test_missing_model_fails_at_once_or_falls_back(config: Config, fake: FakeOllama) -> None:
    fake.models = []
    use(config, sentiment_backend="ollama", ollama_host=fake.url)
    user = make_user()
    post = make_post(user, "good")
    jobs.enqueue_sentiment("post", post, 1)
    run_worker()
    row = sentiment_row("post", post)
    assert (row["status"], row["attempts"]) == ("failed", 1) and "not available" in row["reason"]
    assert len(fake.chats) == 1  # not retried
    use(config, sentiment_backend="ollama", ollama_host=fake.url, sentiment_fallback="vader")
    other = make_post(user, "good")
    jobs.enqueue_sentiment("post", other, 1)
    run_worker()
    row = sentiment_row("post", other)
    assert (row["status"], row["label"], row["backend"]) == ("done", "positive", "vader")


def test_auto_mode_labels_with_vader_when_ollama_is_down(config: Config, fake: FakeOllama) -> None:
    use(config, sentiment_backend="auto", ollama_host=fake.url)
    user = make_user()
    up = make_post(user, "I love it")
    jobs.enqueue_sentiment("post", up, 1)
    run_worker()
    assert sentiment_row("post", up)["backend"] == "ollama"
    fake.stop()
    down = make_post(user, "I love it too")
    jobs.enqueue_sentiment("post", down, 1)
    run_worker()
    row = sentiment_row("post", down)
    assert (row["status"], row["backend"], row["label"]) == ("done", "vader", "positive")


def test_malformed_and_short_batches_through_the_worker(config: Config, fake: FakeOllama) -> None:
    use(config, sentiment_backend="ollama", ollama_host=fake.url, ollama_batch_size=4, ollama_parallel=1)
    user = make_user()
    texts = ["good day", "bad day", "a day", "great day"]
    ids = [make_post(user, t) for t in texts]
    fake.script = ["malformed", "short"]  # batch: malformed, retried: short -> item by item
    for post in ids:
        jobs.enqueue_sentiment("post", post, 1)
    run_worker()
    assert [sentiment_row("post", p)["label"] for p in ids] == ["positive", "negative", "neutral", "positive"]
    assert [c["format"]["type"] for c in fake.chats] == ["array", "array"] + ["object"] * 4


# --- reconciler ------------------------------------------------------------------------------

def test_reconciler_requeues_forgotten_and_due_items(config: Config) -> None:
    cfg = use(config, sentiment_pending_grace=5)
    user = make_user()
    old = make_post(user, "good old post")
    fresh = make_post(user, "good new post")
    failed = make_post(user, "bad failed post")
    db.run("UPDATE posts SET updated_at = now() - interval '1 minute' WHERE id = :id", id=old)
    db.run("UPDATE posts SET sentiment_status = 'failed', sentiment_attempts = 5,"
           " sentiment_next_at = now() - interval '1 second' WHERE id = :id", id=failed)
    counts = verdicts.reconcile(cfg)
    assert counts["post"] == 2
    assert verdicts.reconcile(cfg)["post"] == 0  # already queued: no duplicates
    run_worker()
    assert sentiment_row("post", old)["status"] == "done"
    assert sentiment_row("post", fresh)["status"] == "pending"  # still within its grace period
    assert (sentiment_row("post", failed)["status"], sentiment_row("post", failed)["label"]) == ("done", "negative")



def test_popped_items_lose_their_queued_mark_in_the_same_step(config: Config) -> None:
    """A worker killed right after taking items must not leave their queued marks behind: the
    marks are cleared by the pop itself, so the reconciler can queue the lost items again."""
    cfg = use(config, sentiment_pending_grace=5)
    user = make_user()
    posts = [make_post(user, f"nice post {n}") for n in range(3)]
    for post in posts:
        assert jobs.enqueue_sentiment("post", post, 1)
    r = cache.client()
    assert all(r.exists(f"{jobs.QUEUED_PREFIX}post:{p}:1") for p in posts)
    taken = verdicts.pop_items(r, 2)  # ...and the worker that took them dies here
    assert taken == [f"post:{p}:1:".encode() for p in posts[:2]]
    assert [r.exists(f"{jobs.QUEUED_PREFIX}post:{p}:1") for p in posts] == [0, 0, 1]
    db.run("UPDATE posts SET updated_at = now() - interval '1 minute'")
    assert verdicts.reconcile(cfg)["post"] == 2  # the two lost ones; the third is still queued
    run_worker()
    assert all(sentiment_row("post", p)["status"] == "done" for p in posts)

# --- callbacks -------------------------------------------------------------------------------

def test_final_failure_is_called_back_and_delivery_gives_up(config: Config, fake: FakeOllama) -> None:
    from minitwitter import callbacks
    from tests.callback_receiver import Receiver

    fake.models = []
    use(config, sentiment_backend="ollama", ollama_host=fake.url, callback_max_attempts=2,
        callback_retry_base=0.01)
    with Receiver(fail_first=10) as receiver:
        post = make_post(make_user(), "good")
        callbacks.register("post", post, 1, receiver.url, "call-f")
        jobs.enqueue_sentiment("post", post, 1, "call-f")
        run_worker()  # the sentiment job, then the first delivery attempt
        delivery_id, status, attempts, last_status, payload = db.one(
            "SELECT id, status, attempts, last_status, payload FROM callback_deliveries")
        assert (status, attempts, last_status) == ("pending", 1, 500)
        body = json.loads(payload)
        assert body == {"id": str(post), "type": "post", "call_id": "call-f",
                        "sentiment": {"status": "failed", "label": None, "score": None, "model": MODEL}}
        db.run("UPDATE callback_deliveries SET next_attempt_at = now()")
        assert callbacks.deliver(delivery_id) == "failed"
        assert callbacks.deliver(delivery_id) == "skipped"  # given up: never sent again
        assert receiver.attempts == 2
    row = db.one("SELECT status, attempts, last_error FROM callback_deliveries")
    assert row == ["failed", 2, "receiver answered 500"]
    # The registration stays: a later successful analysis is still called back.
    assert db.scalar("SELECT count(*) FROM sentiment_callbacks") == 1
