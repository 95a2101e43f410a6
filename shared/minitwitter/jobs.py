"""The sentiment queue: posts and comments waiting for a verdict, enqueued after their write.

Flow::

    create/update-post, add-comment ──commit──▶ enqueue_sentiment(kind, id, version)
        SET sentiment:queued:<kind>:<id>:<version> NX  ─┐ one Lua call (worklist.WorkList): a
        RPUSH sentiment:todo "<kind>:<id>:<version>:<call id>" │ repeated enqueue of the same
        SET sentiment:todo:draining NX                  ─┘ item version is a no-op
        (+ an RQ ``drain`` job on the ``sentiment`` queue when that call set the draining mark,
        i.e. no drain job was queued or running, and one more every DRAIN_TRIGGER items so several
        workers share a backlog)

The worker side, the drain job and the reconciler that re-enqueues what was lost, is
:mod:`minitwitter.verdicts`; the entities enqueue here without importing it (the drain job is
named by its dotted path, :data:`DRAIN_JOB`). Nothing is lost: PostgreSQL is the truth and Redis
only a queue.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from rq import Queue

from . import cache, metrics
from .config import Config
from .worklist import WorkList

log = logging.getLogger(__name__)

KINDS = ("post", "comment")
SENTIMENT_QUEUE = "sentiment"
TODO_KEY = "sentiment:todo"
QUEUED_PREFIX = "sentiment:queued:"
#: A queued marker outlives any plausible backlog; it only guards against duplicates.
QUEUED_TTL_SECONDS = 24 * 3600
#: Queue one more drain job every this many queued items so that workers share a backlog.
DRAIN_TRIGGER = 64
#: The queue of item tokens, drained by RQ ``drain`` jobs.
TODO_LIST = WorkList(TODO_KEY, DRAIN_TRIGGER)
#: The drain job, named by its dotted path: it runs in the workers (:mod:`minitwitter.verdicts`),
#: above the writes that enqueue here.
DRAIN_JOB = "minitwitter.verdicts.drain"
#: Advisory-lock namespace of sentiment items (high byte), so keys do not collide with others.
LOCK_NAMESPACE = 0x5E << 56
_KIND_CODE = {"post": 0, "comment": 1}


@dataclass
class Item:
    """One queued sentiment job: an item version, with the call id that caused it."""

    kind: str
    id: int
    version: int
    call_id: str | None = None
    post_id: int = 0
    text: str = ""
    status: str = "pending"
    attempts: int = 0

    @property
    def token(self) -> str:
        return f"{self.kind}:{self.id}:{self.version}:{self.call_id or ''}"

    @property
    def queued_key(self) -> str:
        return f"{QUEUED_PREFIX}{self.kind}:{self.id}:{self.version}"

    @property
    def lock_key(self) -> int:
        return LOCK_NAMESPACE + self.id * 2 + _KIND_CODE[self.kind]


def parse_token(token: bytes | str) -> Item | None:
    """The item a queue token names (None for garbage, which is dropped)."""
    text = token.decode("utf-8", "replace") if isinstance(token, bytes) else token
    parts = text.split(":", 3)
    if len(parts) < 3 or parts[0] not in KINDS:
        return None
    try:
        return Item(parts[0], int(parts[1]), int(parts[2]), (parts[3] if len(parts) > 3 else "") or None)
    except ValueError:
        return None


# --- enqueue -----------------------------------------------------------------------------------

def sentiment_queue(config: Config | None = None) -> Queue:
    return Queue(SENTIMENT_QUEUE, connection=cache.client(config))


def enqueue_drain(config: Config | None = None) -> None:
    """Queue a drain job on the ``sentiment`` queue."""
    sentiment_queue(config).enqueue(DRAIN_JOB, result_ttl=0, failure_ttl=3600, job_timeout=600,
                                     description="sentiment drain")


def _enqueue_call(item: Item) -> tuple[list[str], list[Any]]:
    """The keys and arguments of the push of one item (refused while its version is queued)."""
    return TODO_LIST.push_call(item.token, item.queued_key, QUEUED_TTL_SECONDS)


def push(items: Iterable[Item], config: Config | None = None) -> int:
    """Queue items (deduplicated); returns how many were new. Raises Redis errors."""
    r = cache.client(config)
    todo = list(items)
    if not todo:
        return 0
    replies = TODO_LIST.push_all(r, [_enqueue_call(item) for item in todo])
    queued = [reply for reply in replies if int(reply[0])]  # 0: a duplicate
    # Several items (retries, the reconciler): always a drain job.
    if (len(todo) > 1 and queued) or any(TODO_LIST.needs_job(reply) for reply in queued):
        enqueue_drain(config)
    return len(queued)


def enqueue_sentiment(kind: str, item_id: int, version: int, call_id: str | None = None) -> bool:
    """Queue the analysis of one item version; call after the write's transaction commits.

    In a request the enqueue rides with the request's last Redis round trip
    (:func:`cache.write_later`) and True means it is on its way; elsewhere it is sent now.
    Never raises: False when Redis could not take it (the reconciler re-enqueues the item
    later). A repeated enqueue of the same (kind, id, version) while it waits is a no-op.
    """
    if kind not in KINDS:
        log.error("unknown sentiment item kind", extra={"kind": kind})
        return False
    taken = True

    def failed() -> None:
        nonlocal taken
        taken = False
        metrics.JOBS.labels("sentiment-enqueue", "error").inc()

    TODO_LIST.push_later(_enqueue_call(Item(kind, int(item_id), int(version), call_id)),
                         lambda _r: enqueue_drain(), failed)
    return taken


def requeue(tokens: list[str]) -> int:
    """RQ job: put items back in the queue (scheduled retries use this)."""
    items = [i for i in (parse_token(t) for t in tokens) if i is not None]
    return push(items)
