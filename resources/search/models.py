"""Search index tables, one per parameter type; each row is one indexed value of one current resource.

Rows exist only for the current, non-deleted version of a resource: a write replaces them in the same
transaction. Protected values are never stored in these tables: their parameters are indexed as keyed
hashes (resources.protection.blind), in ``search_blind`` (a row per hash) or, on PostgreSQL,
``search_blind_set`` (an array per resource).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Float, Index, Integer, String, Text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Mapped, declared_attr, mapped_column

from fhir_api.db import Base, UTCDateTime

# Long strings are cut to this many characters in indexed columns (btree limits); full values are kept
# where exact matching needs them.
INDEXED_CHARS = 255


class _IndexRow:
    """Columns every index table shares.

    The tables have no key column (a surrogate key cost a sequence call and a btree insert per row, and
    nothing addresses a row by itself). The ORM needs an identity, so the mapper treats the shared columns
    as one; queries never rely on it, and a tie between a resource's rows is broken by the physical row id
    (``rowid`` on SQLite, ``ctid`` on PostgreSQL).
    """

    res_type: Mapped[str] = mapped_column(String(64), nullable=False)
    res_id: Mapped[str] = mapped_column(String(64), nullable=False)
    param: Mapped[str] = mapped_column(String(100), nullable=False)

    @declared_attr.directive
    def __mapper_args__(cls) -> dict[str, Any]:
        table = cls.__table__  # type: ignore[attr-defined]
        return {"primary_key": [table.c.res_type, table.c.res_id, table.c.param]}


class StringIndex(_IndexRow, Base):
    """Strings, normalised (case and accents folded) for starts-with/contains; exact text for :exact."""

    __tablename__ = "search_string"
    value_norm: Mapped[str] = mapped_column(String(INDEXED_CHARS), nullable=False)
    value_exact: Mapped[str] = mapped_column(Text, nullable=False)
    __table_args__ = (
        Index(
            "ix_search_string_value",
            "res_type",
            "param",
            "value_norm",
            postgresql_ops={"value_norm": "text_pattern_ops"},
        ),
        Index("ix_search_string_res", "res_type", "res_id"),
    )


class TokenIndex(_IndexRow, Base):
    """Codes with their system; ``text_norm`` for :text; identifier type for :of-type."""

    __tablename__ = "search_token"
    system: Mapped[str | None] = mapped_column(String(INDEXED_CHARS), nullable=True)
    code: Mapped[str | None] = mapped_column(String(INDEXED_CHARS), nullable=True)
    text_norm: Mapped[str | None] = mapped_column(String(INDEXED_CHARS), nullable=True)
    type_system: Mapped[str | None] = mapped_column(String(INDEXED_CHARS), nullable=True)
    type_code: Mapped[str | None] = mapped_column(String(INDEXED_CHARS), nullable=True)
    __table_args__ = (
        Index("ix_search_token_code", "res_type", "param", "code", "system"),
        Index("ix_search_token_system", "res_type", "param", "system"),
        Index("ix_search_token_res", "res_type", "res_id"),
    )


class DateIndex(_IndexRow, Base):
    """A date, dateTime, instant, Period or Timing as the UTC range [low, high)."""

    __tablename__ = "search_date"
    low: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    high: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    __table_args__ = (
        Index("ix_search_date_low", "res_type", "param", "low"),
        Index("ix_search_date_high", "res_type", "param", "high"),
        Index("ix_search_date_res", "res_type", "res_id"),
    )


class NumberIndex(_IndexRow, Base):
    __tablename__ = "search_number"
    value: Mapped[float] = mapped_column(Float, nullable=False)
    __table_args__ = (
        Index("ix_search_number_value", "res_type", "param", "value"),
        Index("ix_search_number_res", "res_type", "res_id"),
    )


class QuantityIndex(_IndexRow, Base):
    __tablename__ = "search_quantity"
    value: Mapped[float] = mapped_column(Float, nullable=False)
    system: Mapped[str | None] = mapped_column(String(INDEXED_CHARS), nullable=True)
    code: Mapped[str | None] = mapped_column(String(INDEXED_CHARS), nullable=True)
    unit: Mapped[str | None] = mapped_column(String(INDEXED_CHARS), nullable=True)
    __table_args__ = (
        Index("ix_search_quantity_value", "res_type", "param", "value"),
        Index("ix_search_quantity_res", "res_type", "res_id"),
    )


class ReferenceIndex(_IndexRow, Base):
    """A reference: local targets by type and id; anything else (absolute, canonical) by URL."""

    __tablename__ = "search_reference"
    target_type: Mapped[str | None] = mapped_column(String(64), nullable=True)
    target_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    url: Mapped[str | None] = mapped_column(String(INDEXED_CHARS), nullable=True)
    __table_args__ = (
        Index("ix_search_reference_target", "target_id", "target_type", "param", "res_type"),
        Index("ix_search_reference_res", "res_type", "res_id", "param"),
        Index("ix_search_reference_url", "res_type", "param", "url"),
    )


class UriIndex(_IndexRow, Base):
    __tablename__ = "search_uri"
    value: Mapped[str] = mapped_column(String(INDEXED_CHARS), nullable=False)
    __table_args__ = (
        Index(
            "ix_search_uri_value", "res_type", "param", "value", postgresql_ops={"value": "text_pattern_ops"}
        ),
        Index("ix_search_uri_res", "res_type", "res_id"),
    )


INDEX_TABLES = {
    "string": StringIndex,
    "token": TokenIndex,
    "date": DateIndex,
    "number": NumberIndex,
    "quantity": QuantityIndex,
    "reference": ReferenceIndex,
    "uri": UriIndex,
}


class CompositeIndex(_IndexRow, Base):
    """A composite parameter's value tuple, e.g. Observation code-value-quantity = (LOINC code, quantity).

    R4 composites are a token (or a reference) first, then a token, quantity, number, date or string, and
    for four parameters a third number: the ``c<n>_*`` columns mirror the single-type tables.
    """

    __tablename__ = "search_composite"
    c1_system: Mapped[str | None] = mapped_column(String(INDEXED_CHARS), nullable=True)
    c1_code: Mapped[str | None] = mapped_column(String(INDEXED_CHARS), nullable=True)
    c2_system: Mapped[str | None] = mapped_column(String(INDEXED_CHARS), nullable=True)
    c2_code: Mapped[str | None] = mapped_column(String(INDEXED_CHARS), nullable=True)
    c2_unit: Mapped[str | None] = mapped_column(String(INDEXED_CHARS), nullable=True)
    c2_value: Mapped[float | None] = mapped_column(Float, nullable=True)
    c2_low: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    c2_high: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    c2_text: Mapped[str | None] = mapped_column(String(INDEXED_CHARS), nullable=True)
    c3_value: Mapped[float | None] = mapped_column(Float, nullable=True)
    __table_args__ = (
        Index("ix_search_composite_c1", "res_type", "param", "c1_code", "c1_system"),
        Index("ix_search_composite_res", "res_type", "res_id"),
    )


INDEX_TABLES["composite"] = CompositeIndex


class BlindIndex(_IndexRow, Base):
    """Keyed hashes of a protected parameter's values (resources.protection.blind), under the blind-index
    root key of generation ``gen``; a search looks rows up by hash equality only."""

    __tablename__ = "search_blind"
    hash: Mapped[int] = mapped_column(BigInteger, nullable=False)
    gen: Mapped[int] = mapped_column(Integer, nullable=False)
    __table_args__ = (
        Index("ix_search_blind_hash", "hash"),
        Index("ix_search_blind_res", "res_type", "res_id"),
    )


class BlindSet(Base):
    """PostgreSQL's form of ``search_blind`` for strings and tokens: a resource's keyed hashes in one array,
    under a GIN index (dates stay rows: resources.search.indexer.in_set).

    A protected Patient has about a hundred hashes (every prefix of every name part): as rows, each write
    inserted a hundred heap tuples and two hundred btree entries; as one array it is one tuple whose GIN
    entries go to the pending list and are merged in bulk, about half the write time. Hashes are keyed per
    (type, parameter), so the parameter needs no column: a hash of one parameter never equals another's.
    SQLite has no arrays nor GIN and keeps ``search_blind``; this table stays empty there.
    """

    __tablename__ = "search_blind_set"
    res_type: Mapped[str] = mapped_column(String(64), primary_key=True)
    res_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    gen: Mapped[int] = mapped_column(Integer, nullable=False)
    hashes: Mapped[list[int]] = mapped_column(
        ARRAY(BigInteger).with_variant(JSON(), "sqlite"), nullable=False
    )
    __table_args__ = (
        Index(
            "ix_search_blind_set_hashes",
            "hashes",
            postgresql_using="gin",
            postgresql_with={"fastupdate": "on", "gin_pending_list_limit": 1024},
        ),
    )
