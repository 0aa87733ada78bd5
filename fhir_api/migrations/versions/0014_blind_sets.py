"""String and token blind hashes as one array per resource on PostgreSQL (``search_blind_set``, GIN).

Existing PostgreSQL rows of string and token parameters move from ``search_blind`` into the new table;
date buckets stay rows. SQLite keeps every hash in ``search_blind`` and the new table stays empty there.

Revision ID: 0014
Revises: 0013
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import ARRAY

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "search_blind_set",
        sa.Column("res_type", sa.String(64), primary_key=True),
        sa.Column("res_id", sa.String(64), primary_key=True),
        sa.Column("gen", sa.Integer, nullable=False),
        sa.Column("hashes", ARRAY(sa.BigInteger).with_variant(sa.JSON(), "sqlite"), nullable=False),
    )
    op.create_index(
        "ix_search_blind_set_hashes",
        "search_blind_set",
        ["hashes"],
        postgresql_using="gin",
        postgresql_with={"fastupdate": "on", "gin_pending_list_limit": 1024},
    )
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    from resources.search.indexer import in_set

    pairs = bind.execute(sa.text("SELECT DISTINCT res_type, param FROM search_blind")).all()
    moving = [(t, p) for t, p in pairs if in_set(t, p)]
    if not moving:
        return
    chosen = "(res_type, param) IN (SELECT * FROM unnest(CAST(:types AS text[]), CAST(:params AS text[])))"
    params = {"types": [t for t, _ in moving], "params": [p for _, p in moving]}
    # A resource's rows share one generation, but a rotation cut short could leave two: the oldest is kept,
    # so the rebuild still finds the resource stale.
    bind.execute(
        sa.text(
            "INSERT INTO search_blind_set (res_type, res_id, gen, hashes) "
            "SELECT res_type, res_id, min(gen), array_agg(DISTINCT hash ORDER BY hash) "
            f"FROM search_blind WHERE {chosen} GROUP BY res_type, res_id"
        ),
        params,
    )
    bind.execute(sa.text(f"DELETE FROM search_blind WHERE {chosen}"), params)


def downgrade() -> None:
    # The arrays do not say which parameter each hash belongs to: after a downgrade on PostgreSQL, run
    # `fhir-api search reindex` to rebuild search_blind.
    op.drop_index("ix_search_blind_set_hashes", "search_blind_set")
    op.drop_table("search_blind_set")
