"""Versioned SQL migrations (``migrations/NNNN_name.sql``), applied once each, in order.

Several processes may start at once (two gateway replicas, the workers): a transaction-level
advisory lock serialises them, and each migration runs in the same transaction that records it,
so a crash never leaves a half-applied version. ``python -m minitwitter.migrate`` runs them;
``make run`` first creates the database itself when its server does not have it
(:func:`ensure_database`).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pg8000.native

from . import db, logs, logstore

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
#: Arbitrary constant naming the advisory lock that serialises migrators.
MIGRATION_LOCK_ID = 0x6D74_6D69  # "mtmi"
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


def available() -> list[tuple[int, str, Path]]:
    """All migration files as (version, name, path), sorted by version."""
    found = []
    for path in MIGRATIONS_DIR.iterdir():
        match = _NAME.match(path.name)
        if match:
            found.append((int(match.group(1)), match.group(2), path))
    return sorted(found)


def ensure_database(url: str) -> None:
    """Create the database named in ``url`` if the server does not have it yet."""
    params = db.connect_params(url)
    name = params["database"]
    admin = pg8000.native.Connection(**{**params, "database": "postgres"})
    try:
        if not admin.run("SELECT 1 FROM pg_database WHERE datname = :n", n=name):
            admin.run(f"CREATE DATABASE {pg8000.native.identifier(name)}")
    finally:
        admin.close()


def migrate() -> list[int]:
    """Apply every pending migration; return the versions applied by this call."""
    applied: list[int] = []
    with db.transaction():
        db.run("SELECT pg_advisory_xact_lock(:id)", id=MIGRATION_LOCK_ID)
        db.run(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {row[0] for row in db.run("SELECT version FROM schema_migrations")}
        for version, name, path in available():
            if version in done:
                continue
            log.info("applying migration", extra={"version": version, "migration": name})
            db.run(path.read_text(encoding="utf-8"))
            db.run("INSERT INTO schema_migrations (version, name) VALUES (:v, :n)", v=version, n=name)
            applied.append(version)
    return applied


def main() -> None:
    """Entry point of ``make migrate``."""
    logs.configure_logging("migrate", store=logstore.store_batch)
    versions = migrate()
    log.info("migrations applied", extra={"versions": versions})
    print(f"migrations applied: {versions or 'none (up to date)'}")


if __name__ == "__main__":
    main()
