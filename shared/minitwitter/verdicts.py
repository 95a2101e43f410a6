"""The sentiment worker: verdicts for the items :mod:`jobs` queued, and the reconciler.

Flow::

    worker: drain() pops up to a batch of tokens, waits SENTIMENT_BATCH_WAIT for more, takes a
        PostgreSQL advisory lock per item (two workers never process one item at once; the lock
        dies with a killed worker's connection), skips outdated versions and finished items,
        classifies, writes verdicts (never touching ``updated_at``, only while the version still
        matches), invalidates caches and queues callbacks. It ends only once the list is empty
        and its draining mark cleared, in one Lua call (``WorkList.finished``).

Nothing is lost: PostgreSQL is the truth and Redis only a queue. The reconciler, run in every
scheduler process (one at a time, through a Redis lock) at start, every ``RECONCILE_INTERVAL``
seconds and when Redis answers again after an outage,
re-enqueues items ``pending`` longer than ``SENTIMENT_PENDING_GRACE`` (Redis was down, a worker
was killed mid-batch), items whose retry is due and ``failed`` items whose backoff has passed,
and re-queues overdue callback deliveries. Failures: retryable errors (timeouts, connection
errors, 5xx) are retried with exponential backoff (``SENTIMENT_RETRY_BASE`` doubling, capped at
``SENTIMENT_RETRY_MAX``); after ``SENTIMENT_MAX_ATTEMPTS`` attempts, or at once for a missing
model, the item is ``failed`` with a reason (or VADER answers when ``SENTIMENT_FALLBACK=vader``).
An error never becomes a label.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import timedelta
from typing import Any

import redis

from . import cache, callbacks, db, errors, homefeed, invalidation, jobs, logs, metrics, sentiment
from .config import Config, get_config
from .sentiment import Backend, BackendError, Verdict

log = logging.getLogger(__name__)

RECONCILE_LOCK = "sentiment:reconcile:lock"
#: A drain job hands over to a fresh job after this long, so other queues are not starved.
DRAIN_BUDGET_SECONDS = 5.0
RECONCILE_LIMIT = 10000


# Fixed SQL per kind (table names cannot be bound parameters; nothing here comes from input).
_SQL: dict[str, dict[str, str]] = {}
for _kind, _table, _post in (("post", "posts", "id"), ("comment", "comments", "post_id")):
    _SQL[_kind] = {
        "fetch": f"SELECT id, {_post}, content, sentiment_version, sentiment_status, sentiment_attempts"
                 f" FROM {_table}"
                 " WHERE id = ANY(CAST(:ids AS bigint[]))",
        "done": f"UPDATE {_table} AS t SET sentiment_status = 'done', sentiment_label = v.label,"
                " sentiment_score = v.score, sentiment_backend = v.backend, sentiment_model = v.model,"
                " sentiment_reason = NULL, sentiment_attempts = t.sentiment_attempts + 1,"
                " sentiment_next_at = NULL, sentiment_updated_at = now()"
                " FROM unnest(CAST(:ids AS bigint[]), CAST(:versions AS int[]), CAST(:labels AS text[]),"
                " CAST(:scores AS float8[]), CAST(:backends AS text[]), CAST(:models AS text[]))"
                " AS v(id, version, label, score, backend, model)"
                " WHERE t.id = v.id AND t.sentiment_version = v.version AND t.sentiment_status <> 'done'"
                f" RETURNING t.id, t.{_post}, t.sentiment_version, t.author_id",
        "fail": f"UPDATE {_table} AS t SET sentiment_attempts = t.sentiment_attempts + 1,"
                " sentiment_reason = v.reason, sentiment_updated_at = now(),"
                " sentiment_status = CASE WHEN NOT v.retryable OR t.sentiment_attempts + 1 >= :max"
                " THEN 'failed' ELSE t.sentiment_status END,"
                " sentiment_next_at = now() + make_interval(secs =>"
                " least(:base * power(2, t.sentiment_attempts), :cap))"
                " FROM unnest(CAST(:ids AS bigint[]), CAST(:versions AS int[]), CAST(:reasons AS text[]),"
                " CAST(:retryable AS boolean[])) AS v(id, version, reason, retryable)"
                " WHERE t.id = v.id AND t.sentiment_version = v.version AND t.sentiment_status <> 'done'"
                f" RETURNING t.id, t.{_post}, t.sentiment_version, t.sentiment_status,"
                " EXTRACT(EPOCH FROM t.sentiment_next_at - now()), t.author_id",
        "due": f"SELECT id, sentiment_version FROM {_table} WHERE sentiment_status IN ('pending', 'failed')"
               " AND ((sentiment_status = 'pending' AND COALESCE(sentiment_next_at,"
               " updated_at + make_interval(secs => :grace)) <= now())"
               " OR (sentiment_status = 'failed' AND COALESCE(sentiment_next_at, now()) <= now()))"
               " ORDER BY id LIMIT :limit",
        "oldest": f"SELECT EXTRACT(EPOCH FROM now() - min(updated_at)) FROM {_table}"
                  " WHERE sentiment_status = 'pending'",
    }


#: Pop up to ARGV[1] tokens from KEYS[1] and delete each one's queued mark (ARGV[2] followed by
#: the token's ``kind:id:version``) in the same step. Deleted after the pop, in a second call, a
#: worker killed between the two left marks behind that kept the reconciler from queueing those
#: items again for the marks' 24 hours (1 post in ~100 when queue workers were SIGKILLed under
#: load). Now a popped item that is lost with its worker is pending without a mark: the
#: reconciler queues it again after ``SENTIMENT_PENDING_GRACE``.
_POP_UNMARKED = cache.Lua("""
local tokens = redis.call('LPOP', KEYS[1], ARGV[1])
if not tokens then
  return {}
