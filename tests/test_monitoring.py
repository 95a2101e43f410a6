"""Monitoring: Prometheus config and rules (promtool), dashboards, scrape-time collectors, the
worker metrics endpoint, log retention, and the proof against a real Prometheus.

The proof (:func:`test_every_dashboard_and_recording_expression_has_data`) starts Debian's
Prometheus with a configuration derived from ``monitoring/prometheus.yml`` (same jobs, targets
replaced by local addresses), the real gateway serving ``stack.yml``'s functions, real RQ workers
with their metrics endpoint, and the Redis and PostgreSQL exporters; drives a little real
traffic; then queries every dashboard panel expression and every recording rule: each must
return data. The Debian binaries are required: a missing one fails the tests, never skips them.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from rq import Queue

from gateway import embedded, observability
from gateway.run import stop_services
from minitwitter import backlog, cache, db, metrics
from minitwitter.config import REPO_ROOT, load_config
from tests.callback_receiver import Receiver
from tests.conftest import base_env, eventually, wait_http
from tests.fake_ollama import FakeOllama

MONITORING = REPO_ROOT / "monitoring"
DASHBOARDS = sorted((MONITORING / "grafana" / "dashboards").glob("*.json"))
RULE_FILES = sorted((MONITORING / "rules").glob("*.yml"))
RULE_TESTS = sorted((MONITORING / "tests").glob("*.yml"))
#: Scrape jobs monitoring/prometheus.yml must define (the proof replaces each one's targets).
JOBS = {"prometheus", "gateway", "worker", "redis", "postgres"}
#: Series the workers produce while a round of traffic settles (the proof waits for them).
BACKGROUND_SERIES = ("minitwitter_job_duration_seconds_count", "minitwitter_sentiment_items_total",
                     "minitwitter_sentiment_classification_duration_seconds_count",
                     "minitwitter_callback_deliveries_total", "minitwitter_async_invocations_total")
#: Metric name prefixes that come from the exporters, not from our code.
EXPORTER_PREFIXES = ("pg_", "redis_")


def binary(name: str) -> str:
    """Path of a required Debian binary; its absence is a failure (`make test` installs it)."""
    path = shutil.which(name)
    assert path, f"{name} is not installed (apt-get install prometheus prometheus-redis-exporter " \
                 "prometheus-postgres-exporter)"
    return path


def dashboard_targets() -> list[tuple[str, str, str]]:
    """(dashboard file, panel title, expression) for every query of every panel."""
    out = []
    for path in DASHBOARDS:
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel.get("targets", []):
                out.append((path.name, panel["title"], target["expr"]))
    return out


def rules(kind: str) -> list[dict[str, Any]]:
    """Every rule of ``kind`` ("record" or "alert") in monitoring/rules."""
    found = []
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            found += [r for r in group["rules"] if kind in r]
    return found


# --- static checks ------------------------------------------------------------------------------

@pytest.mark.no_stores
def test_promtool_check_config_accepts_prometheus_yml_and_rules() -> None:
    result = subprocess.run([binary("promtool"), "check", "config", str(MONITORING / "prometheus.yml")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    assert {job["job_name"] for job in config["scrape_configs"]} == JOBS
    assert sorted(MONITORING / f for f in config["rule_files"]) == RULE_FILES


@pytest.mark.no_stores
def test_promtool_rule_unit_tests_pass() -> None:
    assert RULE_TESTS, "no rule unit tests in monitoring/tests"
    result = subprocess.run([binary("promtool"), "test", "rules", *map(str, RULE_TESTS)],
                            capture_output=True, text=True, timeout=120, cwd=MONITORING)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.no_stores
def test_every_alert_has_a_firing_unit_test() -> None:
    fired: set[str] = set()
    for path in RULE_TESTS:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                if check.get("exp_alerts"):
                    fired.add(check["alertname"])
    alerts = {rule["alert"] for rule in rules("alert")}
    assert alerts >= {"MinitwitterHigh5xxRatio", "MinitwitterLatencyOverObjective", "SentimentBacklogGrowing",
                      "SentimentPendingTooOld", "SentimentFailures", "SentimentLLMUnavailable",
                      "CallbackDeliveriesFailing", "PostgresDown", "RedisDown"}
    assert alerts - fired == set(), "alerts without a unit test that makes them fire"
    for rule in rules("alert"):
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}
        assert rule["annotations"]["summary"]


@pytest.mark.no_stores
def test_grafana_provisioning_and_dashboards_are_consistent() -> None:
    datasources = yaml.safe_load(
        (MONITORING / "grafana/provisioning/datasources/prometheus.yml").read_text())["datasources"]
    assert [(d["uid"], d["type"], d["url"]) for d in datasources] == [
        ("prometheus", "prometheus", "http://prometheus:9090")]
    provider = yaml.safe_load(
        (MONITORING / "grafana/provisioning/dashboards/minitwitter.yml").read_text())["providers"][0]
    assert provider["type"] == "file" and provider["options"]["path"]
    assert [p.name for p in DASHBOARDS] == ["data-stores.json", "sentiment-pipeline.json",
                                            "service-overview.json"]
    uids = set()
    for path in DASHBOARDS:
        board = json.loads(path.read_text())
        assert board["uid"] not in uids
        uids.add(board["uid"])
        ids = [p["id"] for p in board["panels"]]
        assert len(ids) == len(set(ids)), f"{path.name}: duplicate panel ids"
        for panel in board["panels"]:
            pos = panel["gridPos"]
            assert pos["x"] + pos["w"] <= 24, f"{path.name}: {panel['title']} overflows the grid"
            if panel["type"] == "row":
                continue
            assert panel["datasource"]["uid"] == "prometheus"
            assert panel["targets"], f"{path.name}: {panel['title']} has no query"
            for target in panel["targets"]:
                assert target["datasource"]["uid"] == "prometheus"
                assert "$" not in target["expr"], "template variables would not be checked by the proof"


def test_dashboard_and_rule_expressions_only_use_exported_metrics() -> None:
    """Every metric a query names is exported by our code, a recording rule or an exporter."""
    backlog.register_collectors(["faas-request", "sentiment", "callbacks", "default"])
    text, _ = metrics.render()
    # The text format's TYPE line names counters with their _total already.
    suffixes = {"histogram": ("_bucket", "_sum", "_count")}
    exported = {"up", "gateway_service_count"}  # Prometheus itself; the gateway's replica collector
    for line in text.decode().splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            exported |= {name + suffix for suffix in suffixes.get(kind, ("",))}
    recorded = {rule["record"] for rule in rules("record")}
    expressions = [e for _, _, e in dashboard_targets()] + [r["expr"] for r in rules("record") + rules("alert")]
    for expr in expressions:
        for name in re.findall(r"\b([a-z_]+:[a-z0-9_:]+|(?:minitwitter|gateway|pg|redis)_[a-z0-9_]+)\b", expr):
            if name.startswith(EXPORTER_PREFIXES) or name in recorded:
                continue
            assert name in exported, f"{name!r} (in {expr!r}) is not exported by any Minitwitter process"


def test_metrics_exposition_is_valid_with_every_collector_registered() -> None:
    """promtool lints what /metrics serves (a duplicated family would fail every scrape)."""
    backlog.register_collectors(["faas-request", "sentiment", "callbacks", "default"])
    text, _ = metrics.render()
    result = subprocess.run([binary("promtool"), "check", "metrics"], input=text, capture_output=True,
                            timeout=30)
    # OpenFaaS's gateway names its replica gauge gateway_service_count (the contract, and what its
    # autoscaling rules read), which promtool's naming lint flags whenever the gateway's collector
    # is registered in this process (it is once a test has built a gateway app). Only that lint
    # finding (exit 3) is accepted; any error or other finding fails.
    contract_names = {b'gateway_service_count non-histogram and non-summary metrics should not have "_count" suffix'}
    findings = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert result.returncode in (0, 3), result.stdout + result.stderr
    assert [line for line in findings if line not in contract_names] == [], findings
    assert text.count(b"# TYPE minitwitter_sentiment_oldest_pending_age_seconds ") == 1


@pytest.fixture
def batched_by_hand(monkeypatch: pytest.MonkeyPatch) -> None:
    """This test's batched updates wait for metrics.flush()/render(): no background thread."""
    monkeypatch.setattr(metrics, "_updates", metrics._Updates(background=False))  # noqa: SLF001


