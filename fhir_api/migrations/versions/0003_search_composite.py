"""Composite search parameter index.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from fhir_api.db import UTCDateTime

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

N = 255


def upgrade() -> None:
    op.create_table(
        "search_composite",
        sa.Column(
            "row_id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("res_type", sa.String(64), nullable=False),
        sa.Column("res_id", sa.String(64), nullable=False),
        sa.Column("param", sa.String(100), nullable=False),
        sa.Column("c1_system", sa.String(N)),
        sa.Column("c1_code", sa.String(N)),
        sa.Column("c2_system", sa.String(N)),
        sa.Column("c2_code", sa.String(N)),
        sa.Column("c2_unit", sa.String(N)),
        sa.Column("c2_value", sa.Float),
        sa.Column("c2_low", UTCDateTime),
        sa.Column("c2_high", UTCDateTime),
        sa.Column("c2_text", sa.String(N)),
        sa.Column("c3_value", sa.Float),
    )
    op.create_index(
        "ix_search_composite_c1", "search_composite", ["res_type", "param", "c1_code", "c1_system"]
    )
    op.create_index("ix_search_composite_res", "search_composite", ["res_type", "res_id"])


def downgrade() -> None:
    op.drop_table("search_composite")
