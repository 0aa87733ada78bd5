"""Per-client network allowlists.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("auth_client") as batch:
        batch.add_column(sa.Column("allowed_networks", sa.Text, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("auth_client") as batch:
        batch.drop_column("allowed_networks")
