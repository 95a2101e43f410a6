"""The shared library core: config, db, migrations, HTTP boundary, network guard."""

from __future__ import annotations

import ipaddress
import multiprocessing
import os
import uuid
from datetime import UTC, datetime
from pathlib import Path

import flask
import pg8000.native
import pytest
import redis

from minitwitter import cache, db, errors, migrate, netguard
from minitwitter.config import SECRET_NAMES, ensure_dev_secrets, load_config, set_config
from minitwitter.http import client_ip, endpoint, new_call_id, parse_json, respond

# --- config ----------------------------------------------------------------------------------

@pytest.mark.no_stores
def test_config_reads_env_for_settings_and_files_for_secrets(tmp_path: Path):
    (tmp_path / "jwt-secret").write_text("s3cret\n")
    (tmp_path / "basic-auth-password").write_text("  pw  ")
    cfg = load_config({"GATEWAY_PORT": "9999", "JWT_SECRET": "from-env-is-ignored",
                       "RATE_LIMIT_ENABLED": "no", "CALLBACK_ALLOW_HOSTS": "a.example, 10.0.0.0/8"},
                      secrets_dir=tmp_path)
    assert cfg.gateway_port == 9999 and cfg.gateway_url == "http://127.0.0.1:9999"
    assert cfg.jwt_secret == "s3cret" and cfg.basic_auth_password == "pw"
    assert cfg.basic_auth_user == "admin"  # default when the file is absent
    assert cfg.rate_limit_enabled is False
    assert cfg.callback_allow_hosts == ("a.example", "10.0.0.0/8")
    assert "s3cret" not in repr(cfg)


@pytest.mark.no_stores
@pytest.mark.parametrize("env, fragment", [
    ({"GATEWAY_PORT": "eighty"}, "GATEWAY_PORT must be an integer"),
    ({"SENTIMENT_BACKEND": "gpt"}, "SENTIMENT_BACKEND"),
    ({"RATE_LIMIT_ENABLED": "maybe"}, "RATE_LIMIT_ENABLED"),
    ({"FUNCTION_TIMEOUT": "soon"}, "FUNCTION_TIMEOUT"),
])
def test_config_rejects_bad_values_clearly(tmp_path: Path, env, fragment):
    with pytest.raises(ValueError, match=fragment):
        load_config(env, secrets_dir=tmp_path)


@pytest.mark.no_stores
def test_dev_secrets_are_generated_once_and_private(tmp_path: Path):
    ensure_dev_secrets(tmp_path)
    first = {n: (tmp_path / n).read_text() for n in SECRET_NAMES}
    ensure_dev_secrets(tmp_path)
    assert first == {n: (tmp_path / n).read_text() for n in SECRET_NAMES}
    # the folder keeps other users out (files are 0644 so compose can bind-mount them)
    assert oct(tmp_path.stat().st_mode & 0o777) == "0o700"
    assert len(first["jwt-secret"].strip()) >= 32


# --- database --------------------------------------------------------------------------------

def test_db_binds_parameters_and_translates_constraint_errors():
    hostile = "x'); DROP TABLE users; --"
    assert db.scalar("SELECT :v::text", v=hostile) == hostile
    db.run("INSERT INTO users (username, password_hash) VALUES ('alice', 'h')")
    with pytest.raises(errors.Conflict) as taken:
        db.run("INSERT INTO users (username, password_hash) VALUES ('alice', 'h')")
    assert taken.value.details == {"constraint": ["users_username_lower_key"]}
    with pytest.raises(errors.NotFound):
        db.run("INSERT INTO posts (author_id, content) VALUES (999999, 'x')")
    with pytest.raises(errors.ValidationFailed):
        db.run("INSERT INTO users (username, password_hash) VALUES ('NO SPACES', 'h')")


def test_transaction_rolls_back_on_error_and_connection_survives():
    with pytest.raises(errors.Conflict):
        with db.transaction():
            db.run("INSERT INTO users (username, password_hash) VALUES ('bob', 'h')")
            db.run("INSERT INTO users (username, password_hash) VALUES ('bob', 'h')")
    assert db.scalar("SELECT count(*) FROM users") == 0
    assert db.scalar("SELECT 1") == 1


