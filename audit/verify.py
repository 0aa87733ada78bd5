"""``fhir-api audit verify``: prove the stored log complete and unaltered, or say where it is not.

One pass over the chain in ``seq`` order, joined to the events: a gap or a repeated ``seq`` (deleted or
reordered links), a link whose ``prev_hash`` is not its predecessor's hash (reordered or removed rows), a
link whose event is gone (deleted row), a hash that does not match the event's JSON (modified row), an
event whose MAC does not hold (a forged row: only the server has the MAC key), events below the head that
were never chained (inserted behind the chainer's back), and checkpoints: each signature must hold and its
head hash must be the chain's hash at that ``seq`` (a rewritten chain), and no checkpoint may lie beyond
the head (truncation). Streaming: constant memory whatever the log's size.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Iterable
from contextlib import closing
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, and_, exists, func, or_, select, text

from audit import signing
from audit.chain import GENESIS, head, link_hash
from audit.models import AuditRow, ChainLink, Checkpoint
from fhir_api.db import read_ahead

MAX_REPORTED = 50
FETCH = 10_000


@dataclass
class Report:
    checked: int = 0
    head_seq: int = 0
    head_hash: str = GENESIS
    checkpoints: int = 0
    problems: list[str] = field(default_factory=list)
    problem_count: int = 0
    unchained: int = 0  # events committed after the chainer's last run (not a problem)

    @property
    def ok(self) -> bool:
        return self.problem_count == 0

    def problem(self, text: str) -> None:
        self.problem_count += 1
        if len(self.problems) < MAX_REPORTED:
            self.problems.append(text)


def _checkpoint_claims(
    stored: Iterable[tuple[int, str, str]], external: Iterable[dict[str, Any]], key: Any, report: Report
) -> dict[int, str]:
    """seq -> head hash, from every checkpoint whose signature holds (a bad one is a problem itself)."""
    claims: dict[int, str] = {}
    for origin, items in (
        ("stored", [{"seq": s, "hash": h, "jws": j} for s, h, j in stored]),
        ("saved", external),
    ):
        for item in items:
            seq, digest, token = item.get("seq"), item.get("hash"), item.get("jws")
            if key is not None and token:
                try:
                    payload = signing.verify(token, key)
                except ValueError:
                    report.problem(f"{origin} checkpoint at seq {seq}: the signature does not hold")
                    continue
                if payload.get("seq") != seq or payload.get("hash") != digest:
                    report.problem(f"{origin} checkpoint at seq {seq}: its row differs from what was signed")
                    seq, digest = payload.get("seq"), payload.get("hash")
            elif key is not None and origin == "stored":
                report.problem(f"stored checkpoint at seq {seq} is not signed")
                continue
            if isinstance(seq, int) and isinstance(digest, str):
                if claims.get(seq, digest) != digest:
                    report.problem(f"two checkpoints at seq {seq} disagree")
                claims[seq] = digest
                report.checkpoints += 1
    return claims


def verify(
    engine: Engine,
    *,
    key: Any = None,
    mac_key: bytes | None = None,
    saved: Iterable[dict[str, Any]] = (),
    progress: Callable[[int], None] | None = None,
    since: tuple[int, str] | None = None,
    orphans: bool = True,
) -> Report:
    """Check the whole chain; ``key`` (public Ed25519 JWK) checks checkpoint signatures, ``mac_key`` each
    event's MAC, ``saved`` adds checkpoints the auditor kept outside the database. ``since`` = (seq, hash)
    of a trusted checkpoint checks only what follows it (the auditor page's quick status)."""
    report = Report()
    c, e = ChainLink.__table__.c, AuditRow.__table__.c
    with engine.connect() as conn:
        cp = Checkpoint.__table__.c
        stored = conn.execute(select(cp.seq, cp.hash, cp.jws).order_by(cp.seq)).all()
        claims = _checkpoint_claims(stored, saved, key, report)
        stmt = (
            select(c.seq, c.prev_hash, c.hash, e.body, e.mac)
            .select_from(ChainLink.__table__.outerjoin(AuditRow.__table__, e.pos == c.pos))
            .order_by(c.seq)
        )
        expected, running = 1, GENESIS
        if since is not None:
            stmt = stmt.where(c.seq > since[0])
            expected, running = since[0] + 1, since[1]
        result = conn.execution_options(stream_results=True, yield_per=FETCH).execute(stmt)
        with closing(read_ahead(result.partitions())) as pages:  # its thread stops before conn closes
            for seq, prev_hash, digest, body, mac in (row for page in pages for row in page):
                if seq != expected:
                    what = "missing" if seq > expected else "repeated or out of order"
                    report.problem(f"seq {expected}: links {what} (found seq {seq} next)")
                if prev_hash != running:
                    report.problem(f"seq {seq}: does not follow its predecessor (rows removed or reordered)")
                if body is None:
                    report.problem(f"seq {seq}: its event row is gone (deleted)")
                else:
                    if link_hash(prev_hash, seq, body) != digest:
                        report.problem(f"seq {seq}: the event differs from what was chained (modified)")
                    if mac_key is not None and not (
                        mac and hmac.compare_digest(signing.event_mac(mac_key, body), mac)
                    ):
                        report.problem(
                            f"seq {seq}: the event was not written by this server (MAC does not hold)"
                        )
                claimed = claims.get(seq)
                if claimed is not None and claimed != digest:
                    report.problem(f"seq {seq}: the chain differs from the signed checkpoint (rewritten)")
                running, expected = digest, seq + 1
                report.checked += 1
                if progress is not None and report.checked % FETCH == 0:
                    progress(FETCH)
        if progress is not None:
            progress(report.checked % FETCH)
        h = head(conn)
        report.head_seq, report.head_hash = h.seq, h.hash
        beyond = [s for s in claims if s > h.seq]
        if beyond:
            report.problem(
                f"the chain ends at seq {h.seq} but a checkpoint vouches for seq {max(beyond)} (truncated)"
            )
        if not orphans:
            return report
        chained = exists().where(c.pos == e.pos)
        if conn.dialect.name == "postgresql" and h.txid is not None:
            txid = func.coalesce(e.txid, -1)  # a row without one was never written by the server
            below = or_(txid < h.txid, and_(txid == h.txid, e.pos <= h.pos))
        else:
            below = e.pos <= h.pos
        count = select(func.count()).select_from(AuditRow.__table__).where(~chained)
        orphans = conn.execute(count.where(below)).scalar() or 0
        if orphans:
            report.problem(
                f"{orphans} event(s) below the chain head were never chained (inserted out of band)"
            )
        _check_pending(conn, chained, below, mac_key, report)
    return report


def _check_pending(conn: Any, chained: Any, below: Any, mac_key: bytes | None, report: Report) -> None:
    """Events not chained yet (committed after the chainer's last run): each must still be the server's
    own (MAC), and on PostgreSQL within the chainer's reach (a txid it will come to)."""
    e = AuditRow.__table__.c
    pg = conn.dialect.name == "postgresql"
    xmax = (
        conn.execute(text("SELECT (pg_snapshot_xmax(pg_current_snapshot())::text)::bigint")).scalar()
        if pg
        else 0
    )
    rows = conn.execution_options(stream_results=True, yield_per=FETCH).execute(
        select(e.pos, e.txid, e.body, e.mac).where(~chained, ~below)
    )
    for pos, txid, body, mac in rows:
        report.unchained += 1
        if mac_key is not None and not (mac and hmac.compare_digest(signing.event_mac(mac_key, body), mac)):
            report.problem(f"unchained event at pos {pos} was not written by this server (MAC does not hold)")
        if pg and (txid is None or txid >= xmax):
            report.problem(f"unchained event at pos {pos} has a transaction id the chainer will never reach")
