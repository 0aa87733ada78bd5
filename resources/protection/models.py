"""The blind-index root keys, wrapped by a key-encryption key (they are data keys of the search index)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from fhir_api.db import Base, UTCDateTime


class IndexKey(Base):
    """One generation of the blind-index root key. ``state``: ``active`` (searched and written), ``building``
    (written and searched while a rebuild moves rows to it) or ``retired`` (no rows left)."""

    __tablename__ = "crypto_index_key"
    gen: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    state: Mapped[str] = mapped_column(String(16), nullable=False)
    key_id: Mapped[str] = mapped_column(String(128), nullable=False)
    wrapped: Mapped[str] = mapped_column(Text, nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    rebuilt_to: Mapped[str | None] = mapped_column(Text, nullable=True)
