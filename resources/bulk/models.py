"""Export jobs: the queue any app process (or ``fhir-api export-worker``) takes work from."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from fhir_api.db import Base, UTCDateTime


class ExportJob(Base):
    """One kick-off. ``status``: queued, running, completed, failed or cancelled. A running job whose lease
    has expired (its process died) is taken again by another process and started over."""

    __tablename__ = "export_job"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    client_id: Mapped[str] = mapped_column(String(128), nullable=False)
    principal: Mapped[str] = mapped_column(Text, nullable=False)  # JSON: the token's role, scope, context
    level: Mapped[str] = mapped_column(String(16), nullable=False)  # system | patient | group
    group_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    types: Mapped[str] = mapped_column(Text, nullable=False)  # comma-separated; empty: every type
    since: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    type_filters: Mapped[str] = mapped_column(Text, nullable=False)  # JSON {type: query}
    request_url: Mapped[str] = mapped_column(Text, nullable=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False)
    progress: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    lease_owner: Mapped[str | None] = mapped_column(String(128), nullable=True)
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    created: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    finished: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    files: Mapped[str] = mapped_column(Text, nullable=False, default="[]")  # JSON [{type, name, count}]
    __table_args__ = (Index("ix_export_job_status", "status", "created"),)
