"""Rebuild search indexes from stored resources (after the definitions or the extraction change)."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager

from sqlalchemy.orm import Session
from tqdm import tqdm

from fhir_api.db import write_transaction
from resources import jsonio
from resources.repository import ResourceRepository
from resources.search.indexer import write_index


def reindex(
    sessions: Callable[[], AbstractContextManager[Session]],
    res_type: str | None = None,
    batch_size: int = 500,
    progress: bool = False,
    local_base: str | None = None,
) -> int:
    """Re-index every current resource in batches, each batch one transaction with its rows locked, so
    that concurrent writes are neither lost nor re-indexed from a stale body. Returns the count."""
    done = 0
    after: tuple[str, str] | None = None
    with sessions() as session:
        total = ResourceRepository(session).count_current(res_type)
    with tqdm(total=total, unit="resource", desc="reindexing", disable=not progress) as bar:
        while True:
            with sessions() as session, write_transaction(session):
                batch = ResourceRepository(session).current_batch(after, batch_size, res_type, lock=True)
                for stored in batch:
                    resource = jsonio.loads_trusted(stored.body or "{}")
                    write_index(
                        session, stored.res_type, stored.res_id, resource, replace=True, local_base=local_base
                    )
            if not batch:
                break
            after = (batch[-1].res_type, batch[-1].res_id)
            done += len(batch)
            bar.update(len(batch))
    return done
