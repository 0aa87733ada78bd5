"""Search index rows without a surrogate key.

Nothing addresses an index row by itself: rows are found through their value and resource indexes and
replaced per resource. On PostgreSQL the bigserial key cost a sequence call and one more btree insert per
row (dozens per write); on SQLite the column only aliased the implicit rowid.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-24
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

TABLES = (
    "search_string",
    "search_token",
    "search_date",
    "search_number",
    "search_quantity",
    "search_reference",
    "search_uri",
    "search_composite",
)


def upgrade() -> None:
    for table in TABLES:
        with op.batch_alter_table(table) as batch:
            batch.drop_column("row_id")


def downgrade() -> None:
    raise NotImplementedError("index rows cannot regain stable keys; restore from a backup")