def test_batched_updates_give_the_same_samples_as_prometheus_client(batched_by_hand: None) -> None:
    """metrics.child() batches counter increments and histogram observations; once applied,
    every sample (bucket, sum, count, total) equals what prometheus_client's own calls give."""
    from prometheus_client import CollectorRegistry, Counter, Histogram

    registry = CollectorRegistry()
    buckets = metrics.LATENCY_BUCKETS
    direct_h = Histogram("direct_seconds", "h", ["f"], buckets=buckets, registry=registry)
    batched_h = Histogram("batched_seconds", "h", ["f"], buckets=buckets, registry=registry)
    direct_c = Counter("direct", "c", ["f"], registry=registry)
    batched_c = Counter("batched", "c", ["f"], registry=registry)
    # Every bound exactly, just above and below it, zero, beyond the last bound.
    values = [0.0, 1e-6, 45.0] + [b + d for b in buckets for d in (-1e-9, 0.0, 1e-9)]
    for value in values:
        direct_h.labels("x").observe(value)
        metrics.child(batched_h, "x").observe(value)
    for amount in (1, 1, 3, 0, 2.5):
        direct_c.labels("x").inc(amount)
        metrics.child(batched_c, "x").inc(amount)
    with pytest.raises(ValueError, match="non-negative"):
        metrics.child(batched_c, "x").inc(-1)
    metrics.flush()

    def samples(prefix: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        return {(s.name.removeprefix(prefix), tuple(sorted(s.labels.items()))): s.value
                for family in registry.collect() if family.name.startswith(prefix)
                for s in family.samples if not s.name.endswith("_created")}

    assert samples("direct") == samples("batched")
    assert samples("direct")[("_seconds_count", (("f", "x"),))] == len(values)
    assert samples("direct")[("_total", (("f", "x"),))] == 7.5
    # A NaN reaches the sum (NaN from then on) and no bucket, in both.
    direct_h.labels("x").observe(math.nan)
    metrics.child(batched_h, "x").observe(math.nan)
    metrics.flush()
    buckets = {k: v for k, v in samples("direct").items() if not k[0].endswith("_sum")}
    assert buckets == {k: v for k, v in samples("batched").items() if not k[0].endswith("_sum")}
    assert math.isnan(samples("batched")[("_seconds_sum", (("f", "x"),))])


def test_a_scrape_includes_the_scraping_process_own_pending_updates(batched_by_hand: None) -> None:
    """render() applies what this process batched before it reads the samples."""
    series = 'minitwitter_cache_requests_total{cache="render-test",result="hit"}'
    counter = metrics.child(metrics.CACHE_REQUESTS, "render-test", "hit")
    before = _scraped(metrics.render()[0], series)
    counter.inc(3)
    assert metrics._updates.pending  # noqa: SLF001 - nothing applied it yet
    after = _scraped(metrics.render()[0], series)
    assert after - before == 3


def test_a_failed_sample_write_stays_pending(batched_by_hand: None) -> None:
    """A write that fails (a full disk under the mmap'ed file, say) is retried, not dropped."""
    from prometheus_client import CollectorRegistry, Counter

    counter = Counter("flaky", "c", ["f"], registry=CollectorRegistry())
    value = counter.labels("x")._value  # noqa: SLF001
    real_inc, calls = value.inc, []

    def failing_once(amount: float) -> None:
        calls.append(amount)
        if len(calls) == 1:
            raise OSError("No space left on device")
        real_inc(amount)

    value.inc = failing_once
    metrics.child(counter, "x").inc(2)
    metrics.flush()
    assert value.get() == 0
    metrics.child(counter, "x").inc(1)
    metrics.flush()
    assert calls == [2, 3] and value.get() == 3


def test_unit_increments_from_many_threads_are_all_applied_while_an_apply_runs(batched_by_hand: None) -> None:
    """Unit increments are counted without a lock (metrics.Tally): four threads counting while
    another applies over and over lose nothing and count nothing twice."""
    from prometheus_client import CollectorRegistry, Counter, Histogram

    registry = CollectorRegistry()
    counter = metrics.child(Counter("tallied", "c", ["f"], registry=registry), "x")
    histogram = metrics.child(Histogram("tallied_seconds", "h", ["f"], registry=registry), "x")
    per_thread = 20_000

    def count() -> None:
        for _ in range(per_thread):
            counter.inc()
            histogram.observe(0.001)

    threads = [threading.Thread(target=count) for _ in range(4)]
    for thread in threads:
        thread.start()
    while any(thread.is_alive() for thread in threads):
        metrics.flush()
    metrics.flush()
    samples = {s.name: s.value for family in registry.collect() for s in family.samples
               if not s.name.endswith("_created")}
    assert samples["tallied_total"] == 4 * per_thread
    assert samples["tallied_seconds_count"] == 4 * per_thread
    assert samples["tallied_seconds_sum"] == pytest.approx(4 * per_thread * 0.001)


def test_a_forked_child_applies_only_its_own_increments(batched_by_hand: None) -> None:
    """What the parent counted before a fork is applied by the parent, never again by the child;
    and a child forks in turn (``make run`` forks the gateway's main, which forks its workers)."""
    from prometheus_client import CollectorRegistry, Counter

    counter = metrics.child(Counter("forked", "c", ["f"], registry=CollectorRegistry()), "x")
    value = counter._value  # noqa: SLF001 - the sample each process writes (each its own copy)
    for _ in range(5):
        counter.inc()

    def forked(child: Callable[[], int]) -> int:
        """Exit code of ``child()`` run in a forked process (-1: still running after 10 s)."""
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                code = child()
            finally:
                os._exit(code)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                return os.waitstatus_to_exitcode(status)
            time.sleep(0.01)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        return -1

    def grandchild() -> int:
        counter.inc()
        metrics.flush()
        return 0 if value.get() == 2 else 3  # its parent's one, then its own

    def child() -> int:  # its copy of the parent's five must not be applied here
        counter.inc()
        metrics.flush()
        if value.get() != 1:
            return 2
        return forked(grandchild)

    assert forked(child) == 0
    metrics.flush()
    assert value.get() == 5


def _scraped(text: bytes, series: str) -> float:
    for line in text.decode().splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


# --- scrape-time collectors ---------------------------------------------------------------------

def _sample(families: list[Any], name: str, **labels: str) -> float | None:
    for family in families:
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return None


def _user(username: str) -> int:
    return int(db.scalar("INSERT INTO users (username, password_hash) VALUES (:u, 'x') RETURNING id",
                         u=username))


def test_queue_collector_reports_depth_and_oldest_job_age() -> None:
    q = Queue("sentiment", connection=cache.client())
    q.enqueue("minitwitter.nonexistent.job", job_id="mon-old")
    q.enqueue("minitwitter.nonexistent.job", job_id="mon-new")
    # Make the head of the queue 90 s old, as if the workers had stalled.
    old = (datetime.now(UTC) - timedelta(seconds=90)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    cache.client().hset("rq:job:mon-old", "enqueued_at", old)

    families = backlog.queue_families(["sentiment", "callbacks"])

    assert _sample(families, "minitwitter_queue_jobs", queue="sentiment", state="queued") == 2
    assert _sample(families, "minitwitter_queue_jobs", queue="callbacks", state="queued") == 0
    assert _sample(families, "minitwitter_queue_jobs", queue="sentiment", state="failed") == 0
    age = _sample(families, "minitwitter_queue_oldest_job_age_seconds", queue="sentiment")
    assert age is not None and 89 <= age < 120
    assert _sample(families, "minitwitter_queue_oldest_job_age_seconds", queue="callbacks") == 0
    assert _sample(families, "minitwitter_scrape_collector_success", collector="queues") == 1


def test_backlog_collector_reports_pending_failed_and_oldest_pending_age() -> None:
    author = _user("mon_author")
    for content, status, age_s in [("a", "pending", 300), ("b", "pending", 10), ("c", "failed", 900),
                                   ("d", "done", 3600)]:
        db.run("INSERT INTO posts (author_id, content, sentiment_status, created_at, updated_at)"
               " VALUES (:a, :c, :s, now() - make_interval(secs => :age), now() - make_interval(secs => :age))",
               a=author, c=content, s=status, age=age_s)

    families = backlog.sentiment_backlog_families()

    assert _sample(families, "minitwitter_sentiment_backlog_items", kind="post", status="pending") == 2
    assert _sample(families, "minitwitter_sentiment_backlog_items", kind="post", status="failed") == 1
    assert _sample(families, "minitwitter_sentiment_backlog_items", kind="comment", status="pending") == 0
    age = _sample(families, "minitwitter_sentiment_oldest_pending_age_seconds", kind="post")
    assert age is not None and 299 <= age < 330
    assert _sample(families, "minitwitter_sentiment_oldest_pending_age_seconds", kind="comment") == 0
    assert _sample(families, "minitwitter_scrape_collector_success", collector="sentiment_backlog") == 1


def test_collectors_report_failure_instead_of_breaking_the_scrape(config: Any, monkeypatch: Any) -> None:
    from minitwitter import config as config_module

    dead = f"127.0.0.1:{embedded.free_port()}"
    broken = config.with_overrides(redis_url=f"redis://{dead}/0", database_url=f"postgresql://postgres@{dead}/x",
                                   redis_timeout=0.3, db_connect_timeout=0.5)
    cache.reset()
    db.close_connection()
    monkeypatch.setattr(config_module, "_CONFIG", broken)

    queues = backlog.queue_families(["sentiment"])
    pending = backlog.sentiment_backlog_families()

    assert _sample(queues, "minitwitter_scrape_collector_success", collector="queues") == 0
    assert _sample(queues, "minitwitter_queue_jobs") is None
    assert _sample(pending, "minitwitter_scrape_collector_success", collector="sentiment_backlog") == 0
    cache.reset()
    db.close_connection()


# --- log retention and worker settings ----------------------------------------------------------

def _log_row(age_days: float, message: str) -> None:
    db.run("INSERT INTO logs (ts, level, logger, message) VALUES"
           " (now() - make_interval(secs => :s), 'INFO', 'test', :m)", s=age_days * 86400, m=message)


def test_log_pruner_deletes_only_rows_older_than_the_retention() -> None:
    _log_row(40, "expired")
    _log_row(29.9, "kept")
    _log_row(0, "fresh")

    assert observability.LogPruner(30, 3600).prune_once() == 1

    assert [r[0] for r in db.run("SELECT message FROM logs ORDER BY ts")] == ["kept", "fresh"]


@pytest.mark.no_stores
def test_worker_settings_that_would_hide_metrics_are_refused() -> None:
    with pytest.raises(SystemExit, match="PROMETHEUS_MULTIPROC_DIR"):
        observability.check_worker_settings(load_config({"WORKER_METRICS_PORT": "9102", "WORKER_COUNT": "2"}))
    with pytest.raises(SystemExit, match="LOG_RETENTION_DAYS"):
        observability.check_worker_settings(load_config({"LOG_RETENTION_DAYS": "0"}))
    observability.check_worker_settings(load_config({"WORKER_METRICS_PORT": "9102", "WORKER_COUNT": "1"}))


@pytest.mark.slow
def test_worker_serves_metrics_and_prunes_expired_logs(start_workers: Any, tmp_path: Path) -> None:
    _log_row(10, "expired")
    _log_row(1, "kept")
    port = embedded.free_port()
    prom_dir = tmp_path / "worker-metrics"
    prom_dir.mkdir()
    start_workers(WORKER_COUNT="2", WORKER_METRICS_PORT=str(port), WORKER_METRICS_BIND="127.0.0.1",
                  PROMETHEUS_MULTIPROC_DIR=str(prom_dir), LOG_RETENTION_DAYS="7")
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/healthz")

    eventually(lambda: db.scalar("SELECT count(*) FROM logs WHERE message = 'expired'") == 0)
    assert db.scalar("SELECT count(*) FROM logs WHERE message = 'kept'") == 1
    body = httpx.get(url + "/metrics").text
    assert 'minitwitter_sentiment_backend_configured{backend="vader"} 1.0' in body
    assert 'minitwitter_queue_jobs{queue="sentiment",state="queued"} 0.0' in body
    assert 'minitwitter_dependency_errors_total{dependency="postgres"} 0.0' in body
    assert httpx.get(url + "/nothing").status_code == 404


# --- the proof against a real Prometheus --------------------------------------------------------

class Process:
    """A helper process with its own log file, stopped at the end of the test."""

    def __init__(self, args: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.log = log
        self.proc = subprocess.Popen(args, stdout=log.open("ab"), stderr=subprocess.STDOUT, env=env, cwd=log.parent)

    def stop(self) -> None:
        stop_services([self.proc], grace=15)


@pytest.fixture
def helpers() -> Iterator[list[Process]]:
    running: list[Process] = []
    yield running
    for proc in reversed(running):
        proc.stop()


def derived_prometheus_config(tmp: Path, targets: dict[str, str]) -> Path:
    """monitoring/prometheus.yml with local targets, short intervals, and the rules every second."""
    config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    # 2 s scrapes: on a loaded 2-core CI machine an exporter can need more than a second.
    config["global"].update(scrape_interval="2s", scrape_timeout="2s", evaluation_interval="1s")
    rule_paths = []
    for name in config["rule_files"]:
        rule_file = yaml.safe_load((MONITORING / name).read_text())
        for group in rule_file["groups"]:
            group["interval"] = "1s"
        out = tmp / Path(name).name
        out.write_text(yaml.safe_dump(rule_file, sort_keys=False))
        rule_paths.append(str(out))
    config["rule_files"] = rule_paths
    assert {job["job_name"] for job in config["scrape_configs"]} == set(targets)
    for job in config["scrape_configs"]:
        for key in [k for k in job if k.endswith("_sd_configs") or k == "static_configs"]:
            del job[key]
        job["static_configs"] = [{"targets": [targets[job["job_name"]]]}]
    path = tmp / "prometheus.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


class Prom:
    """The Prometheus HTTP API."""

    def __init__(self, url: str) -> None:
        self.url = url

    def query(self, expr: str) -> list[dict[str, Any]]:
        body = httpx.post(self.url + "/api/v1/query", data={"query": expr}, timeout=10).json()
        assert body["status"] == "success", f"{expr}: {body}"
        return body["data"]["result"]

    def ready(self) -> bool:
        """``/-/ready`` answers 503 ("Service Unavailable") until Prometheus has started."""
        try:
            return httpx.get(self.url + "/-/ready", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    def all_targets_up(self) -> bool:
        targets = httpx.get(self.url + "/api/v1/targets", timeout=10).json()["data"]["activeTargets"]
        return {t["labels"]["job"] for t in targets if t["health"] == "up"} == JOBS

    def wait_for_scrapes(self) -> None:
        """Until every target has been scraped successfully after this call began."""
        since = time.time()

        def scraped() -> bool:
            # timestamp() keeps sample times only for a plain selector: on "up == 1" it returns
            # the evaluation time, which made this wait return before any new scrape.
            result = self.query("min(timestamp(up))")
            return bool(result) and float(result[0]["value"][1]) > since and self.all_targets_up()
        eventually(scraped, timeout=20, interval=0.5)

    def has_data(self, expr: str) -> bool:
        """True when ``expr`` returns at least one series with a finite value."""
        return any(math.isfinite(float(s["value"][1])) for s in self.query(expr))


class Traffic:
    """Real requests through the gateway, the way API clients send them."""

    def __init__(self, gateway_url: str, callback_url: str) -> None:
        self.http = httpx.Client(base_url=gateway_url, timeout=30)
        self.callback_url = callback_url
        self.token = ""
        self.post_ids: list[str] = []

    def call(self, method: str, path: str, expect: int, **kwargs: Any) -> httpx.Response:
        headers = kwargs.pop("headers", {})
        if self.token:
            headers.setdefault("Authorization", f"Bearer {self.token}")
        response = self.http.request(method, path, headers=headers, **kwargs)
        assert response.status_code == expect, f"{method} {path}: {response.status_code} {response.text}"
        return response

    def account(self, username: str, password: str) -> None:
        self.call("POST", "/function/register", 201, json={"username": username, "password": password})
        login = self.call("POST", "/function/login", 200, json={"username": username, "password": password})
        self.token = login.json()["access_token"]

    def failed_logins_until_rate_limited(self, username: str) -> None:
        """Wrong passwords get 401 until the login limit (RATE_LIMIT_LOGIN) answers 429."""
        statuses = []
        for _ in range(5):
            response = self.http.post("/function/login", json={"username": username, "password": "wrong password!"})
            statuses.append(response.status_code)
            if response.status_code == 429:
                break
        assert statuses[-1] == 429 and set(statuses[:-1]) <= {401}, statuses

    def round(self, n: int, call_id: str) -> None:
        """Posts, reads, sentiment (sync, async with a callback), and client errors."""
        for i, text in enumerate([f"I love this wonderful sunny day number {n}!",
                                  f"This is awful, terrible and sad, round {n}."]):
            created = self.call("POST", "/function/create-post", 201, json={"content": text},
                                headers={"X-Call-Id": f"{call_id}-{i}", "X-Callback-Url": self.callback_url})
            self.post_ids.append(created.json()["id"])
        self.call("GET", "/function/list-posts", 200, params={"limit": 10})
        for post_id in self.post_ids[-2:]:
            self.call("GET", f"/function/get-post/{post_id}", 200)
            self.call("GET", f"/function/get-post/{post_id}", 200)
        self.call("POST", "/function/analyze-sentiment", 200, json={"text": "What a great result"})
        self.call("POST", "/async-function/analyze-sentiment", 202, json={"text": f"Quite bad news {n}"},
                  headers={"X-Callback-Url": self.callback_url, "X-Call-Id": f"{call_id}-async"})
        self.call("GET", "/function/get-post/987654321", 404)
        self.call("POST", "/function/create-post", 422, json={"content": ""})


@pytest.mark.slow
def test_every_dashboard_and_recording_expression_has_data(
        stores: dict[str, str], start_gateway: Any, start_workers: Any, helpers: list[Process],
        tmp_path: Path) -> None:
    gw_metrics, wk_metrics, tsdb = (tmp_path / "gw-metrics", tmp_path / "wk-metrics", tmp_path / "tsdb")
    for folder in (gw_metrics, wk_metrics, tsdb):
        folder.mkdir()
    worker_port, redis_port, pg_port, prom_port = (embedded.free_port() for _ in range(4))
    env = base_env(stores)
    receiver = Receiver().__enter__()
    ollama = FakeOllama().start()  # the LLM backend (SENTIMENT_BACKEND=auto picks it when it answers)
    try:
        # The exporters first (they start at once), then the gateway, then workers and Prometheus.
        redis_addr = env["REDIS_URL"].rsplit("/", 1)[0]
        helpers.append(Process([binary("prometheus-redis-exporter"), f"--redis.addr={redis_addr}",
                                f"--web.listen-address=127.0.0.1:{redis_port}"], tmp_path / "redis-exporter.log"))
        dsn = env["DATABASE_URL"] + ("&" if "?" in env["DATABASE_URL"] else "?") + "sslmode=disable"
        helpers.append(Process([binary("prometheus-postgres-exporter"),
                                f"--web.listen-address=127.0.0.1:{pg_port}"], tmp_path / "postgres-exporter.log",
                               env={"DATA_SOURCE_NAME": dsn, "PATH": "/usr/bin:/bin"}))
        llm = {"SENTIMENT_BACKEND": "auto", "OLLAMA_HOST": ollama.url}
        gateway = start_gateway(STACK_FILE=str(REPO_ROOT / "stack.yml"), PROMETHEUS_MULTIPROC_DIR=str(gw_metrics),
                                RATE_LIMIT_ENABLED="true", RATE_LIMIT_LOGIN="2", **llm)
        start_workers(WORKER_COUNT="2", WORKER_METRICS_PORT=str(worker_port), WORKER_METRICS_BIND="127.0.0.1",
                      PROMETHEUS_MULTIPROC_DIR=str(wk_metrics), GATEWAY_URL=gateway.url, **llm)
        config = derived_prometheus_config(tmp_path, {
            "prometheus": f"127.0.0.1:{prom_port}", "gateway": gateway.url.removeprefix("http://"),
            "worker": f"127.0.0.1:{worker_port}", "redis": f"127.0.0.1:{redis_port}",
            "postgres": f"127.0.0.1:{pg_port}"})
        helpers.append(Process([binary("prometheus"), f"--config.file={config}", f"--storage.tsdb.path={tsdb}",
                                f"--web.listen-address=127.0.0.1:{prom_port}"], tmp_path / "prometheus.log"))
        prom = Prom(f"http://127.0.0.1:{prom_port}")
        wait_http(prom.url + "/-/ready", proc=helpers[-1].proc)
        eventually(prom.ready, timeout=30, interval=0.2)  # answering is not ready: 503 at first
        eventually(prom.all_targets_up, timeout=20, interval=0.5)

        # Two rounds of traffic with scrapes in between, so every counter moves between samples.
        traffic = Traffic(gateway.url, receiver.url)
        call_id = f"mon-{uuid.uuid4()}"
        traffic.account("mon_alice", "correct horse battery staple")
        traffic.failed_logins_until_rate_limited("mon_alice")

        def settled() -> bool:
            """Every post labelled and every callback (posts + async analyses) delivered."""
            states = [traffic.call("GET", f"/function/get-post/{i}", 200).json()["sentiment"]["status"]
                      for i in traffic.post_ids]
            return all(s == "done" for s in states) and len(receiver.received) >= len(traffic.post_ids) * 3 // 2

        for n in (1, 2):
            traffic.round(n, call_id)
            eventually(settled, timeout=20, interval=0.2)
            prom.wait_for_scrapes()
            # Prometheus holds a sample of the round's background work before the next round.
            eventually(lambda: all(prom.query(series) for series in BACKGROUND_SERIES), timeout=15, interval=0.5)

        # Every recording rule and every dashboard query returns data.
        expressions = [(f"rule {r['record']}", r["expr"]) for r in rules("record")]
        expressions += [(f"recorded {name}", name) for name in sorted({r["record"] for r in rules("record")})]
        expressions += [(f"{board}: {title}", expr) for board, title, expr in dashboard_targets()]
        missing: list[str] = []

        def all_have_data() -> bool:
            missing[:] = [f"{where}: {expr}" for where, expr in expressions if not prom.has_data(expr)]
            return not missing
        try:
            eventually(all_have_data, timeout=20, interval=1.0)
        except AssertionError:
            raise AssertionError("queries without data:\n" + "\n".join(missing)) from None

        # Every rule (alerts included) evaluates without error against the real series.
        groups = httpx.get(prom.url + "/api/v1/rules").json()["data"]["groups"]
        bad = [(r["name"], r.get("lastError")) for g in groups for r in g["rules"] if r["health"] != "ok"]
        assert not bad, bad
        assert sum(len(g["rules"]) for g in groups) == len(rules("record")) + len(rules("alert"))

        # One call id finds the request's log lines, from the gateway and from the worker.
        auth = gateway.auth()

        def loggers(cid: str) -> set[str]:
            response = httpx.get(gateway.url + "/system/logs", params={"call_id": cid}, auth=auth)
            assert response.status_code == 200
            records = [json.loads(json.loads(line)["text"]) for line in response.text.splitlines()]
            assert all(r["call_id"] == cid for r in records)
            return {r["logger"] for r in records}

        # async: the gateway's function request and the queue-worker's invocation (worker process)
        eventually(lambda: {"minitwitter.request", "minitwitter.queue_worker"} <= loggers(f"{call_id}-async"))
        # create-post: the function's request line and the sentiment job's lines (worker process)
        eventually(lambda: "minitwitter.request" in loggers(f"{call_id}-0")
                   and len(loggers(f"{call_id}-0") - {"minitwitter.request", "minitwitter.gateway"}) > 0)
    finally:
        receiver.__exit__(None, None, None)
        ollama.stop()
