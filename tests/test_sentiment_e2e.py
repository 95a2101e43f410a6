"""The sentiment pipeline end to end through real RQ worker processes, with faults injected.

Posts and comments are created by SQL inserts plus ``jobs.enqueue_sentiment`` (exactly what the
API functions do after their transaction commits).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway import embedded
from minitwitter import cache, callbacks, db, errors, jobs
from minitwitter.config import Config, set_config
from tests.callback_receiver import Receiver
from tests.conftest import eventually
from tests.fake_ollama import FakeOllama
from tests.test_sentiment_jobs import make_comment, make_post, make_user, sentiment_row, statuses

pytestmark = pytest.mark.slow

FAST = {"RECONCILE_INTERVAL": "1", "SENTIMENT_PENDING_GRACE": "1", "SENTIMENT_RETRY_BASE": "0.3",
        "CALLBACK_RETRY_BASE": "0.3", "SENTIMENT_BATCH_WAIT": "0.01"}


def create_posts(texts: list[str], call_id: str | None = None) -> list[int]:
    user = db.scalar("SELECT id FROM users ORDER BY id LIMIT 1") or make_user()
    ids = []
    for text in texts:
        post = make_post(int(user), text)
        jobs.enqueue_sentiment("post", post, 1, call_id)
        ids.append(post)
    return ids


def all_done(ids: list[int], kind: str = "post") -> bool:
    return all(sentiment_row(kind, i)["status"] == "done" for i in ids)


def verify_signature(key: str, headers: dict[str, str], body: bytes, tolerance: int = 300) -> bool:
    """The receiver-side check documented in ``minitwitter.callbacks``."""
    timestamp = headers["X-Minitwitter-Timestamp"]
    if abs(time.time() - int(timestamp)) > tolerance:
        return False
    expected = hmac.new(key.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest("sha256=" + expected, headers["X-Minitwitter-Signature"])


@pytest.fixture
def fake() -> Iterator[FakeOllama]:
    with FakeOllama() as server:
        yield server


# --- the happy path and callbacks ----------------------------------------------------------

def test_pending_to_labelled_with_signed_callbacks(config: Config, start_workers: Any) -> None:
    start_workers(WORKER_COUNT="2", **FAST)
    with Receiver() as receiver:
        user = make_user()
        post = make_post(user, "What a wonderful, happy day!")
        comment = make_comment(post, user, "This is awful, I hate it.")
        with db.transaction():
            callbacks.register("post", post, 1, callbacks.validate_url(receiver.url + "/hook"), "call-p")
            callbacks.register("comment", comment, 1, receiver.url + "/hook", "call-c")
        assert sentiment_row("post", post)["status"] == "pending"
        assert jobs.enqueue_sentiment("post", post, 1, "call-p")
        assert jobs.enqueue_sentiment("comment", comment, 1, "call-c")
        eventually(lambda: all_done([post]) and all_done([comment], "comment"), 20)
        assert sentiment_row("post", post)["label"] == "positive"
        assert sentiment_row("comment", comment)["label"] == "negative"
        eventually(lambda: len(receiver.received) == 2, 20)
    by_type = {json.loads(r["body"])["type"]: r for r in receiver.received}
    body = json.loads(by_type["post"]["body"])
    assert body["id"] == str(post) and body["call_id"] == "call-p"
    assert body["sentiment"]["status"] == "done" and body["sentiment"]["label"] == "positive"
    assert body["sentiment"]["model"].startswith("vader-") and isinstance(body["sentiment"]["score"], float)
    headers = by_type["post"]["headers"]
    assert headers["X-Call-Id"] == "call-p" and headers["X-Function-Name"] == "create-post"
    assert headers["X-Function-Status"] == "200"
    for record in receiver.received:
        assert verify_signature(config.callback_signing_key, record["headers"], record["body"])
        assert not verify_signature("wrong key", record["headers"], record["body"])
    assert json.loads(by_type["comment"]["body"])["sentiment"]["label"] == "negative"
    assert by_type["comment"]["headers"]["X-Function-Name"] == "add-comment"
    # The worker records a delivery after the receiver has answered: wait for it to settle.
    eventually(lambda: db.scalar("SELECT count(*) FROM callback_deliveries WHERE status <> 'pending'") == 2)
    assert db.run("SELECT status, attempts FROM callback_deliveries") == [["delivered", 1]] * 2
    assert db.scalar("SELECT count(*) FROM sentiment_callbacks") == 0


def test_an_edited_post_is_analysed_again(api: Any, start_workers: Any) -> None:
    """update-post through the API: the post goes back to pending, the real workers analyse the
    new text, and get-post shows the new verdict (the old one never comes back)."""
    start_workers(**FAST)
    alice = api.account("alice")
    created = api.call("create-post", "POST", json={"content": "What a wonderful, happy day!"},
                       token=alice.token).json
    pid = created["id"]

    def sentiment() -> dict[str, Any]:
        return api.call("get-post", "GET", f"/{pid}").json["sentiment"]

    eventually(lambda: sentiment()["status"] == "done", 20)
    assert sentiment()["label"] == "positive"
    edited = api.call("update-post", "PATCH", f"/{pid}", json={"content": "This is awful, I hate it."},
                      token=alice.token)
    assert edited.status_code == 200 and edited.json["edited_at"]
    assert edited.json["sentiment"] == {"status": "pending", "label": None, "score": None, "model": None}
    eventually(lambda: sentiment()["status"] == "done", 20)
    assert sentiment()["label"] == "negative"
    assert sentiment_row("post", int(pid))["version"] == 2


def test_callbacks_are_retried_after_receiver_errors(config: Config, start_workers: Any) -> None:
    start_workers(**FAST)
    with Receiver(fail_first=2) as receiver:
        post = make_post(make_user(), "good")
        callbacks.register("post", post, 1, receiver.url, "call-r")
        jobs.enqueue_sentiment("post", post, 1, "call-r")
        eventually(lambda: receiver.received, 20)
        assert receiver.attempts == 3
    eventually(lambda: db.scalar("SELECT status FROM callback_deliveries") != "pending")
    row = db.one("SELECT status, attempts, last_status, delivered_at IS NOT NULL FROM callback_deliveries")
    assert row == ["delivered", 3, 200, True]
    assert verify_signature(config.callback_signing_key, receiver.received[0]["headers"],
                            receiver.received[0]["body"])


def test_callbacks_to_forbidden_addresses_are_refused(start_workers: Any) -> None:
    start_workers(CALLBACK_ALLOW_HOSTS="", **FAST)
    with Receiver() as receiver:
        post = make_post(make_user(), "good")
        callbacks.register("post", post, 1, receiver.url, "call-x")  # allowed when registered
        jobs.enqueue_sentiment("post", post, 1, "call-x")
        eventually(lambda: db.scalar("SELECT status FROM callback_deliveries") == "refused", 20)
        time.sleep(0.5)
        assert receiver.attempts == 0
    assert "not allowed" in db.scalar("SELECT last_error FROM callback_deliveries")


def test_validate_url_refuses_forbidden_addresses(config: Config) -> None:
    set_config(config.with_overrides(callback_allow_hosts=()))
    for url in ("http://127.0.0.1:8080/x", "http://10.1.2.3/x", "http://169.254.169.254/latest",
                "http://[::1]/x", "ftp://example.com/x", "http://user:pw@example.com/", "not a url", ""):
        with pytest.raises(errors.ValidationFailed) as info:
            callbacks.validate_url(url)
        assert "callback_url" in info.value.details
    set_config(config.with_overrides(callback_allow_hosts=("127.0.0.1",)))
    assert callbacks.validate_url(" http://127.0.0.1:9/hook ") == "http://127.0.0.1:9/hook"


# --- faults --------------------------------------------------------------------------------

def test_worker_killed_mid_batch_then_items_complete_after_restart(
        start_workers: Any, fake: FakeOllama) -> None:
    env = {**FAST, "WORKER_COUNT": "1", "SENTIMENT_BACKEND": "ollama", "OLLAMA_HOST": fake.url,
           "OLLAMA_TIMEOUT": "30"}
    fake.delay = 30.0  # every chat hangs: the batch is in flight when the worker dies
    workers = start_workers(**env)
    ids = create_posts(["good one", "bad one", "plain one", "great one"])
    eventually(lambda: len(fake.chats) >= 4, 20)
    assert statuses() == {"pending": 4}
    workers.stop(signal.SIGKILL)  # the whole process group, forked scheduler included
    assert statuses() == {"pending": 4}
    fake.delay = 0.0
    start_workers(**env)
    eventually(lambda: all_done(ids), 30)
    assert [sentiment_row("post", p)["label"] for p in ids] == ["positive", "negative", "neutral", "positive"]
    assert {sentiment_row("post", p)["backend"] for p in ids} == {"ollama"}


@pytest.fixture
def own_redis(tmp_path: Path, config: Config) -> Iterator[dict[str, Any]]:
    """A private redis-server on a free port that the test may stop and start again."""
    binary = embedded.system_redis_binary() or embedded.redis_server_binary()
    port = embedded.free_port()
    state: dict[str, Any] = {"server": embedded.start_redis(tmp_path / "redis-a", port, binary),
                             "port": port, "url": f"redis://127.0.0.1:{port}/0"}
    set_config(config.with_overrides(redis_url=state["url"], redis_timeout=0.5))
    cache.reset()

    def restart() -> None:
        state["server"] = embedded.start_redis(tmp_path / "redis-b", port, binary)  # empty: all lost

    state["restart"] = restart
    yield state
    state["server"].stop()
    cache.reset()


def test_redis_stopped_while_posts_are_created(
        own_redis: dict[str, Any], start_workers: Any) -> None:
    start_workers(REDIS_URL=own_redis["url"], REDIS_TIMEOUT="0.5", **FAST)
    first = create_posts(["good start"])
    eventually(lambda: all_done(first), 20)
    own_redis["server"].stop()
    cache.reset()
    user = make_user("bob")
    ids = []
    for n in range(20):
        post = make_post(user, f"post {n} while redis is down, good or bad")
        assert jobs.enqueue_sentiment("post", post, 1) is False  # the write still succeeded
        ids.append(post)
    time.sleep(1.5)
    assert statuses()["pending"] == 20
    own_redis["restart"]()
    cache.reset()
    eventually(lambda: all_done(ids), 40)


def test_ollama_down_then_back(start_workers: Any) -> None:
    port = embedded.free_port()
    env = {**FAST, "SENTIMENT_BACKEND": "ollama", "OLLAMA_HOST": f"http://127.0.0.1:{port}",
           "OLLAMA_TIMEOUT": "2", "SENTIMENT_MAX_ATTEMPTS": "100", "SENTIMENT_RETRY_MAX": "1"}
    start_workers(**env)
    ids = create_posts(["I love it", "I hate it"])
    eventually(lambda: all(sentiment_row("post", p)["attempts"] >= 2 for p in ids), 20)
    row = sentiment_row("post", ids[0])
    assert (row["status"], row["label"]) == ("pending", None) and "unreachable" in row["reason"]
    with FakeOllama(port=port):
        eventually(lambda: all_done(ids), 20)
    assert [(sentiment_row("post", p)["label"], sentiment_row("post", p)["backend"]) for p in ids] == [
        ("positive", "ollama"), ("negative", "ollama")]


def test_auto_mode_switches_to_vader_and_back(start_workers: Any) -> None:
    port = embedded.free_port()
    start_workers(**FAST, SENTIMENT_BACKEND="auto", OLLAMA_HOST=f"http://127.0.0.1:{port}",
                  OLLAMA_CHECK_INTERVAL="0.5", OLLAMA_TIMEOUT="2")
    down = create_posts(["I love it while ollama is down"])
    eventually(lambda: all_done(down), 20)
    assert sentiment_row("post", down[0])["backend"] == "vader"
    with FakeOllama(port=port) as server:
        eventually(lambda: server.tags_calls > 0, 10)
        time.sleep(1.0)  # let the periodic /api/tags check see it
        up = create_posts(["I love it now that ollama is back"])
        eventually(lambda: all_done(up), 20)
        assert sentiment_row("post", up[0])["backend"] == "ollama"