def test_broken_connection_is_rebuilt_on_next_statement():
    conn = db.connection()
    pid = db.scalar("SELECT pg_backend_pid()")
    admin = pg8000.native.Connection(**db.connect_params(load_config().database_url))
    admin.run("SELECT pg_terminate_backend(:p)", p=pid)
    admin.close()
    assert db.scalar("SELECT 42") == 42  # retried once on a fresh connection
    assert db.connection() is not conn


def test_unreachable_database_is_dependency_unavailable(config):
    set_config(config.with_overrides(database_url="postgresql://postgres@127.0.0.1:1/none",
                                     db_connect_timeout=1.0))
    db.close_connection()
    with pytest.raises(errors.DependencyUnavailable) as exc:
        db.run("SELECT 1")
    assert "127.0.0.1" not in exc.value.message


def _migrate_in_child(url: str, secrets: str, queue) -> None:  # noqa: ANN001
    set_config(load_config({"DATABASE_URL": url, "SECRETS_DIR": secrets}))
    try:
        queue.put(migrate.migrate())
    except Exception as exc:  # noqa: BLE001
        queue.put(repr(exc))


def test_migrations_racing_from_two_processes_apply_once(stores):
    name = f"{os.environ.get('MT_TEST_DB', 'minitwitter_test')}_race"
    admin = pg8000.native.Connection(**{**db.connect_params(stores["DATABASE_URL"]), "database": "postgres"})
    admin.run(f"DROP DATABASE IF EXISTS {pg8000.native.identifier(name)} WITH (FORCE)")
    admin.run(f"CREATE DATABASE {pg8000.native.identifier(name)}")
    url = stores["DATABASE_URL"].rsplit("/", 1)[0] + "/" + name
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    procs = [ctx.Process(target=_migrate_in_child, args=(url, stores["SECRETS_DIR"], results))
             for _ in range(2)]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=180) for _ in procs]
    for p in procs:
        p.join(30)
    all_versions = [v for _, _, _ in migrate.available() for v in [_]]
    assert all(isinstance(o, list) for o in outcomes), outcomes
    assert sorted(outcomes[0] + outcomes[1]) == sorted(v for v, _, _ in migrate.available())
    check = pg8000.native.Connection(**{**db.connect_params(url)})
    assert check.run("SELECT count(*) FROM schema_migrations")[0][0] == len(all_versions)
    check.close()
    admin.run(f"DROP DATABASE {pg8000.native.identifier(name)} WITH (FORCE)")
    admin.close()


def test_migrate_is_idempotent():
    assert migrate.migrate() == []


