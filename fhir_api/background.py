"""The background threads of one app process: the audit chainer, the export runner and the subscription
worker. Each starts once per process (after gunicorn forked it); tests start none (they run the steps)."""

from __future__ import annotations

import os
from typing import Any

from flask import Flask


def _flask_app(app: Any) -> Flask | None:
    """This server's app, or None for another WSGI app served the same way (bench/floor_app.py)."""
    return app if isinstance(app, Flask) and "fhir_db" in app.extensions else None


def start(app: Any) -> None:
    app = _flask_app(app)
    if app is None:
        return
    from audit import chain
    from resources.bulk import jobs
    from resources.subscriptions import delivery

    chain.start_chainer(app)
    jobs.start_runner(app)
    delivery.start_worker(app)


def init_app(app: Flask) -> None:
    """Start them at a process's first request too, for servers other than ``fhir-api serve`` (whose
    workers start them at boot): one check of the process id per request, then nothing."""
    started = {"pid": -1}

    @app.before_request
    def _background() -> None:
        if started["pid"] != os.getpid():  # after gunicorn (or another server) forked this process
            started["pid"] = os.getpid()
            start(app)


def stop(app: Any) -> None:
    """Stop what must not be cut off mid-way (a delivery between sending and recording it)."""
    app = _flask_app(app)
    if app is None:
        return
    worker = app.extensions.get("fhir_subscriptions", {}).get("worker")
    if worker is not None:
        worker.stop()
