"""Configuration, built once per process by :func:`load_config` and passed around.

Settings come from environment variables; secrets come from files in ``SECRETS_DIR``
(``/var/openfaas/secrets`` as OpenFaaS mounts them). When that directory does not exist, the
development fallback is ``<repo>/.secrets`` (git-ignored, filled by ``make secrets`` or on the
first ``make run``). Secrets are never read from the environment. ``os.environ`` is read here and
nowhere else in the library.
"""

from __future__ import annotations

import contextvars
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit, urlunsplit

REPO_ROOT = Path(__file__).resolve().parents[2]
OPENFAAS_SECRETS_DIR = Path("/var/openfaas/secrets")
DEV_SECRETS_DIR = REPO_ROOT / ".secrets"

#: Secret files the service knows about (file name → purpose). ``make secrets`` generates them.
SECRET_NAMES: dict[str, str] = {
    "jwt-secret": "HMAC key signing access tokens",
    "callback-signing-key": "HMAC key signing sentiment callbacks",
    "basic-auth-user": "gateway /system/* basic-auth user (OpenFaaS name)",
    "basic-auth-password": "gateway /system/* basic-auth password (OpenFaaS name)",
    "postgres-password": "PostgreSQL password (compose/Kubernetes; see DATABASE_PASSWORD_SECRET)",
    "redis-password": "Redis password (compose/Kubernetes; see REDIS_PASSWORD_SECRET)",
    "grafana-admin-password": "Grafana admin password (compose)",
}


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise ValueError(f"{name} must be an integer, got {raw!r}") from exc


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        return float(raw)
    except ValueError as exc:
        raise ValueError(f"{name} must be a number, got {raw!r}") from exc


def _positive(env: Mapping[str, str], name: str, default: float) -> float:
    value = _float(env, name, default)
    if not value > 0:
        raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
    return value


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in {"1", "true", "yes", "on"}:
        return True
    if raw in {"0", "false", "no", "off"}:
        return False
    raise ValueError(f"{name} must be true or false, got {raw!r}")


def _list(env: Mapping[str, str], name: str, default: str = "") -> tuple[str, ...]:
    return tuple(p.strip() for p in env.get(name, default).split(",") if p.strip())


def read_secret(secrets_dir: Path, name: str) -> str | None:
    """Return the whitespace-trimmed content of secret file ``name``, or None if absent."""
    path = secrets_dir / name
    try:
        return path.read_text(encoding="utf-8").strip()
    except (FileNotFoundError, NotADirectoryError):
        return None


def with_password(url: str, secrets_dir: Path, secret_name: str) -> str:
    """``url`` with the content of secret file ``secret_name`` as its password.

    Only when ``secret_name`` is set and the URL carries no password of its own: compose and
    Kubernetes name the secret (``DATABASE_PASSWORD_SECRET=postgres-password``,
    ``REDIS_PASSWORD_SECRET=redis-password``) so the password never sits in an environment
    variable. Opt-in, because the development secrets folder holds these files too while the
    local PostgreSQL/Redis usually run without a password.
    """
    if not secret_name:
        return url
    parts = urlsplit(url)
    if parts.password:
        return url
    password = read_secret(secrets_dir, secret_name)
    if not password:
        raise ValueError(f"secret file {secrets_dir / secret_name} is missing or empty")
    userinfo = quote(unquote(parts.username or ""), safe="") + ":" + quote(password, safe="")
    return urlunsplit(parts._replace(netloc=f"{userinfo}@{parts.netloc.rpartition('@')[2]}"))


