"""``python -m gateway.prepare``: make the database ready for the gateway, then exit.

Creates the database named in ``DATABASE_URL`` when its server does not have it, applies the
migrations, and (re)deploys every function of ``STACK_FILE`` into the gateway's state. ``make
run`` runs it as a child before it starts the gateway, so that its own long-lived process never
holds the library, PostgreSQL's driver or the functions in memory.
"""

from __future__ import annotations

import sys

from minitwitter import logs, migrate
from minitwitter.config import get_config

from .registry import Registry


def main() -> int:
    config = get_config()
    migrate.ensure_database(config.database_url)
    logs.configure_logging("prepare")
    migrate.migrate()
    Registry(config).seed(redeploy=True)
    logs.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
