"""Field-level encryption: each version's wrapped data key, blind-index rows, blind-index root keys.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from fhir_api.db import UTCDateTime

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("resource_version") as batch:
        batch.add_column(sa.Column("key_id", sa.String(128)))
        batch.add_column(sa.Column("data_key", sa.Text))
    op.create_index("ix_resource_version_key", "resource_version", ["key_id"])
    op.create_table(
        "search_blind",
        sa.Column("res_type", sa.String(64), nullable=False),
        sa.Column("res_id", sa.String(64), nullable=False),
        sa.Column("param", sa.String(100), nullable=False),
        sa.Column("hash", sa.BigInteger, nullable=False),
        sa.Column("gen", sa.Integer, nullable=False),
    )
    op.create_index("ix_search_blind_hash", "search_blind", ["hash"])
    op.create_index("ix_search_blind_res", "search_blind", ["res_type", "res_id"])
    op.create_table(
        "crypto_index_key",
        sa.Column("gen", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("key_id", sa.String(128), nullable=False),
        sa.Column("wrapped", sa.Text, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("rebuilt_to", sa.Text),
    )


def downgrade() -> None:
    op.drop_table("crypto_index_key")
    op.drop_table("search_blind")
    op.drop_index("ix_resource_version_key", "resource_version")
    with op.batch_alter_table("resource_version") as batch:
        batch.drop_column("data_key")
        batch.drop_column("key_id")
