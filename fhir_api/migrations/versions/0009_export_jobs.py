"""Bulk export jobs.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from fhir_api.db import UTCDateTime

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "export_job",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("client_id", sa.String(128), nullable=False),
        sa.Column("principal", sa.Text, nullable=False),
        sa.Column("level", sa.String(16), nullable=False),
        sa.Column("group_id", sa.String(64)),
        sa.Column("types", sa.Text, nullable=False),
        sa.Column("since", UTCDateTime),
        sa.Column("type_filters", sa.Text, nullable=False),
        sa.Column("request_url", sa.Text, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("progress", sa.Integer, nullable=False, server_default="0"),
        sa.Column("lease_owner", sa.String(128)),
        sa.Column("lease_until", UTCDateTime),
        sa.Column("created", UTCDateTime, nullable=False),
        sa.Column("finished", UTCDateTime),
        sa.Column("error", sa.Text),
        sa.Column("files", sa.Text, nullable=False, server_default="[]"),
    )
    op.create_index("ix_export_job_status", "export_job", ["status", "created"])


def downgrade() -> None:
    op.drop_table("export_job")
