"""WSGI entry point of the gateway: ``gunicorn -c gateway/gunicorn_conf.py gateway.wsgi:app``."""

from __future__ import annotations

import logging

from minitwitter import errors, logs
from minitwitter.config import get_config

from .app import Gateway

config = get_config()
logs.configure_logging("gateway")
app = Gateway(config)
try:
    # Record stack.yml's functions as deployed unless an operator removed them (idempotent).
    app.registry.seed()
except errors.MinitwitterError:
    logging.getLogger("minitwitter.gateway").error("could not read function state at start-up")
