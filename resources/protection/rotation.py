"""Key rotation while serving: re-wrap every data key under the current KEK; retire a KEK nothing uses.

Re-wrapping changes only ``resource_version.key_id``/``data_key`` (and the wrapped blind-index roots), one
batch per short transaction, each row guarded by its old value so a concurrent rotation cannot clobber it.
Readers open a row under either KEK while both are in the keyring; writers take the current KEK from the
key file (re-read on change) or Vault. It is resumable by construction: it works on whatever rows still
name another KEK, and it sweeps again after a grace period for versions written by workers that had not
yet seen the new KEK.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import exists, func, or_, select, update
from sqlalchemy.orm import Session

from crypto.envelope import version_aad
from fhir_api.db import now as db_now
from fhir_api.db import write_transaction
from resources.models import ResourceVersion
from resources.protection.models import IndexKey
from resources.protection.service import Protection, index_key_aad
from resources.search.indexer import blind_sets, blind_tables

Progress = Callable[[int], Any]


def stale_count(session: Session, current: str) -> int:
    versions = session.execute(
        select(func.count()).where(ResourceVersion.key_id.is_not(None), ResourceVersion.key_id != current)
    ).scalar_one()
    roots = session.execute(select(func.count()).where(IndexKey.key_id != current)).scalar_one()
    return int(versions) + int(roots)


def _rewrap_versions(session: Session, shield: Protection, current: str, batch: int) -> int:
    with write_transaction(session):
        rows = session.execute(
            select(
                ResourceVersion.seq,
                ResourceVersion.res_type,
                ResourceVersion.res_id,
                ResourceVersion.version,
                ResourceVersion.data_key,
            )
            .where(ResourceVersion.key_id.is_not(None), ResourceVersion.key_id != current)
            .order_by(ResourceVersion.seq)
            .limit(batch)
        ).all()
        if not rows:
            return 0
        moved = shield.envelopes.rewrap(
            [(r.data_key, version_aad(r.res_type, r.res_id, r.version)) for r in rows]
        )
        for row, (wrapped, kid) in zip(rows, moved, strict=True):
            session.execute(
                update(ResourceVersion)
                .where(ResourceVersion.seq == row.seq, ResourceVersion.data_key == row.data_key)
                .values(key_id=kid, data_key=wrapped)
            )
    return len(rows)


def _rewrap_index_keys(session: Session, shield: Protection, current: str) -> int:
    with write_transaction(session):
        rows = session.execute(select(IndexKey.gen, IndexKey.wrapped).where(IndexKey.key_id != current)).all()
        if rows:
            moved = shield.envelopes.rewrap([(r.wrapped, index_key_aad(r.gen)) for r in rows])
            for row, (wrapped, kid) in zip(rows, moved, strict=True):
                session.execute(
                    update(IndexKey)
                    .where(IndexKey.gen == row.gen, IndexKey.wrapped == row.wrapped)
                    .values(key_id=kid, wrapped=wrapped)
                )
    return len(rows)


def rewrap_all(
    session: Session,
    shield: Protection,
    *,
    batch: int = 500,
    grace: float = 2.0,
    progress: Progress | None = None,
) -> int:
    """Move every wrapped key to the current KEK; returns how many were re-wrapped."""
    done = 0
    for sweep in range(2):
        if sweep:
            time.sleep(grace)  # workers that wrote with the previous KEK just before the switch
        current = shield.provider.current_kid()
        done += _rewrap_index_keys(session, shield, current)
        while n := _rewrap_versions(session, shield, current, batch):
            done += n
            if progress:
                progress(n)
    return done


def in_use(session: Session, kid: str) -> bool:
    return bool(
        session.execute(
            select(
                or_(
                    exists().where(ResourceVersion.key_id == kid),
                    exists().where(IndexKey.key_id == kid),
                )
            )
        ).scalar()
    )


# -- the blind-index root key ------------------------------------------------------------------------------
def begin_index_rotation(session: Session, shield: Protection) -> int:
    """A new root key generation in state ``building`` (or the one a previous run left), returned.

    From the moment workers see it (``INDEX_KEY_TTL``), they write new rows under it and search under
    every live generation, so results stay complete while the rows are rebuilt."""
    with write_transaction(session):
        building = session.execute(select(IndexKey.gen).where(IndexKey.state == "building")).scalar()
        if building is not None:
            return int(building)
        gen = int(session.execute(select(func.coalesce(func.max(IndexKey.gen), 0))).scalar_one()) + 1
        wrapped, kid = shield.new_index_key(gen)
        session.add(IndexKey(gen=gen, state="building", key_id=kid, wrapped=wrapped, created_at=db_now()))
    shield.forget_index_keys()
    return gen


def stale_index_rows(session: Session, gen: int, limit: int = 1000) -> list[tuple[str, str]]:
    """Resources that still have blind-index rows under an older generation."""
    found: dict[tuple[str, str], None] = {}
    for t in blind_tables(blind_sets(session)):
        stmt = select(t.res_type, t.res_id).where(t.gen != gen).distinct().limit(limit)
        found.update(dict.fromkeys((r[0], r[1]) for r in session.execute(stmt)))
    return list(found)[:limit]


def finish_index_rotation(session: Session, shield: Protection, gen: int) -> None:
    """Make ``gen`` the only live generation; refused while rows under another one remain."""
    with write_transaction(session):
        if stale_index_rows(session, gen, 1):
            raise RuntimeError("blind-index rows under an older key remain; run the rebuild again")
        session.execute(update(IndexKey).where(IndexKey.gen != gen).values(state="retired"))
        session.execute(update(IndexKey).where(IndexKey.gen == gen).values(state="active"))
    shield.forget_index_keys()


# -- policy changes ----------------------------------------------------------------------------------------
def reseal(
    session: Session,
    shield: Protection,
    *,
    res_type: str | None = None,
    batch: int = 200,
    progress: Progress | None = None,
) -> int:
    """Store every version again under the current policy (after ``FHIR_PROTECTED_ELEMENTS`` grew, or
    protection was switched on): elements now protected are sealed, nothing else changes. Returns how
    many versions were rewritten. Search indexes follow with ``fhir-api search reindex``."""
    from resources import jsonio
    from resources.repository import stored_from_row

    after, changed = 0, 0
    while True:
        with write_transaction(session):
            stmt = select(ResourceVersion).where(
                ResourceVersion.seq > after, ResourceVersion.body.is_not(None)
            )
            if res_type:
                stmt = stmt.where(ResourceVersion.res_type == res_type)
            rows = session.execute(stmt.order_by(ResourceVersion.seq).limit(batch)).scalars().all()
            for row in rows:
                clear = stored_from_row(row).body or "{}"
                sealed = shield.seal(row.res_type, row.res_id, row.version, jsonio.loads_trusted(clear))
                body, data_key, key_id = sealed if sealed else (clear, None, None)
                if body != row.body:
                    session.execute(
                        update(ResourceVersion)
                        .where(ResourceVersion.seq == row.seq)
                        .values(body=body, data_key=data_key, key_id=key_id)
                    )
                    changed += 1
        if not rows:
            return changed
        after = rows[-1].seq
        if progress:
            progress(len(rows))
