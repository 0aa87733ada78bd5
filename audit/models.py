"""Audit tables: events, their links (patients, entities, agents), the hash chain and signed checkpoints.

All four are append-only, enforced by the database (migration 0008: triggers, and on PostgreSQL a separate
owner role). Events are written in the transaction of the change they record, without any lock; the chain is
built afterwards by one chainer at a time (``audit.chain``), so concurrent requests never queue on it.
Every table carries ``recorded`` in its keys (on PostgreSQL also in ``audit_event``'s) so that it can be
partitioned by time (README: retention).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from fhir_api.db import Base, UTCDateTime

BIGINT = BigInteger().with_variant(Integer, "sqlite")  # SQLite: INTEGER PRIMARY KEY is the rowid


class AuditRow(Base):
    """One AuditEvent, its canonical JSON exactly as hashed, and the columns auditors filter on."""

    __tablename__ = "audit_event"
    pos: Mapped[int] = mapped_column(BIGINT, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(String(64), nullable=False)
    recorded: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    txid: Mapped[int | None] = mapped_column(BigInteger, nullable=True)  # PostgreSQL: the writing xid
    type_code: Mapped[str] = mapped_column(String(32), nullable=False)
    subtype: Mapped[str] = mapped_column(String(64), nullable=False)
    action: Mapped[str] = mapped_column(String(1), nullable=False)
    outcome: Mapped[str] = mapped_column(String(2), nullable=False)
    client_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    body: Mapped[str] = mapped_column(Text, nullable=False)
    mac: Mapped[str | None] = mapped_column(String(64), nullable=True)  # HMAC by the server: no forgeries
    __table_args__ = (
        Index("ix_audit_event_id", "event_id"),
        Index("ix_audit_event_recorded", "recorded"),
        Index("ix_audit_event_txid", "txid", "pos"),
        Index("ix_audit_event_client", "client_id", "recorded"),
    )


class AuditLink(Base):
    """What an event names, for search: ``patient`` (Patient/id), ``entity`` (Type/id of anything else),
    ``agent`` (a user's fhirUser, an operator); the client is the event's own ``client_id``."""

    __tablename__ = "audit_link"
    event_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(8), primary_key=True)
    ref: Mapped[str] = mapped_column(String(256), primary_key=True)
    recorded: Mapped[datetime] = mapped_column(UTCDateTime, primary_key=True)
    __table_args__ = (Index("ix_audit_link_ref", "kind", "ref", "recorded"),)


class ChainLink(Base):
    """Position ``seq`` (gap-free from 1) of the chain: SHA-256 over the previous hash, ``seq`` and the
    event's canonical JSON. ``pos`` and ``txid`` name the event and where the next chainer run resumes."""

    __tablename__ = "audit_chain"
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    pos: Mapped[int] = mapped_column(BigInteger, nullable=False)
    recorded: Mapped[datetime] = mapped_column(UTCDateTime, primary_key=True)
    __table_args__ = (UniqueConstraint("pos", "recorded", name="uq_audit_chain_pos"),)
    prev_hash: Mapped[str] = mapped_column(String(64), nullable=False)
    hash: Mapped[str] = mapped_column(String(64), nullable=False)
    txid: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class Checkpoint(Base):
    """The chain's head at a moment, signed with the server's Ed25519 key (a compact JWS over the JSON
    ``{"seq", "hash", "time"}``): auditors keep these outside the database."""

    __tablename__ = "audit_checkpoint"
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    hash: Mapped[str] = mapped_column(String(64), nullable=False)
    created: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    key_id: Mapped[str] = mapped_column(String(128), nullable=False)
    jws: Mapped[str] = mapped_column(Text, nullable=False)