def test_the_schema_guards_relations_and_indexes_every_list_query(config):
    """What the API's checks rely on, enforced by PostgreSQL itself: nobody follows themself,
    a like or follow exists once, usernames are lower-case and unique, deleting an account
    cascades to everything it owns; and each list query has its index."""
    alice, bob = (db.scalar("INSERT INTO users (username, password_hash) VALUES (:u, 'x') RETURNING id", u=u)
                  for u in ("alice", "bob"))
    with pytest.raises(errors.ValidationFailed) as self_follow:
        db.run("INSERT INTO follows (follower_id, followee_id) VALUES (:a, :a)", a=alice)
    assert self_follow.value.details == {"constraint": ["follows_not_self"]}
    with pytest.raises(errors.ValidationFailed):  # stored lower-case, so unique whatever the case
        db.run("INSERT INTO users (username, password_hash) VALUES ('ALICE', 'x')")
    with pytest.raises(errors.Conflict):
        db.run("INSERT INTO users (username, password_hash) VALUES ('alice', 'x')")
    db.run("INSERT INTO follows (follower_id, followee_id) VALUES (:b, :a)", a=alice, b=bob)
    with pytest.raises(errors.Conflict):
        db.run("INSERT INTO follows (follower_id, followee_id) VALUES (:b, :a)", a=alice, b=bob)
    post = db.scalar("INSERT INTO posts (author_id, content) VALUES (:a, 'hi') RETURNING id", a=alice)
    db.run("INSERT INTO likes (post_id, user_id) VALUES (:p, :b)", p=post, b=bob)
    with pytest.raises(errors.Conflict):
        db.run("INSERT INTO likes (post_id, user_id) VALUES (:p, :b)", p=post, b=bob)
    db.run("INSERT INTO comments (post_id, author_id, content) VALUES (:p, :b, 'c')", p=post, b=bob)
    # and alice's own activity on bob's post, and her following him
    bobs = db.scalar("INSERT INTO posts (author_id, content) VALUES (:b, 'yo') RETURNING id", b=bob)
    db.run("INSERT INTO likes (post_id, user_id) VALUES (:p, :a)", p=bobs, a=alice)
    db.run("INSERT INTO comments (post_id, author_id, content) VALUES (:p, :a, 'c')", p=bobs, a=alice)
    db.run("INSERT INTO follows (follower_id, followee_id) VALUES (:a, :b)", a=alice, b=bob)
    db.run("DELETE FROM users WHERE id = :a", a=alice)
    assert [db.scalar(f"SELECT count(*) FROM {table}")  # noqa: S608 - fixed table names
            for table in ("posts", "likes", "comments", "follows")] == [1, 0, 0, 0]  # bob's post stays
    indexes = {row[0]: row[1] for row in db.run(
        "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = current_schema()")}
    expected = {
        "posts_pkey": "(id)",                                   # the public timeline, newest first
        "posts_author_idx": "(author_id, id DESC)",             # author= and the home timeline
        "posts_label_idx": "(sentiment_label, id DESC)",        # sentiment=
        "posts_search_idx": "USING gin (search)",               # q= (full text)
        "comments_post_idx": "(post_id, id)",                   # list-comments, oldest first
        "follows_pkey": "(follower_id, followee_id)",           # whom an account follows
        "follows_followee_idx": "(followee_id, follower_id)",   # followers (fan-out, counts)
        "likes_pkey": "(post_id, user_id)",
        "likes_user_idx": "(user_id, post_id)",                 # the viewer's likes on a page
        "users_username_lower_key": "(lower(username))",
    }
    for name, columns in expected.items():
        assert columns in indexes.get(name, ""), (name, indexes.get(name))
    assert indexes["users_username_lower_key"].startswith("CREATE UNIQUE INDEX")


FREEZE_SCRIPT = """
import gc, time, weakref
from minitwitter import runtime
runtime.thaw_replaced_code()
print(gc.get_freeze_count())              # 0: a process that never froze stays unfrozen
class Node: pass
node = Node(); node.me = node             # a cycle, as a module and its functions are
ref = weakref.ref(node)
runtime.freeze_loaded_objects()
del node
gc.collect()
print(ref() is not None)                  # frozen: a full collection leaves it alone
runtime.REFREEZE_DELAY = 0.3
runtime.thaw_replaced_code()
runtime.refreeze_when_due()
print(gc.get_freeze_count() == 0)         # not due yet
time.sleep(0.4)
runtime.refreeze_when_due()
print(ref() is None, gc.get_freeze_count() > 1000)
"""


@pytest.mark.no_stores
def test_frozen_cycles_stay_until_a_thaw_and_the_refreeze_after_it():
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "shared")}
    done = subprocess.run([sys.executable, "-c", FREEZE_SCRIPT], env=env, capture_output=True,
                          text=True, timeout=60, check=True)
    assert done.stdout.split() == ["0", "True", "True", "True", "True"]


