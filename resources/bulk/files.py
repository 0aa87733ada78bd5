"""Where export files live. ``LocalFiles`` keeps them under a directory (``FHIR_EXPORT_DIR``); an object
store (S3, Azure Blob) would implement the same four methods.

Lines are kept as stored: protected elements stay sealed on disk (``{"$enc": ...}`` with the version's
wrapped data key beside them), and are opened only while a download streams to its authorised client.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Protocol


class FileStore(Protocol):
    def writer(self, job_id: str, name: str) -> IO[bytes]: ...

    def lines(self, job_id: str, name: str) -> Iterator[bytes]: ...

    def exists(self, job_id: str, name: str) -> bool: ...

    def delete(self, job_id: str) -> None: ...


class LocalFiles:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def _dir(self, job_id: str) -> Path:
        if not job_id.replace("-", "").isalnum():
            raise ValueError("not a job id")
        return self.root / job_id

    def writer(self, job_id: str, name: str) -> IO[bytes]:
        directory = self._dir(job_id)
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        return (directory / name).open("wb")

    def lines(self, job_id: str, name: str) -> Iterator[bytes]:
        with (self._dir(job_id) / name).open("rb") as f:
            yield from f

    def exists(self, job_id: str, name: str) -> bool:
        return "/" not in name and (self._dir(job_id) / name).is_file()

    def delete(self, job_id: str) -> None:
        shutil.rmtree(self._dir(job_id), ignore_errors=True)
