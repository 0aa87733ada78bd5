"""Resource storage tables: the current-version pointer and every version's body."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Boolean, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from fhir_api.db import Base, UTCDateTime

# SQLite only aliases the rowid (and so auto-increments) for a column declared exactly INTEGER.
BigIntId = BigInteger().with_variant(Integer(), "sqlite")


class Resource(Base):
    """One row per logical resource: which version is current and whether it is deleted."""

    __tablename__ = "resource"

    res_type: Mapped[str] = mapped_column(String(64), primary_key=True)
    res_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, nullable=False)
    deleted: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    last_updated: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)

    __table_args__ = (Index("ix_resource_type_updated", "res_type", "last_updated"),)


class ResourceVersion(Base):
    """Every version ever written, in commit order (``seq``); the body is the client's JSON as stored."""

    __tablename__ = "resource_version"

    seq: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    res_type: Mapped[str] = mapped_column(String(64), nullable=False)
    res_id: Mapped[str] = mapped_column(String(64), nullable=False)
    version: Mapped[int] = mapped_column(Integer, nullable=False)
    method: Mapped[str] = mapped_column(String(8), nullable=False)
    deleted: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    last_updated: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    body: Mapped[str | None] = mapped_column(Text, nullable=True)
    # Set when the body holds protected elements: the KEK that wraps this version's data key, and the
    # wrapped key itself (crypto.envelope's format). Rotation re-wraps rows by key_id.
    key_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    data_key: Mapped[str | None] = mapped_column(Text, nullable=True)

    __table_args__ = (
        UniqueConstraint("res_type", "res_id", "version", name="uq_resource_version"),
        Index("ix_resource_version_type_seq", "res_type", "seq"),
        Index("ix_resource_version_updated", "last_updated"),
        Index("ix_resource_version_key", "key_id"),
    )


class VersionOwner(Base):
    """Whose records one version belongs to, read from that version's own content (resources.owners): a
    patient whose compartment it is in, and for a Coverage the Organization that pays it.

    The search index describes only current versions; access rules check old versions (vread, history)
    against these rows, so a version is never judged by what a later version says.
    """

    __tablename__ = "resource_version_owner"

    res_type: Mapped[str] = mapped_column(String(64), primary_key=True)
    res_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    owner_type: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner_id: Mapped[str] = mapped_column(String(64), primary_key=True)

    __table_args__ = (Index("ix_resource_version_owner_owner", "owner_id", "owner_type", "res_type"),)
