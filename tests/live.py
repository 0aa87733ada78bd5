"""Start a real server process (``fhir-api serve``, i.e. gunicorn) on a free port for end-to-end tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def live_server(database_url: str, workers: int = 2, env: dict[str, str] | None = None) -> Iterator[str]:
    with live_process(database_url, workers, env) as (base, _proc):
        yield base


@contextmanager
def live_process(
    database_url: str, workers: int = 2, env: dict[str, str] | None = None, *extra: str
) -> Iterator[tuple[str, subprocess.Popen]]:
    """The server's base URL and its gunicorn master process (tests of signals need it)."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    script = Path(sys.executable).with_name("fhir-api")
    argv = [
        str(script),
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(workers),
        *extra,
    ]
    # The server's output goes to a file, never an undrained pipe (a full pipe would block its workers).
    with tempfile.TemporaryFile() as output:
        proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            env={**os.environ, "FHIR_DATABASE_URL": database_url, **(env or {})},
            stdout=output,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 30
            while True:
                if proc.poll() is not None:
                    output.seek(0)
                    raise RuntimeError(f"server exited: {output.read().decode(errors='replace')}")
                try:
                    if requests.get(f"{base}/readyz", timeout=1).status_code == 200:
                        break
                except requests.ConnectionError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError("server did not become ready in 30 s")
                time.sleep(0.1)
            yield base, proc
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