@dataclass(frozen=True)
class Config:
    """Every setting of the service. Build it with :func:`load_config`."""

    # stores
    # repr=False: a password from DATABASE_PASSWORD_SECRET / REDIS_PASSWORD_SECRET may be inside
    database_url: str = field(default="postgresql://postgres@127.0.0.1:5432/minitwitter", repr=False)
    redis_url: str = field(default="redis://127.0.0.1:6379/0", repr=False)
    db_connect_timeout: float = 5.0
    redis_timeout: float = 1.0
    # gateway
    gateway_port: int = 8080
    #: 3 processes on 2 cores: writes wait on PostgreSQL's commit with their thread held, and a
    #: third process keeps both cores busy meanwhile (docs/benchmarks.md, session 17).
    gateway_workers: int = 3
    gateway_threads: int = 2
    gateway_url: str = "http://127.0.0.1:8080"
    function_timeout: float = 60.0
    function_namespace: str = "openfaas-fn"
    stack_file: str = str(REPO_ROOT / "stack.yml")
    gateway_basic_auth: bool = True
    gateway_state_ttl: float = 1.0
    gateway_access_log: bool = False
    gateway_direct_calls: bool = True
    #: ``make run`` listens on loopback only; containers set ``0.0.0.0`` explicitly.
    gateway_bind: str = "127.0.0.1"
    #: Seconds a client has to send a request's headers, and then its whole body (408 after).
    gateway_read_timeout: float = 10.0
    #: Seconds a request may wait for a busy process's function slot before its 503.
    gateway_queue_timeout: float = 5.0
    #: Seconds in-flight requests get to finish when the gateway is told to stop.
    gateway_drain_timeout: float = 10.0
    #: Seconds an anonymous public read is answered from the gateway's micro-cache (0: off).
    gateway_microcache_ttl: float = 1.0
    #: Name the answering host (X-Gateway-Instance) and the exact gateway version (X-Served-By)
    #: on responses: off, so probes learn neither; on behind a load balancer to see it work.
    gateway_identity_headers: bool = False
    # requests
    max_body_bytes: int = 64 * 1024
    trusted_proxies: tuple[str, ...] = ("127.0.0.1/32", "::1/128")
    # auth
    jwt_ttl_seconds: int = 3600
    jwt_issuer: str = "minitwitter"
    # rate limits: requests per window (seconds)
    rate_limit_window: int = 60
    rate_limit_ip: int = 600
    rate_limit_account: int = 300
    rate_limit_login: int = 10
    rate_limit_register: int = 5
    rate_limit_enabled: bool = True
    #: Failed logins per username (and failed /system/* basic auths per client IP: the login
    #: budget) before further attempts wait for the window's end, which bounds the wait.
    login_failure_limit: int = 5
    login_failure_window: int = 900
    # queue and workers
    worker_count: int = 2
    async_queue: str = "faas-request"
    async_callback_attempts: int = 5
    worker_metrics_port: int = 0  # 0: no metrics endpoint on the worker
    worker_metrics_bind: str = "0.0.0.0"
    # sentiment
    sentiment_backend: str = "auto"
    sentiment_fallback: str = "none"
    ollama_host: str = "http://127.0.0.1:11434"
    ollama_model: str = "qwen2.5:1.5b"
    ollama_timeout: float = 30.0
    ollama_keep_alive: str = "30m"
    ollama_batch_size: int = 1
    ollama_parallel: int = 4
    vader_batch_size: int = 256
    sentiment_batch_wait: float = 0.05
    sentiment_max_attempts: int = 5
    sentiment_pending_grace: int = 60
    reconcile_interval: int = 30
    ollama_check_interval: float = 30.0
    sentiment_retry_base: float = 2.0
    sentiment_retry_max: float = 3600.0
    callback_retry_base: float = 1.0
    # callbacks
    callback_allow_hosts: tuple[str, ...] = ()
    callback_timeout: float = 5.0
    callback_max_attempts: int = 6
    callback_max_response_bytes: int = 64 * 1024
    # logs
    log_level: str = "INFO"
    log_to_db: bool = True
    log_buffer_size: int = 10000
    #: A fast successful read's request line is stored in PostgreSQL one in this many (1: all).
    log_store_reads_one_in: int = 10
    #: Milliseconds from which a request is slow: its line is always stored.
    log_slow_ms: float = 100.0
    log_retention_days: int = 30
    log_prune_interval: float = 3600.0
    logs_follow_max_seconds: float = 3600.0
    # secrets (from files)
    secrets_dir: Path = OPENFAAS_SECRETS_DIR
    jwt_secret: str = field(default="", repr=False)
    callback_signing_key: str = field(default="", repr=False)
    basic_auth_user: str = field(default="admin", repr=False)
    basic_auth_password: str = field(default="", repr=False)

    def with_overrides(self, **changes: object) -> Config:
        """Return a copy with some fields replaced (tests and per-function env use this)."""
        return replace(self, **changes)  # type: ignore[arg-type]


def resolve_secrets_dir(env: Mapping[str, str]) -> Path:
    """``SECRETS_DIR`` if set, else the OpenFaaS mount if it exists, else ``<repo>/.secrets``."""
    explicit = env.get("SECRETS_DIR", "").strip()
    if explicit:
        return Path(explicit)
    if OPENFAAS_SECRETS_DIR.is_dir():
        return OPENFAAS_SECRETS_DIR
    return DEV_SECRETS_DIR


