"""The admin listener: /healthz, /readyz and /metrics on a port of their own, served by a
small process beside gunicorn's arbiter, never by the workers.

Why: under load the legacy service's workers are all busy queueing on the hot row, so a
probe or a scrape on the order port waits in the same queue (measured: /healthz 2.5 s,
/readyz 4.2 s, /metrics 2.1 s under ab -c 150). Kubernetes then restarts the pod or
takes it out of the Service, and Prometheus loses the event it should watch. This
process reads the workers' samples from PROMETHEUS_MULTIPROC_DIR and the stores itself.

`module:function(settings)` returns the service's (readiness checks, scrape readers).
The gunicorn configs fork it from the arbiter (gunicorn_setup.admin_starter) with a
parent-death signal, so it never outlives the service.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable

from flask import Flask
from werkzeug.serving import BaseWSGIServer, make_server

from hotdeal import identity
from hotdeal.config import Settings
from hotdeal.web import init_health, init_metrics

log = logging.getLogger("hotdeal.admin")


def create_admin_app(service: str, factory: str, settings: Settings | None = None) -> Flask:
    settings = settings or Settings.from_env()
    module, _, name = factory.partition(":")
    checks, readers = getattr(importlib.import_module(module), name)(settings)
    checks = {**checks, **identity.readiness_checks(settings, service)}
    app = Flask(f"{service}-admin")
    init_health(app, checks)
    init_metrics(app, service, checks, readers)
    return app


def probe_server(host: str, port: int, app: Callable) -> BaseWSGIServer:
    """A threaded server for probes and scrapes (the admin listener, the writer's port)
    that logs no line per request: one per probe and scrape would drown the log."""
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    return make_server(host, port, app, threaded=True)


def main(argv: list[str]) -> None:
    service, factory, bind = argv
    host, _, port = bind.rpartition(":")
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    server = probe_server(host or "0.0.0.0", int(port), create_admin_app(service, factory))
    log.info("%s admin listener on %s", service, bind)
    server.serve_forever()