def test_a_redeployed_function_is_reclaimed_by_the_refreeze(config, monkeypatch):
    """A redeploy replaces a function loaded (and frozen) at start-up: the registry thaws, and
    the refreeze on a request after REFREEZE_DELAY collects the old code, a reference cycle."""
    import gc
    import weakref

    from gateway.registry import Registry
    from minitwitter import runtime

    monkeypatch.setattr(runtime, "REFREEZE_DELAY", 0.0)
    cfg = config.with_overrides(gateway_state_ttl=0.0,
                                stack_file=str(Path(__file__).parent / "fixtures" / "stack.yml"))
    db.run("DELETE FROM gateway_functions")
    registry = Registry(cfg)
    registry.seed()
    old = registry.get("echo")
    assert old is not None
    old_app = weakref.ref(old.app.app)
    del old
    runtime.freeze_loaded_objects()
    try:
        registry.seed(redeploy=True)  # a new generation of every function
        gc.collect()
        assert old_app() is not None  # still loaded, and frozen
        assert registry.get("echo") is not None  # the new code; the old one is thawed ...
        assert gc.get_freeze_count() > 0  # ... and frozen again, less the old code
        assert old_app() is None
    finally:
        gc.unfreeze()
        db.run("DELETE FROM gateway_functions")


# --- HTTP boundary ---------------------------------------------------------------------------

@endpoint("probe", ["POST"])
def _probe(request: flask.Request) -> flask.Response:
    body = parse_json(request)
    if body.get("boom"):
        raise RuntimeError("SELECT secret FROM internals")
    return respond(200, {"ok": True, "ip": client_ip(request)})


def _call(method="POST", data=b"{}", headers=None, remote="127.0.0.1"):
    app = flask.Flask("probe")
    with app.test_request_context("/", method=method, data=data, headers=headers or {},
                                  content_type="application/json",
                                  environ_base={"REMOTE_ADDR": remote}):
        return _probe(flask.request)


@pytest.mark.parametrize("data, status", [
    (b"{not json", 400), (b"[1, 2]", 400), (b"", 400), (b'"text"', 400), (b"{}", 200),
])
def test_parse_json_errors_are_400_with_json_body(data, status):
    r = _call(data=data)
    assert r.status_code == status
    if status == 400:
        assert set(r.get_json()) == {"error", "details"}


def test_oversized_body_is_413(config):
    set_config(config.with_overrides(max_body_bytes=10))
    r = _call(data=b'{"a": "0123456789"}')
    assert r.status_code == 413 and r.get_json()["details"] == {"max_bytes": 10}


def test_wrong_method_is_405_with_allow_header():
    r = _call(method="GET")
    assert r.status_code == 405 and r.headers["Allow"] == "POST"


def test_unexpected_exception_is_a_generic_500():
    r = _call(data=b'{"boom": true}')
    assert r.status_code == 500
    assert r.get_json() == {"error": "internal error", "details": {}}


@pytest.mark.parametrize("remote, xff, expected", [
    ("203.0.113.9", "1.2.3.4", "203.0.113.9"),          # untrusted peer: header ignored
    ("127.0.0.1", "198.51.100.7", "198.51.100.7"),      # trusted proxy: header believed
    ("127.0.0.1", "6.6.6.6, 198.51.100.7", "198.51.100.7"),  # client-forged left part ignored
    ("127.0.0.1", "", "127.0.0.1"),
])
def test_client_ip_trusts_forwarded_for_only_from_trusted_proxies(remote, xff, expected):
    headers = {"X-Forwarded-For": xff} if xff else {}
    assert _call(headers=headers, remote=remote).get_json()["ip"] == expected


# --- network guard ---------------------------------------------------------------------------

@pytest.mark.no_stores
@pytest.mark.parametrize("url", [
    "http://127.0.0.1/cb", "http://localhost:8080/", "http://10.1.2.3/", "http://192.168.0.1/",
    "http://169.254.169.254/latest/meta-data/", "http://[::1]/", "http://0.0.0.0/",
    "ftp://example.com/", "http://user:pw@example.com/", "not a url",
])
def test_callback_guard_refuses_private_and_malformed_urls(url):
    with pytest.raises(netguard.CallbackRefused):
        netguard.resolve(url, ())


@pytest.mark.no_stores
def test_callback_guard_allow_list_by_host_and_cidr():
    assert netguard.resolve("http://127.0.0.1:9/x", ("127.0.0.1",)).address == "127.0.0.1"
    assert netguard.resolve("http://127.0.0.1:9/x", ("127.0.0.0/8",)).port == 9
    assert netguard.is_public(ipaddress.ip_address("93.184.216.34"))
    assert not netguard.is_public(ipaddress.ip_address("::ffff:127.0.0.1"))