def load_config(environ: Mapping[str, str] | None = None, secrets_dir: Path | None = None) -> Config:
    """Build the configuration from ``environ`` (default ``os.environ``) and secret files."""
    env = os.environ if environ is None else environ
    sdir = secrets_dir if secrets_dir is not None else resolve_secrets_dir(env)
    d = Config()
    backend = env.get("SENTIMENT_BACKEND", d.sentiment_backend).strip().lower()
    if backend not in {"auto", "ollama", "vader"}:
        raise ValueError(f"SENTIMENT_BACKEND must be auto, ollama or vader, got {backend!r}")
    fallback = env.get("SENTIMENT_FALLBACK", d.sentiment_fallback).strip().lower() or "none"
    if fallback not in {"none", "vader"}:
        raise ValueError(f"SENTIMENT_FALLBACK must be none or vader, got {fallback!r}")
    port = _int(env, "GATEWAY_PORT", d.gateway_port)
    return Config(
        database_url=with_password(env.get("DATABASE_URL", "").strip() or d.database_url, sdir,
                                   env.get("DATABASE_PASSWORD_SECRET", "").strip()),
        redis_url=with_password(env.get("REDIS_URL", "").strip() or d.redis_url, sdir,
                                env.get("REDIS_PASSWORD_SECRET", "").strip()),
        db_connect_timeout=_float(env, "DB_CONNECT_TIMEOUT", d.db_connect_timeout),
        redis_timeout=_float(env, "REDIS_TIMEOUT", d.redis_timeout),
        gateway_port=port,
        gateway_workers=_int(env, "GATEWAY_WORKERS", d.gateway_workers),
        gateway_threads=_int(env, "GATEWAY_THREADS", d.gateway_threads),
        gateway_url=env.get("GATEWAY_URL", "").strip() or f"http://127.0.0.1:{port}",
        function_timeout=_float(env, "FUNCTION_TIMEOUT", d.function_timeout),
        function_namespace=env.get("FUNCTION_NAMESPACE", d.function_namespace).strip(),
        stack_file=env.get("STACK_FILE", "").strip() or d.stack_file,
        gateway_basic_auth=_bool(env, "GATEWAY_BASIC_AUTH", d.gateway_basic_auth),
        gateway_state_ttl=_float(env, "GATEWAY_STATE_TTL", d.gateway_state_ttl),
        gateway_access_log=_bool(env, "GATEWAY_ACCESS_LOG", d.gateway_access_log),
        gateway_direct_calls=_bool(env, "GATEWAY_DIRECT_CALLS", d.gateway_direct_calls),
        gateway_bind=env.get("GATEWAY_BIND", "").strip() or d.gateway_bind,
        gateway_read_timeout=_positive(env, "GATEWAY_READ_TIMEOUT", d.gateway_read_timeout),
        gateway_queue_timeout=_positive(env, "GATEWAY_QUEUE_TIMEOUT", d.gateway_queue_timeout),
        gateway_drain_timeout=_positive(env, "GATEWAY_DRAIN_TIMEOUT", d.gateway_drain_timeout),
        gateway_microcache_ttl=_float(env, "GATEWAY_MICROCACHE_TTL", d.gateway_microcache_ttl),
        gateway_identity_headers=_bool(env, "GATEWAY_IDENTITY_HEADERS", d.gateway_identity_headers),
        max_body_bytes=_int(env, "MAX_BODY_BYTES", d.max_body_bytes),
        trusted_proxies=_list(env, "TRUSTED_PROXIES", ",".join(d.trusted_proxies)),
        jwt_ttl_seconds=_int(env, "JWT_TTL_SECONDS", d.jwt_ttl_seconds),
        jwt_issuer=env.get("JWT_ISSUER", d.jwt_issuer),
        rate_limit_window=_int(env, "RATE_LIMIT_WINDOW", d.rate_limit_window),
        rate_limit_ip=_int(env, "RATE_LIMIT_IP", d.rate_limit_ip),
        rate_limit_account=_int(env, "RATE_LIMIT_ACCOUNT", d.rate_limit_account),
        rate_limit_login=_int(env, "RATE_LIMIT_LOGIN", d.rate_limit_login),
        rate_limit_register=_int(env, "RATE_LIMIT_REGISTER", d.rate_limit_register),
        rate_limit_enabled=_bool(env, "RATE_LIMIT_ENABLED", d.rate_limit_enabled),
        login_failure_limit=_int(env, "LOGIN_FAILURE_LIMIT", d.login_failure_limit),
        login_failure_window=_int(env, "LOGIN_FAILURE_WINDOW", d.login_failure_window),
        worker_count=_int(env, "WORKER_COUNT", d.worker_count),
        async_queue=env.get("ASYNC_QUEUE", d.async_queue),
        async_callback_attempts=_int(env, "ASYNC_CALLBACK_ATTEMPTS", d.async_callback_attempts),
        worker_metrics_port=_int(env, "WORKER_METRICS_PORT", d.worker_metrics_port),
        worker_metrics_bind=env.get("WORKER_METRICS_BIND", "").strip() or d.worker_metrics_bind,
        sentiment_backend=backend,
        sentiment_fallback=fallback,
        ollama_host=env.get("OLLAMA_HOST", "").strip() or d.ollama_host,
        ollama_model=env.get("OLLAMA_MODEL", "").strip() or d.ollama_model,
        ollama_timeout=_float(env, "OLLAMA_TIMEOUT", d.ollama_timeout),
        ollama_keep_alive=env.get("OLLAMA_KEEP_ALIVE", d.ollama_keep_alive),
        ollama_batch_size=_int(env, "OLLAMA_BATCH_SIZE", d.ollama_batch_size),
        ollama_parallel=_int(env, "OLLAMA_PARALLEL", d.ollama_parallel),
        vader_batch_size=_int(env, "VADER_BATCH_SIZE", d.vader_batch_size),
        sentiment_batch_wait=_float(env, "SENTIMENT_BATCH_WAIT", d.sentiment_batch_wait),
        sentiment_max_attempts=_int(env, "SENTIMENT_MAX_ATTEMPTS", d.sentiment_max_attempts),
        sentiment_pending_grace=_int(env, "SENTIMENT_PENDING_GRACE", d.sentiment_pending_grace),
        reconcile_interval=_int(env, "RECONCILE_INTERVAL", d.reconcile_interval),
        ollama_check_interval=_float(env, "OLLAMA_CHECK_INTERVAL", d.ollama_check_interval),
        sentiment_retry_base=_float(env, "SENTIMENT_RETRY_BASE", d.sentiment_retry_base),
        sentiment_retry_max=_float(env, "SENTIMENT_RETRY_MAX", d.sentiment_retry_max),
        callback_retry_base=_float(env, "CALLBACK_RETRY_BASE", d.callback_retry_base),
        callback_allow_hosts=_list(env, "CALLBACK_ALLOW_HOSTS"),
        callback_timeout=_float(env, "CALLBACK_TIMEOUT", d.callback_timeout),
        callback_max_attempts=_int(env, "CALLBACK_MAX_ATTEMPTS", d.callback_max_attempts),
        callback_max_response_bytes=_int(env, "CALLBACK_MAX_RESPONSE_BYTES", d.callback_max_response_bytes),
        log_level=env.get("LOG_LEVEL", d.log_level).upper(),
        log_to_db=_bool(env, "LOG_TO_DB", d.log_to_db),
        log_buffer_size=_int(env, "LOG_BUFFER_SIZE", d.log_buffer_size),
        log_store_reads_one_in=max(1, _int(env, "LOG_STORE_READS_ONE_IN", d.log_store_reads_one_in)),
        log_slow_ms=_float(env, "LOG_SLOW_MS", d.log_slow_ms),
        log_retention_days=_int(env, "LOG_RETENTION_DAYS", d.log_retention_days),
        log_prune_interval=_float(env, "LOG_PRUNE_INTERVAL", d.log_prune_interval),
        logs_follow_max_seconds=_float(env, "LOGS_FOLLOW_MAX_SECONDS", d.logs_follow_max_seconds),
        secrets_dir=sdir,
        jwt_secret=read_secret(sdir, "jwt-secret") or "",
        callback_signing_key=read_secret(sdir, "callback-signing-key") or "",
        basic_auth_user=read_secret(sdir, "basic-auth-user") or "admin",
        basic_auth_password=read_secret(sdir, "basic-auth-password") or "",
    )


