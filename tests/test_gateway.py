"""The local gateway over real HTTP (granian, 2 worker processes), PostgreSQL, Redis and RQ.

Uses the fixture functions of tests/fixtures/stack.yml. Each request/response shape follows the
OpenFaaS contract (shared/docs/openfaas-contract.md) as faas-cli and clients see it.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
import uuid

import httpx
import pytest

from gateway.registry import Registry
from minitwitter import db
from minitwitter.config import REPO_ROOT, load_config, set_config

from .callback_receiver import Receiver
from .conftest import Gateway, base_env, child_pids, eventually, process_running

pytestmark = pytest.mark.slow

FIXTURE_STACK = str(REPO_ROOT / "tests" / "fixtures" / "stack.yml")
ECHO_DIR = str(REPO_ROOT / "tests" / "fixtures" / "functions" / "echo")


GATEWAY_ENV = {"STACK_FILE": FIXTURE_STACK, "GATEWAY_WORKERS": "2", "FUNCTION_TIMEOUT": "1.5",
               "GATEWAY_STATE_TTL": "0.2", "GATEWAY_ACCESS_LOG": "true"}


@pytest.fixture(scope="module")
def gw(stores, tmp_path_factory):
    """One gateway (2 processes) for the module; tests that change deployments restore them."""
    set_config(load_config(base_env(stores)))
    db.run("DELETE FROM gateway_functions")
    gateway = Gateway(base_env(stores, **GATEWAY_ENV), tmp_path_factory.mktemp("gw") / "gateway.log")
    gateway.start()
    yield gateway
    gateway.stop()


@pytest.fixture
def restore_stack(gw, config):
    """Put the fixture stack back as deployed (1 replica, nothing extra) after the test."""
    yield
    db.run("DELETE FROM gateway_functions WHERE name NOT IN ('echo', 'sleepy', 'helper-a', 'helper-b', 'crash')")
    Registry(config.with_overrides(stack_file=FIXTURE_STACK)).seed(redeploy=True)
    db.run("UPDATE gateway_functions SET replicas = 1")
    time.sleep(0.5)  # longer than GATEWAY_STATE_TTL: every gateway process sees the restored state


def deployment(name: str, **extra):
    body = {"service": name, "image": f"test/{name}:latest", "envVars": {}, "labels": {},
            "annotations": {}}
    body.update(extra)
    return body


# --- sync invoke -----------------------------------------------------------------------------

def test_invoke_strips_prefix_keeps_query_and_adds_openfaas_headers(gw):
    r = httpx.post(f"{gw.url}/function/echo/a/b?x=1&x=2&y=", content=b"hello")
    assert r.status_code == 200
    seen = r.json()
    assert seen["path"] == "/a/b"
    assert seen["args"] == {"x": ["1", "2"], "y": [""]}
    assert seen["body"] == "hello" and seen["method"] == "POST"
    assert re.fullmatch(r"[0-9a-f-]{36}", r.headers["X-Call-Id"])
    assert seen["call_id"] == r.headers["X-Call-Id"]
    assert seen["start_time"] == r.headers["X-Start-Time"] and int(r.headers["X-Start-Time"]) > 0
    assert float(r.headers["X-Duration-Seconds"]) >= 0
    assert r.headers["X-Echo"] == "yes"  # function headers relayed
    assert "X-Served-By" not in r.headers  # GATEWAY_IDENTITY_HEADERS opts in (tests/test_security.py)


def test_invoke_with_namespace_as_faas_cli_calls_it(gw):
    r = httpx.put(f"{gw.url}/function/echo.openfaas-fn", content=b"x",
                  headers={"User-Agent": "faas-cli/0.18.12 (openfaas; linux; amd64)"})
    assert r.status_code == 200
    assert r.json()["path"] == "/" and r.json()["method"] == "PUT"


def test_client_call_id_passes_through_and_status_is_relayed(gw):
    r = httpx.get(f"{gw.url}/function/echo/?status=418", headers={"X-Call-Id": "my-call-1"})
    assert r.status_code == 418
    assert r.json()["call_id"] == "my-call-1"


@pytest.mark.parametrize("path", ["/function/nope", "/function/nope.openfaas-fn/x",
                                  "/function/echo.other-namespace"])
def test_unknown_function_or_namespace_is_404(gw, path):
    r = httpx.get(gw.url + path)
    assert r.status_code == 404
    assert r.json()["error"].startswith("error finding function")
    assert "X-Call-Id" in r.headers


def test_slow_function_times_out_with_504(gw):
    r = httpx.get(f"{gw.url}/function/sleepy?seconds=3", timeout=10)
    assert r.status_code == 504
    assert r.json()["error"] == "function timed out"


def test_crashing_function_gets_json_500_without_internals(gw):
    r = httpx.get(f"{gw.url}/function/crash")
    assert r.status_code == 500
    assert r.json() == {"error": "internal error", "details": {}}
    assert "secret internal detail" not in r.text and "Traceback" not in r.text


def test_same_named_helper_modules_stay_apart(gw):
    for _ in range(4):  # several requests so both gateway processes answer
        assert httpx.get(f"{gw.url}/function/helper-a").json() == {"who": "helper-a"}
        assert httpx.get(f"{gw.url}/function/helper-b").json() == {"who": "helper-b"}


def test_unknown_route_is_404_json(gw):
    r = httpx.get(f"{gw.url}/nothing-here")
    assert r.status_code == 404 and "error" in r.json()


# --- health and metrics ----------------------------------------------------------------------

def test_healthz_reports_stores(gw):
    r = httpx.get(f"{gw.url}/healthz")
    assert r.status_code == 200
    assert r.json() == {"status": "ok", "checks": {"postgres": "ok", "redis": "ok"}}


def _metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text format (0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith(f"{name}{{{want}}} "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_metrics_use_openfaas_names_and_add_up_across_processes(gw):
    fn = {"function_name": "echo.openfaas-fn"}
    time.sleep(0.3)  # earlier tests' last counts reach the samples (each process every 0.1 s)
    before = httpx.get(f"{gw.url}/metrics").text
    n = 12
    for i in range(n):  # a new connection each time, so both server processes take requests
        httpx.get(f"{gw.url}/function/echo?i={i}")
    httpx.get(f"{gw.url}/function/echo?status=500")
    expected = {("gateway_function_invocation_total", "200"): n,
                ("gateway_function_invocation_total", "500"): 1,
                ("gateway_function_invocation_started_total", None): n + 1,
                ("gateway_functions_seconds_count", "200"): n}

    def deltas(after: str) -> dict[tuple[str, str | None], float]:
        return {(name, code): _metric(after, name, **fn, **({"code": code} if code else {}))
                - _metric(before, name, **fn, **({"code": code} if code else {}))
                for name, code in expected}

    # Each process applies its counts within metrics.FLUSH_INTERVAL (the scraped one at once).
    def scrape_once_complete() -> str | None:
        text = httpx.get(f"{gw.url}/metrics").text
        return text if deltas(text) == expected else None

    after = eventually(scrape_once_complete, timeout=5)
    assert deltas(after) == expected
    assert _metric(after, "gateway_service_count", **fn) == 1.0


# --- async invoke ----------------------------------------------------------------------------

def test_async_invocation_delivers_callback_with_openfaas_headers(gw, start_workers):
    start_workers(GATEWAY_URL=gw.url, WORKER_COUNT="1")
    with Receiver() as receiver:
        r = httpx.post(f"{gw.url}/async-function/echo/sub?q=1", content=b"payload",
                       headers={"X-Callback-Url": receiver.url + "/done"})
        assert r.status_code == 202 and r.content == b""
        call_id = r.headers["X-Call-Id"]
        eventually(lambda: receiver.received, timeout=20)
    got = receiver.received[0]
    body = json.loads(got["body"])
    assert got["path"] == "/done"
    assert body["method"] == "POST" and body["path"] == "/sub" and body["query"] == "q=1"
    assert body["body"] == "payload" and body["call_id"] == call_id
    assert body["user_agent"] == "openfaas-ce/nats-queue-worker"
    assert body["callback_url"] == receiver.url + "/done"
    headers = {k.lower(): v for k, v in got["headers"].items()}
    assert headers["x-call-id"] == call_id
    assert headers["x-function-name"] == "echo"
    assert headers["x-function-status"] == "200"
    assert float(headers["x-duration-seconds"]) >= 0


def test_async_callback_is_retried_after_receiver_errors(gw, start_workers):
    start_workers(GATEWAY_URL=gw.url, WORKER_COUNT="1")
    with Receiver(fail_first=2) as receiver:
        r = httpx.post(f"{gw.url}/async-function/echo", content=b"x",
                       headers={"X-Callback-Url": receiver.url})
        assert r.status_code == 202
        eventually(lambda: receiver.received, timeout=30)
        assert receiver.attempts == 3


def test_async_function_status_reaches_the_callback(gw, start_workers):
    start_workers(GATEWAY_URL=gw.url, WORKER_COUNT="1")
    with Receiver() as receiver:
        httpx.post(f"{gw.url}/async-function/echo?status=404", content=b"x",
                   headers={"X-Callback-Url": receiver.url})
        eventually(lambda: receiver.received, timeout=20)
    headers = {k.lower(): v for k, v in receiver.received[0]["headers"].items()}
    assert headers["x-function-status"] == "404"


@pytest.mark.parametrize("url", ["not a url", "ftp://x.example/", "http://"])
def test_async_rejects_unparsable_callback_url(gw, url):
    r = httpx.post(f"{gw.url}/async-function/echo", content=b"x", headers={"X-Callback-Url": url})
    assert r.status_code == 400


def test_async_only_accepts_post_and_known_functions(gw):
    assert httpx.get(f"{gw.url}/async-function/echo").status_code == 405
    assert httpx.post(f"{gw.url}/async-function/nope").status_code == 404


# --- system API ------------------------------------------------------------------------------

def test_system_routes_need_basic_auth(gw):
    for method, path in [("GET", "/system/functions"), ("GET", "/system/info"),
                         ("GET", "/system/function/echo"), ("PUT", "/system/functions"),
                         ("GET", "/system/logs")]:
        r = httpx.request(method, gw.url + path)
        assert r.status_code == 401, path
        assert r.headers["WWW-Authenticate"] == 'Basic realm="Restricted"'
        assert r.text == "invalid credentials"
    assert httpx.get(f"{gw.url}/system/functions", auth=("admin", "wrong")).status_code == 401


def test_list_and_describe_functions_in_openfaas_shape(gw):
    auth = gw.auth()
    httpx.get(f"{gw.url}/function/echo")
    # invocationCount comes from the metrics, which every process applies within 100 ms.
    def list_once_counted() -> list[dict] | None:
        found = httpx.get(f"{gw.url}/system/functions", auth=auth).json()
        return found if next(f for f in found if f["name"] == "echo").get("invocationCount", 0) >= 1 else None

    listed = eventually(list_once_counted, timeout=5)
    names = sorted(f["name"] for f in listed)
    assert names == ["crash", "echo", "helper-a", "helper-b", "sleepy"]
    echo = next(f for f in listed if f["name"] == "echo")
    assert echo["image"] == "test/echo:latest" and echo["namespace"] == "openfaas-fn"
    assert echo["replicas"] == 1 and echo["availableReplicas"] == 1
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", echo["createdAt"])
    assert echo["invocationCount"] >= 1
    one = httpx.get(f"{gw.url}/system/function/echo", auth=auth).json()
    assert one["name"] == "echo" and "invocationCount" not in one
    assert httpx.get(f"{gw.url}/system/function/nope", auth=auth).status_code == 404
    assert httpx.get(f"{gw.url}/system/functions?namespace=other", auth=auth).json() == []
    info = httpx.get(f"{gw.url}/system/info", auth=auth).json()
    assert set(info) == {"provider", "version", "arch"}
    assert info["provider"]["version"]["release"]


def test_deploy_update_remove_cycle_like_faas_cli(gw, restore_stack):
    auth = gw.auth()
    # faas-cli deploy: PUT first; 404 for a new function, then POST
    new = deployment("echo-two", annotations={"com.minitwitter.handler": ECHO_DIR},
                     envVars={"MAX_BODY_BYTES": "1234"})
    assert httpx.put(f"{gw.url}/system/functions", json=new, auth=auth).status_code == 404
    assert httpx.post(f"{gw.url}/system/functions", json=new, auth=auth).status_code == 202

    def served_everywhere(max_body_bytes: int) -> bool:
        # Another process sees a deploy within the state TTL: until then it may answer 404.
        replies = [httpx.get(f"{gw.url}/function/echo-two") for _ in range(4)]
        return all(r.status_code == 200 and r.json()["max_body_bytes"] == max_body_bytes
                   for r in replies)

    eventually(lambda: served_everywhere(1234))  # envVars applied to the function
    # update envVars with PUT; every process reloads within the state TTL
    new["envVars"] = {"MAX_BODY_BYTES": "999"}
    assert httpx.put(f"{gw.url}/system/functions", json=new, auth=auth).status_code == 202
    eventually(lambda: served_everywhere(999))
    status = httpx.get(f"{gw.url}/system/function/echo-two", auth=auth).json()
    assert status["envVars"] == {"MAX_BODY_BYTES": "999"}
    # faas-cli remove
    gone = httpx.request("DELETE", f"{gw.url}/system/functions", json={"functionName": "echo-two"}, auth=auth)
    assert gone.status_code == 202
    eventually(lambda: all(httpx.get(f"{gw.url}/function/echo-two").status_code == 404 for _ in range(4)))
    again = httpx.request("DELETE", f"{gw.url}/system/functions", json={"functionName": "echo-two"}, auth=auth)
    assert again.status_code == 404
    # deploy it again
    assert httpx.post(f"{gw.url}/system/functions", json=new, auth=auth).status_code == 202
    eventually(lambda: httpx.get(f"{gw.url}/function/echo-two").status_code == 200)


def test_removing_a_stack_function_takes_it_out_until_redeployed(gw, restore_stack):
    auth = gw.auth()
    assert httpx.request("DELETE", f"{gw.url}/system/functions", json={"functionName": "echo"},
                         auth=auth).status_code == 202
    eventually(lambda: all(httpx.get(f"{gw.url}/function/echo").status_code == 404 for _ in range(4)))
    # PUT of a removed function is 404 (faas-cli then POSTs)
    assert httpx.put(f"{gw.url}/system/functions", json=deployment("echo"), auth=auth).status_code == 404
    assert httpx.post(f"{gw.url}/system/functions", json=deployment("echo"), auth=auth).status_code == 202
    eventually(lambda: httpx.get(f"{gw.url}/function/echo").status_code == 200)


@pytest.mark.parametrize("body, fragment", [
    ({"image": "x"}, "service: is required"),
    ({"service": "Bad_Name", "image": "x"}, "must be a valid DNS entry"),
    ({"service": "echo"}, "image: is required"),
    ({"service": "unknown-fn", "image": "x"}, "no handler found for function unknown-fn"),
    ({"service": "echo", "image": "x", "labels": {"com.openfaas.scale.max": "6"}}, "at most 5"),
    ({"service": "echo", "image": "x", "labels": {"com.openfaas.scale.zero": "true"}}, "Community Edition"),
    ({"service": "echo", "image": "x", "annotations": {"com.minitwitter.handler": "/nonexistent"}},
     "no handler found"),
])
def test_deploy_refuses_invalid_deployments_with_clear_400(gw, body, fragment):
    r = httpx.put(f"{gw.url}/system/functions", json=body, auth=gw.auth())
    assert r.status_code == 400
    assert fragment in r.json()["error"]


def test_malformed_deploy_body_is_400(gw):
    r = httpx.put(f"{gw.url}/system/functions", content=b"{nope", auth=gw.auth())
    assert r.status_code == 400


def test_community_edition_function_limit(gw, restore_stack):
    auth = gw.auth()
    codes = []
    for i in range(11):  # 5 fixture functions + 11 = 16
        dep = deployment(f"extra-{i}", annotations={"com.minitwitter.handler": ECHO_DIR})
        codes.append(httpx.post(f"{gw.url}/system/functions", json=dep, auth=auth).status_code)
    assert codes[:10] == [202] * 10
    assert codes[10] == 400


def test_scale_function_clamps_like_ce_gateway(gw, restore_stack):
    auth = gw.auth()
    r = httpx.post(f"{gw.url}/system/scale-function/echo",
                   json={"serviceName": "echo", "replicas": 10}, auth=auth)
    assert r.status_code == 202
    assert httpx.get(f"{gw.url}/system/function/echo", auth=auth).json()["replicas"] == 5
    assert 'gateway_service_count{function_name="echo.openfaas-fn"} 5.0' in httpx.get(f"{gw.url}/metrics").text
    assert httpx.post(f"{gw.url}/system/scale-function/echo", json={"replicas": 0},
                      auth=auth).status_code == 400
    assert httpx.post(f"{gw.url}/system/scale-function/nope", json={"replicas": 2},
                      auth=auth).status_code == 404


def test_system_logs_are_ndjson_in_openfaas_shape(gw):
    call_id = f"logs-{uuid.uuid4()}"
    httpx.get(f"{gw.url}/function/echo", headers={"X-Call-Id": call_id})

    def lines():
        r = httpx.get(f"{gw.url}/system/logs", params={"name": "echo", "tail": "50"}, auth=gw.auth())
        assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson")
        return [json.loads(x) for x in r.text.splitlines() if x]

    found = eventually(lambda: [ln for ln in lines() if call_id in ln["text"]])
    entry = found[0]
    assert set(entry) == {"name", "namespace", "instance", "timestamp", "text"}
    assert entry["name"] == "echo" and entry["namespace"] == "openfaas-fn"
    assert entry["timestamp"].endswith("Z")
    assert json.loads(entry["text"])["call_id"] == call_id
    bad = httpx.get(f"{gw.url}/system/logs", params={"since": "yesterday"}, auth=gw.auth())
    assert bad.status_code == 400


# Last in the module: it starts its own gateway, which resets the shared function state.
def test_async_callback_to_forbidden_address_is_refused(start_gateway, start_workers):
    gw = start_gateway(STACK_FILE=FIXTURE_STACK, CALLBACK_ALLOW_HOSTS="", GATEWAY_ACCESS_LOG="true")
    with Receiver() as receiver:
        # Refused at submission (tests/test_security.py has every reason)...
        r = httpx.post(f"{gw.url}/async-function/echo", content=b"x",
                       headers={"X-Callback-Url": receiver.url})
        assert r.status_code == 400
        assert r.json()["details"] == {"X-Callback-Url": ["address 127.0.0.1 is not allowed"]}
    # ... and again at delivery: the worker checks the address when it connects (here the
    # gateway allows loopback and the worker does not).
    gw = start_gateway(STACK_FILE=FIXTURE_STACK, CALLBACK_ALLOW_HOSTS="127.0.0.1", GATEWAY_ACCESS_LOG="true")
    start_workers(GATEWAY_URL=gw.url, WORKER_COUNT="1", CALLBACK_ALLOW_HOSTS="")
    with Receiver() as receiver:
        r = httpx.post(f"{gw.url}/async-function/echo", content=b"x",
                       headers={"X-Callback-Url": receiver.url})
        assert r.status_code == 202
        call_id = r.headers["X-Call-Id"]
        user, password = gw.auth()

        def refused_logged():
            lines = httpx.get(f"{gw.url}/system/logs", params={"call_id": call_id},
                              auth=(user, password)).text.splitlines()
            return [ln for ln in lines if "callback refused" in ln]

        eventually(refused_logged, timeout=20)
        assert receiver.attempts == 0


def listening_pids(port: int) -> set[int]:
    """Pids with a listening TCP socket on ``port`` (from ``ss``)."""
    out = subprocess.run(["ss", "-Hltnp", f"sport = :{port}"], capture_output=True, text=True,
                         check=True).stdout
    return {int(pid) for pid in re.findall(r"pid=(\d+)", out)}


def test_server_workers_keep_what_they_loaded_out_of_the_garbage_collector(start_gateway):
    """A server worker ends its loading with ``gc.freeze``: the loaded modules and functions,
    ~10⁵ objects that live until exit, are no longer walked by every full collection (30-70 ms
    under load, which were the reads' p99 outliers). A gateway of its own: the module's gateway
    has been redeployed by the tests before, and a redeploy unfreezes for 5 s on purpose."""
    gateway = start_gateway(**GATEWAY_ENV)
    frozen: dict[int, int] = {}

    def both_answered() -> bool:  # a new connection each time, so both server processes answer
        seen = httpx.get(f"{gateway.url}/function/echo").json()
        frozen[seen["pid"]] = seen["gc_frozen"]
        return len(frozen) == 2

    eventually(both_answered)
    assert all(count > 10_000 for count in frozen.values()), frozen


def test_a_killed_server_worker_is_respawned_and_requests_keep_flowing(start_gateway, stores):
    """granian restarts a worker process that died (``respawn_failed_workers``); the other one
    keeps serving meanwhile, and the new one loads the functions and serves as before."""
    gateway = start_gateway(**GATEWAY_ENV)
    master = gateway.proc.pid
    before = eventually(lambda: len(child_pids(master)) == 2 and child_pids(master), timeout=30)
    # On Linux each granian worker binds its own SO_REUSEPORT socket once its app has loaded:
    # until both listen, killing the only listening one leaves nothing to connect to.
    eventually(lambda: listening_pids(gateway.port) == set(before), timeout=30)
    victim = before[0]
    os.kill(victim, signal.SIGKILL)
    for _ in range(20):  # served by the surviving worker while the other one restarts
        response = httpx.get(f"{gateway.url}/function/echo/x", timeout=10)
        assert response.status_code == 200
    after = eventually(lambda: len(child_pids(master)) == 2 and victim not in child_pids(master)
                       and child_pids(master), timeout=30)
    assert set(after) != set(before)
    eventually(lambda: listening_pids(gateway.port) == set(after), timeout=30)  # the new one serves
    eventually(lambda: all(httpx.get(f"{gateway.url}/function/echo/{i}", timeout=10).status_code == 200
                           for i in range(20)), timeout=30)
    assert gateway.proc.poll() is None


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_stopping_the_server_right_after_start_leaves_no_worker_behind(start_gateway, sig):
    """SIGTERM as soon as the gateway answers (one worker may still be loading its functions:
    the stop must not be lost) and SIGKILL of the server process (its workers must not serve on
    as orphans): either way every worker process is gone shortly after."""
    gateway = start_gateway(**GATEWAY_ENV)
    master = gateway.proc.pid
    forked = child_pids(master)
    assert forked
    os.kill(master, sig)
    gateway.proc.wait(15)
    eventually(lambda: not any(process_running(pid) for pid in forked), timeout=15)


def test_a_graceful_stop_keeps_the_log_lines_and_metrics_the_workers_buffered(start_gateway, tmp_path):
    """Log lines and metric updates wait in each worker's buffers (50-200 ms); a SIGTERM right
    after the requests must not lose them: granian's workers end with os._exit, so they are
    flushed by multiprocessing finalizers, not atexit."""
    prom = tmp_path / "graceful-prom"
    prom.mkdir()
    gateway = start_gateway(**{**GATEWAY_ENV, "PROMETHEUS_MULTIPROC_DIR": str(prom)})
    call_ids = [f"graceful-{uuid.uuid4()}" for _ in range(6)]
    for call_id in call_ids:  # a new connection each time: both workers take some
        assert httpx.get(f"{gateway.url}/function/echo", headers={"X-Call-Id": call_id}).status_code == 200
    gateway.proc.send_signal(signal.SIGTERM)
    assert gateway.proc.wait(30) == 0
    stored = {row[0] for row in db.run("SELECT DISTINCT call_id FROM logs WHERE call_id = ANY(:ids)",
                                       ids=call_ids)}
    assert stored == set(call_ids)
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(prom))
    count = registry.get_sample_value("gateway_function_invocation_total",
                                      {"function_name": "echo.openfaas-fn", "code": "200"})
    assert count == len(call_ids)
