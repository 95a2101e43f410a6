"""RSGI entry point of the gateway: ``python -m gateway.serve`` serves ``gateway.rsgi:app``, the
serving edge (:class:`~gateway.edge.Edge`) around the WSGI :class:`~gateway.app.Gateway`.

Imported once in every server worker process: it makes a stop during loading end the process
(and asks for SIGTERM should the server process die, or ends at once if it already has),
configures logging, has the buffered log lines and metric updates flushed when the worker stops,
builds the Gateway, records stack.yml's functions as deployed (idempotent), reaps the live gauges
of workers that died, and loads every deployed function before the worker takes traffic.
"""

from __future__ import annotations

import logging
import multiprocessing

from minitwitter import errors, logs, logstore, metrics
from minitwitter.config import get_config
from minitwitter.runtime import freeze_loaded_objects

from .app import Gateway
from .edge import Edge, call_on_worker_stop
from .processes import (
    detach_from_terminal_signals,
    die_with_parent,
    flush_at_exit,
    set_process_name,
    stop_on_signals_while_loading,
)
from .serve import SERVER_PROCESS_NAME

log = logging.getLogger("minitwitter.gateway")


def preload(gateway: Gateway) -> None:
    """Import every deployed function now rather than on its first request.

    Otherwise the first request to each function in each worker pays for importing its handler
    and building its Flask app (tens of milliseconds, more under load), which shows up as p99
    outliers. A function that fails to load here is logged and loaded again on first use.
    """
    try:
        names = gateway.registry.deployed_names()
    except errors.MinitwitterError:  # PostgreSQL down at start: load lazily
        log.warning("could not preload functions")
        return
    for name in names:
        try:
            gateway.registry.get(name)
        except Exception:  # noqa: BLE001 - reported again on the first invocation
            log.warning("could not preload function", extra={"function": name})


# First, while nothing is served yet: a stop during loading must not be lost, and a worker whose
# server process died must not serve on as an orphan (nor load at all if it is already gone).
stop_on_signals_while_loading()
if not die_with_parent():
    raise SystemExit(0)
if multiprocessing.parent_process() is not None:  # a granian worker (not a test importing this)
    detach_from_terminal_signals()
    set_process_name(SERVER_PROCESS_NAME)
config = get_config()
logs.configure_logging("gateway", store=logstore.store_batch)
flush_at_exit(metrics.flush, logs.flush)  # what the worker buffered when it stops
metrics.reap_dead_processes()
gateway = Gateway(config)
try:
    # Record stack.yml's functions as deployed unless an operator removed them (idempotent).
    gateway.registry.seed()
except errors.MinitwitterError:
    log.error("could not read function state at start-up")
preload(gateway)
app = Edge(gateway, config)
call_on_worker_stop(app.stopping)
freeze_loaded_objects()  # last: everything loaded above lives until exit
