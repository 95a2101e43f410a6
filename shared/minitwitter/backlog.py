"""Scrape-time gauges of the work waiting: RQ queues, the sentiment backlog and its Redis queue.

They read Redis and PostgreSQL on every scrape, so they are registered from above
(:func:`register_collectors`, called by the gateway and the worker metrics endpoint at start),
never by :mod:`metrics` itself, which knows neither store. A store that does not answer makes a
collector report ``minitwitter_scrape_collector_success{collector} 0`` instead of failing the
scrape.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import redis
from prometheus_client.core import GaugeMetricFamily, Metric
from rq import Queue
from rq.job import Job
from rq.utils import str_to_date

from . import cache, db, errors, jobs, metrics

#: RQ registries reported per queue, besides the queued jobs themselves.
QUEUE_REGISTRIES = ("started", "scheduled", "deferred", "failed")
#: Unfinished sentiment work per kind; both predicates match the partial "todo" indexes.
_BACKLOG_SQL = """
SELECT kind, count(*) FILTER (WHERE sentiment_status = 'pending'),
       count(*) FILTER (WHERE sentiment_status = 'failed'),
       COALESCE(EXTRACT(EPOCH FROM now() - min(updated_at) FILTER (WHERE sentiment_status = 'pending')), 0)
FROM (SELECT 'post' AS kind, sentiment_status, updated_at FROM posts
      WHERE sentiment_status IN ('pending', 'failed')
      UNION ALL
      SELECT 'comment', sentiment_status, updated_at FROM comments
      WHERE sentiment_status IN ('pending', 'failed')) todo
GROUP BY kind
"""
SENTIMENT_KINDS = ("post", "comment")


def _collector_status(name: str, ok: bool) -> GaugeMetricFamily:
    family = GaugeMetricFamily("minitwitter_scrape_collector_success",
                               "1 when a scrape-time collector could read its store", labels=["collector"])
    family.add_metric([name], 1.0 if ok else 0.0)
    return family


def queue_families(queue_names: Sequence[str]) -> list[Metric]:
    """Jobs per RQ queue and state, and the age of each queue's oldest waiting job."""
    jobs = GaugeMetricFamily("minitwitter_queue_jobs", "RQ jobs per queue and state",
                             labels=["queue", "state"])
    age = GaugeMetricFamily("minitwitter_queue_oldest_job_age_seconds",
                            "Age of the oldest job waiting in a queue (0 when empty)", labels=["queue"])
    try:
        conn = cache.client()
        now = time.time()
        for name in queue_names:
            q = Queue(name, connection=conn)
            jobs.add_metric([name, "queued"], float(q.count))
            for state in QUEUE_REGISTRIES:
                registry = getattr(q, f"{state}_job_registry")
                jobs.add_metric([name, state], float(registry.get_job_count(cleanup=False)))
            oldest = 0.0
            first = q.get_job_ids(0, 1)
            if first:
                raw = conn.hget(Job.key_for(first[0]), "enqueued_at")
                if raw:
                    oldest = max(0.0, now - str_to_date(raw).timestamp())
            age.add_metric([name], oldest)
    except (redis.RedisError, OSError):
        return [_collector_status("queues", False)]
    return [jobs, age, _collector_status("queues", True)]


def sentiment_backlog_families() -> list[Metric]:
    """Items waiting for (or failed at) a verdict, and how long the oldest pending one has waited."""
    items = GaugeMetricFamily("minitwitter_sentiment_backlog_items",
                              "Posts and comments by unfinished sentiment status", labels=["kind", "status"])
    age = GaugeMetricFamily("minitwitter_sentiment_oldest_pending_age_seconds",
                            "Age of the oldest item still pending a verdict (0 when none)", labels=["kind"])
    try:
        with db.transaction():
            db.run("SET LOCAL statement_timeout = '2s'")  # a scrape must never hang on a slow store
            rows = {row[0]: row[1:] for row in db.run(_BACKLOG_SQL)}
    except errors.MinitwitterError:
        return [_collector_status("sentiment_backlog", False)]
    for kind in SENTIMENT_KINDS:
        pending, failed, oldest = rows.get(kind, (0, 0, 0))
        items.add_metric([kind, "pending"], float(pending))
        items.add_metric([kind, "failed"], float(failed))
        age.add_metric([kind], max(0.0, float(oldest)))
    return [items, age, _collector_status("sentiment_backlog", True)]


def sentiment_queue_families() -> list[Metric]:
    """Items waiting in the sentiment queue (the oldest pending item's age is in the backlog's)."""
    depth = GaugeMetricFamily("minitwitter_sentiment_queue_depth",
                              "Sentiment items waiting in the Redis queue")
    depth.add_metric([], float(cache.soft(lambda r: r.llen(jobs.TODO_KEY), 0)))
    return [depth]


def register_collectors(queue_names: Sequence[str]) -> None:
    """Expose the queue and sentiment backlog gauges on this process's /metrics (once)."""
    global _registered
    if _registered:
        return
    _registered = True
    names = tuple(queue_names)
    metrics.add_scrape_collector(sentiment_queue_families)
    metrics.add_scrape_collector(lambda: queue_families(names))
    metrics.add_scrape_collector(sentiment_backlog_families)


_registered = False
