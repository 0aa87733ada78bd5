"""Run the app under gunicorn in-process (``fhir-api serve``); docker-compose uses the same settings."""

from __future__ import annotations

import atexit
import multiprocessing
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from gunicorn.app.base import BaseApplication


def default_workers() -> int:
    return multiprocessing.cpu_count() * 2 + 1


def default_threads() -> int:
    """Threads per worker (``FHIR_THREADS``): with more than one, gthread workers. Several requests in
    flight per process keep the CPUs busy while others wait on the database's commit flush (every read
    commits its audit row), and long downloads (audit exports) are not killed by the worker timeout."""
    return int(os.environ.get("FHIR_THREADS", "4"))


def gunicorn_options(
    bind: str, workers: int, overrides: dict[str, Any] | None = None, threads: int | None = None
) -> dict[str, Any]:
    threads = default_threads() if threads is None else threads
    return {
        "bind": bind,
        "workers": workers,
        "worker_class": "gthread" if threads > 1 else "sync",
        "threads": max(threads, 1),
        "graceful_timeout": 30,  # finish in-flight requests (and their audit rows) on SIGTERM
        "timeout": 60,
        "keepalive": 5,
        "max_requests": 20000,  # recycle workers to bound memory growth
        "max_requests_jitter": 2000,
        "accesslog": None,  # request logging is the app's job (no query strings in clear)
        "errorlog": "-",
        # Header limits a little above the app's own (FHIR_MAX_HEADER_BYTES), which answers with an
        # OperationOutcome; gunicorn's plain 400 is the backstop for what the app never sees.
        "limit_request_line": 8190,
        "limit_request_fields": 100,
        "limit_request_field_size": 16384,
        "child_exit": _child_exit,
        "post_worker_init": _post_worker_init,
        "worker_exit": _worker_exit,
        **(overrides or {}),
    }


def prepare_metrics_dir(directory: str | None = None) -> str:
    """Before gunicorn forks (and before anything imports prometheus_client, which reads the variable at
    import): a directory where every worker writes its metrics, emptied of an earlier run's files. One
    made here (none configured) is removed when this process, the master, exits."""
    given = directory or os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if given:
        path = Path(given)
    else:
        path = Path(tempfile.mkdtemp(prefix="fhir-metrics-"))
        atexit.register(_remove_if_owner, path, os.getpid())
    path.mkdir(parents=True, exist_ok=True)
    for stale in path.glob("*.db"):
        stale.unlink()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path)
    return str(path)


def _remove_if_owner(path: Path, owner: int) -> None:
    # Forked workers inherit the handler; one that exits (recycled after max_requests) must leave the
    # directory to the master and the other workers.
    if os.getpid() == owner:
        shutil.rmtree(path, ignore_errors=True)


def _child_exit(_server: Any, worker: Any) -> None:
    """A worker ended: its live gauges (database pool) must stop counting in the sum."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)


def _post_worker_init(worker: Any) -> None:
    """The worker's background threads start now, not at its first request: a restarted server goes on
    delivering subscriptions and chaining the audit log even before anyone calls it."""
    from fhir_api import background

    background.start(worker.wsgi)


def _worker_exit(_server: Any, worker: Any) -> None:
    """Let the subscription worker finish the delivery under way (and record it) before the process ends."""
    from fhir_api import background

    background.stop(worker.wsgi)


class GunicornApp(BaseApplication):
    """Each worker builds its own app (and engine) after fork: nothing shared that breaks with workers."""

    def __init__(self, options: dict[str, Any], app_overrides: dict[str, Any] | None = None) -> None:
        self.options = options
        self.app_overrides = app_overrides
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            if key in self.cfg.settings and value is not None:
                self.cfg.set(key, value)

    def load(self):
        from fhir_api import create_app

        return create_app(self.app_overrides)