def test_gateway_without_function_timeout_runs_functions_inline(config):
    """FUNCTION_TIMEOUT=0 disables the timeout: the function runs on the request's own thread."""
    import threading

    from werkzeug.test import Client

    from gateway.app import Gateway
    from gateway.registry import Registry

    cfg = config.with_overrides(function_timeout=0.0,
                                stack_file=str(Path(__file__).parent / "fixtures" / "stack.yml"))
    db.run("DELETE FROM gateway_functions")
    gateway = Gateway(cfg, Registry(cfg))
    gateway.registry.seed()
    seen: list[str] = []
    original = gateway._call_app

    def spy(hosted, environ):  # noqa: ANN001, ANN202
        seen.append(threading.current_thread().name)
        return original(hosted, environ)

    gateway._call_app = spy  # type: ignore[method-assign]
    response = Client(gateway).get("/function/echo/x?a=1")
    assert response.status_code == 200 and response.json["path"] == "/x"
    assert seen == [threading.current_thread().name]
    db.run("DELETE FROM gateway_functions")


def test_deadlock_is_a_retryable_conflict_not_a_500():
    from pg8000.exceptions import DatabaseError

    err = db.translate(DatabaseError({"C": "40P01", "M": "deadlock detected", "n": ""}))
    assert isinstance(err, errors.Conflict) and "retry" in err.message
    assert "deadlock" not in err.message  # no server text reaches clients


@pytest.mark.parametrize("text", [
    "2026-11-30 03:42:50.355123+00", "2026-11-30 03:42:50+00", "2026-11-30 03:42:50.1+05:30",
    "1999-12-31 23:59:59.999999-08", "infinity", "-infinity", "0044-03-15 12:00:00+00 BC",
])
def test_timestamptz_parser_agrees_with_pg8000(text: str) -> None:
    import pg8000.converters

    assert db.timestamptz_in(text) == pg8000.converters.timestamptz_in(text)


def test_timestamptz_columns_come_back_as_aware_datetimes(stores: dict[str, str]) -> None:
    [[now, stamp, infinite]] = db.run(
        "SELECT now(), '2026-01-02 03:04:05.678+02'::timestamptz, 'infinity'::timestamptz")
    assert now.tzinfo is not None
    assert stamp == datetime(2026, 1, 2, 1, 4, 5, 678000, tzinfo=UTC)
    assert infinite == "infinity"


@pytest.mark.no_stores
def test_commands_are_packed_as_redis_py_packs_them() -> None:
    commands: list[tuple[object, ...]] = [
        ("EVALSHA", "a" * 40, 2, "rl:ip:127.0.0.1", "rl:acct:5", 600, 1.5, b"\x00raw"),
        ("HMGET", "user:5", "d", "g"), ("SET", "k", "ünïcode"), ("ZADD", "feed", 10**18, "10"),
    ]
    assert cache._pack(commands) == [b"".join(redis.Connection().pack_commands(commands))]
    with pytest.raises(redis.DataError):
        cache._pack([("SET", "k", None)])


@pytest.mark.no_stores
def test_a_new_call_id_is_a_random_version_4_uuid_as_uuid4_writes_it():
    ids = [new_call_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    for value in ids:
        parsed = uuid.UUID(value)
        assert (parsed.version, parsed.variant) == (4, uuid.RFC_4122)
        assert str(parsed) == value  # lower-case hex in 8-4-4-4-12 groups
    # every bit that is not the version's or the variant's takes both values
    bits = [int(value.replace("-", ""), 16) for value in ids]
    fixed = (0xF << 76) | (0x3 << 62)
    assert all(b & fixed == (0x4 << 76) | (0x2 << 62) for b in bits)
    either = [any(b >> i & 1 for b in bits) and not all(b >> i & 1 for b in bits) for i in range(128)]
    assert [i for i in range(128) if not either[i]] == [62, 63, 76, 77, 78, 79]