end
for _, token in ipairs(tokens) do
  local item = string.match(token, '^[^:]*:[^:]*:[^:]*')
  if item then
    redis.call('DEL', ARGV[2] .. item)
  end
end
return tokens
""")


def pop_items(r: Any, count: int) -> list[Any]:
    """Up to ``count`` queued tokens, their queued marks cleared (an item may be queued again at
    once: an edit, the reconciler)."""
    return list(_POP_UNMARKED(r, [jobs.TODO_KEY], [count, jobs.QUEUED_PREFIX]) or [])


def drain() -> int:
    """RQ job: classify queued items batch by batch until the queue is empty (or the budget ends).

    It returns only once the list is empty and its draining mark cleared, or after handing a
    remaining backlog to a fresh job (the mark stays for it).
    """
    cfg = get_config()
    r = cache.client()
    deadline = time.monotonic() + DRAIN_BUDGET_SECONDS
    processed = 0
    with jobs.TODO_LIST.draining():
        while True:
            backend = sentiment.current_backend(cfg)
            size = backend.batch_size * (cfg.ollama_parallel if backend.name == "ollama" else 1)
            tokens = pop_items(r, size)
            if tokens and len(tokens) < size and cfg.sentiment_batch_wait > 0:
                time.sleep(cfg.sentiment_batch_wait)
                tokens += pop_items(r, size - len(tokens))
            if not tokens:
                if jobs.TODO_LIST.finished(r):
                    return processed
                continue  # items arrived after the pop: they are this job's
            items = [i for i in (jobs.parse_token(t) for t in tokens) if i is not None]
            if items:
                processed += process_batch(items, backend, cfg)
            if time.monotonic() > deadline:
                if not jobs.TODO_LIST.finished(r):
                    jobs.enqueue_drain(cfg)
                return processed


def process_batch(items: list[jobs.Item], backend: Backend, cfg: Config) -> int:
    """Classify and record one batch; returns how many verdicts were written."""
    started = time.perf_counter()
    latest: dict[tuple[str, int], jobs.Item] = {}
    for item in items:
        key = (item.kind, item.id)
        if key not in latest or latest[key].version < item.version:
            latest[key] = item
    unique = list(latest.values())
    keys = [i.lock_key for i in unique]
    try:
        locked = {int(k) for (k,) in db.run(
            "SELECT k FROM unnest(CAST(:keys AS bigint[])) AS k WHERE pg_try_advisory_lock(k)", keys=keys)}
        try:
            work = _load([i for i in unique if i.lock_key in locked])
            written = _classify_and_record(work, backend, cfg) if work else 0
        finally:
            if locked:
                db.run("SELECT pg_advisory_unlock(k) FROM unnest(CAST(:keys AS bigint[])) AS k",
                       keys=sorted(locked))
    except errors.MinitwitterError:
        # PostgreSQL trouble: put the batch back for later and let RQ record the failure.
        metrics.JOBS.labels("sentiment", "error").inc()
        db.close_connection()
        cache.soft(lambda _r: jobs.push(unique, cfg), 0)
        raise
    skipped = len(unique) - len(locked)
    if skipped:
        metrics.JOBS.labels("sentiment", "locked").inc(skipped)
    metrics.JOB_SECONDS.labels("sentiment").observe(time.perf_counter() - started)
    return written


def _load(items: list[jobs.Item]) -> list[jobs.Item]:
    """Fill in texts; drop outdated versions and finished items (they need nothing)."""
    work: list[jobs.Item] = []
    for kind in jobs.KINDS:
        wanted = {i.id: i for i in items if i.kind == kind}
        if not wanted:
            continue
        for row_id, post_id, content, version, status, attempts in db.run(_SQL[kind]["fetch"],
                                                                          ids=list(wanted)):
            item = wanted[row_id]
            if version != item.version or status == "done":
                metrics.JOBS.labels("sentiment", "stale" if version != item.version else "duplicate").inc()
                continue
            item.post_id, item.text, item.status, item.attempts = int(post_id), content, status, attempts
            work.append(item)
    return work


def _classify_and_record(work: list[jobs.Item], backend: Backend, cfg: Config) -> int:
    outcomes = sentiment.classify(backend, [i.text for i in work])
    failed = [n for n, o in enumerate(outcomes) if isinstance(o, BackendError)]
    if failed and backend.name == "ollama":
        alternative = sentiment.report_failure(cfg) if cfg.sentiment_backend == "auto" else None
        if alternative is None or alternative.name == "ollama":
            alternative = sentiment.fallback_backend(cfg)
            # Without "auto", the fallback answers only once retries are exhausted or pointless.
            if alternative is not None:
                failed = [n for n in failed if _is_final(work[n], outcomes[n], cfg)]  # type: ignore[arg-type]
        if alternative is not None and alternative.name != "ollama" and failed:
            redo = sentiment.classify(alternative, [work[n].text for n in failed])
            for n, outcome in zip(failed, redo, strict=True):
                outcomes[n] = outcome
    done = [(i, o) for i, o in zip(work, outcomes, strict=True) if isinstance(o, Verdict)]
    bad = [(i, o) for i, o in zip(work, outcomes, strict=True) if isinstance(o, BackendError)]
    written = _record_verdicts(done) if done else 0
    if bad:
        _record_failures(bad, backend, cfg)
    return written


def _is_final(item: jobs.Item, error: BackendError, cfg: Config) -> bool:
    """True when this failure would leave the item ``failed`` (no retry will follow)."""
    return not error.retryable or item.attempts + 1 >= cfg.sentiment_max_attempts


def _record_verdicts(done: list[tuple[jobs.Item, Verdict]]) -> int:
    written: list[tuple[jobs.Item, Verdict]] = []
    delivery_ids: list[int] = []
    authors: set[int] = set()
    with db.transaction():
        for kind in jobs.KINDS:
            batch = [(i, v) for i, v in done if i.kind == kind]
            if not batch:
                continue
            rows = db.run(_SQL[kind]["done"], ids=[i.id for i, _ in batch],
                          versions=[i.version for i, _ in batch], labels=[v.label for _, v in batch],
                          scores=[v.score for _, v in batch], backends=[v.backend for _, v in batch],
                          models=[v.model for _, v in batch])
            ok = {int(r[0]) for r in rows}
            if kind == "post":
                authors.update(int(r[3]) for r in rows)
            kept = [(i, v) for i, v in batch if i.id in ok]
            written.extend(kept)
            delivery_ids += callbacks.create_deliveries(
                kind, [(i.id, i.version, i.post_id, v.as_json()) for i, v in kept])
    for _item, verdict in written:
        metrics.SENTIMENT_ITEMS.labels(verdict.backend, verdict.label, "done").inc()
    _invalidate([item for item, _ in written], authors)
    callbacks.enqueue_deliveries(delivery_ids)
    return len(written)


def _record_failures(bad: list[tuple[jobs.Item, BackendError]], backend: Backend, cfg: Config) -> None:
    retry_tokens: list[str] = []
    retry_delay = cfg.sentiment_retry_max
    delivery_ids: list[int] = []
    authors: set[int] = set()
    with db.transaction():
        for kind in jobs.KINDS:
            batch = [(i, e) for i, e in bad if i.kind == kind]
            if not batch:
                continue
            rows = db.run(_SQL[kind]["fail"], ids=[i.id for i, _ in batch],
                          versions=[i.version for i, _ in batch], reasons=[e.reason for _, e in batch],
                          retryable=[e.retryable for _, e in batch], max=cfg.sentiment_max_attempts,
                          base=cfg.sentiment_retry_base, cap=cfg.sentiment_retry_max)
            by_id = {i.id: (i, e) for i, e in batch}
            final: list[tuple[int, int, int, dict[str, Any]]] = []
            for row_id, post_id, version, status, delay, author_id in rows:
                item, error = by_id[int(row_id)]
                if kind == "post" and status == "failed":
                    authors.add(int(author_id))  # its profile's sentiment summary counts failures
                if status == "pending":
                    retry_tokens.append(item.token)
                    retry_delay = min(retry_delay, max(0.0, float(delay)))
                    metrics.SENTIMENT_ITEMS.labels(backend.name, "none", "retry").inc()
                elif item.status == "pending":  # newly failed: tell the callbacks once
                    metrics.SENTIMENT_ITEMS.labels(backend.name, "none", "failed").inc()
                    log.warning("sentiment analysis failed", extra={
                        "kind": kind, "item_id": item.id, "reason": error.reason, "call_id": item.call_id})
                    final.append((item.id, version, int(post_id), {
                        "status": "failed", "label": None, "score": None, "model": backend.model}))
            delivery_ids += callbacks.create_deliveries(kind, final, consume=False)
    _invalidate([item for item, _ in bad], authors)
    callbacks.enqueue_deliveries(delivery_ids)
    if retry_tokens:
        try:
            jobs.sentiment_queue(cfg).enqueue_in(timedelta(seconds=retry_delay), jobs.requeue, retry_tokens,
                                             result_ttl=0, failure_ttl=3600)
        except (redis.RedisError, OSError) as exc:
            cache.mark_down(exc)  # the reconciler picks them up when their retry is due


def _invalidate(items: list[jobs.Item], post_authors: set[int]) -> None:
    """Drop the caches that show the items, and the account views (sentiment summaries) of
    ``post_authors``: one batch call per kind, not one per item."""
    post_ids = [i.id for i in items if i.kind == "post"]
    comment_ids = [(i.post_id, i.id) for i in items if i.kind == "comment"]
    try:
        if post_ids:
            invalidation.invalidate_posts(post_ids, post_authors)
        if comment_ids:
            invalidation.invalidate_comments(comment_ids)
    except Exception:
        # A stale cache entry expires on its own; the verdict itself is stored.
        log.warning("cache invalidation failed", exc_info=True)


# --- reconciler --------------------------------------------------------------------------------

def reconcile(config: Config | None = None) -> dict[str, int]:
    """Re-enqueue items left pending too long or due for a retry; re-queue overdue callbacks."""
    cfg = config or get_config()
    counts: dict[str, int] = {}
    for kind in jobs.KINDS:
        rows = db.run(_SQL[kind]["due"], grace=cfg.sentiment_pending_grace, limit=RECONCILE_LIMIT)
        counts[kind] = jobs.push([jobs.Item(kind, int(i), int(v)) for i, v in rows], cfg) if rows else 0
    r = cache.client(cfg)
    if r.llen(jobs.TODO_KEY):
        jobs.enqueue_drain(cfg)  # the drain job of a killed worker is gone; start a new one
    if r.llen(homefeed.FAN_OUT_TODO):
        homefeed.kick_fan_out(r)  # likewise for home-feed fan-outs
    counts["callbacks"] = callbacks.requeue_overdue(cfg)
    if any(counts.values()):
        log.info("reconciled", extra=counts)
    return counts


def _watch_backend(cfg: Config) -> None:
    while True:
        with logs.context(function="sentiment-backend"):
            try:
                sentiment.current_backend(cfg)  # "auto" re-checks Ollama's /api/tags when due
            except Exception:
                log.exception("sentiment backend check failed")
        time.sleep(max(0.2, min(cfg.ollama_check_interval, cfg.reconcile_interval)))


def on_worker_start(worker: Any) -> None:  # noqa: ARG001 - the worker hook's signature
    """Hook called by ``gateway.worker`` when a queue worker starts: keep its sentiment backend
    choice (and the ``minitwitter_sentiment_backend_active`` gauge) current while it idles. The
    reconciler runs in the scheduler process (``gateway.scheduler``)."""
    cfg = get_config()
    threading.Thread(target=_watch_backend, args=(cfg,), name="sentiment-backend", daemon=True).start()