_CONFIG: Config | None = None
#: Per-invocation override: the local gateway hosts many functions in one process, each with the
#: ``envVars`` it was deployed with, exactly as each would have its own env in its own container.
_function_config: contextvars.ContextVar[Config | None] = contextvars.ContextVar(
    "function_config", default=None
)


def get_config() -> Config:
    """The configuration in force: the invoked function's, else the process-wide one."""
    global _CONFIG
    override = _function_config.get()
    if override is not None:
        return override
    if _CONFIG is None:
        _CONFIG = load_config()
    return _CONFIG


def set_config(config: Config | None) -> None:
    """Replace the process-wide configuration (tests, and the gateway at start-up)."""
    global _CONFIG
    _CONFIG = config


@contextmanager
def use_config(config: Config | None) -> Iterator[None]:
    """Make ``config`` the one :func:`get_config` returns inside the block (None: no change)."""
    if config is None:
        yield
        return
    token = _function_config.set(config)
    try:
        yield
    finally:
        _function_config.reset(token)


def ensure_dev_secrets(secrets_dir: Path = DEV_SECRETS_DIR) -> Path:
    """Create any missing secret file with a random value (development fallback only)."""
    import secrets as _secrets

    secrets_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    # The folder keeps other host users out. The files are 0644 because docker compose bind-mounts
    # each one into containers whose non-root users (gateway 1000, grafana 472, exporters) must read
    # it, and compose ignores a secret's uid/gid/mode outside Swarm.
    secrets_dir.chmod(0o700)
    for name in SECRET_NAMES:
        path = secrets_dir / name
        if not path.exists():
            value = "admin" if name == "basic-auth-user" else _secrets.token_urlsafe(32)
            path.write_text(value + "\n", encoding="utf-8")
        path.chmod(0o644)
    return secrets_dir
