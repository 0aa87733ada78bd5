"""Search index tables, one per search parameter type.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from fhir_api.db import UTCDateTime

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

N = 255  # resources.search.models.INDEXED_CHARS at the time of this migration


def _table(name: str, *columns: sa.Column) -> None:
    op.create_table(
        name,
        sa.Column(
            "row_id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("res_type", sa.String(64), nullable=False),
        sa.Column("res_id", sa.String(64), nullable=False),
        sa.Column("param", sa.String(100), nullable=False),
        *columns,
    )
    op.create_index(
        f"ix_{name}_res", name, ["res_type", "res_id"] + (["param"] if name == "search_reference" else [])
    )


def upgrade() -> None:
    _table(
        "search_string",
        sa.Column("value_norm", sa.String(N), nullable=False),
        sa.Column("value_exact", sa.Text, nullable=False),
    )
    op.create_index(
        "ix_search_string_value",
        "search_string",
        ["res_type", "param", "value_norm"],
        postgresql_ops={"value_norm": "text_pattern_ops"},
    )

    _table(
        "search_token",
        sa.Column("system", sa.String(N)),
        sa.Column("code", sa.String(N)),
        sa.Column("text_norm", sa.String(N)),
        sa.Column("type_system", sa.String(N)),
        sa.Column("type_code", sa.String(N)),
    )
    op.create_index("ix_search_token_code", "search_token", ["res_type", "param", "code", "system"])
    op.create_index("ix_search_token_system", "search_token", ["res_type", "param", "system"])

    _table(
        "search_date",
        sa.Column("low", UTCDateTime, nullable=False),
        sa.Column("high", UTCDateTime, nullable=False),
    )
    op.create_index("ix_search_date_low", "search_date", ["res_type", "param", "low"])
    op.create_index("ix_search_date_high", "search_date", ["res_type", "param", "high"])

    _table("search_number", sa.Column("value", sa.Float, nullable=False))
    op.create_index("ix_search_number_value", "search_number", ["res_type", "param", "value"])

    _table(
        "search_quantity",
        sa.Column("value", sa.Float, nullable=False),
        sa.Column("system", sa.String(N)),
        sa.Column("code", sa.String(N)),
        sa.Column("unit", sa.String(N)),
    )
    op.create_index("ix_search_quantity_value", "search_quantity", ["res_type", "param", "value"])

    _table(
        "search_reference",
        sa.Column("target_type", sa.String(64)),
        sa.Column("target_id", sa.String(64)),
        sa.Column("url", sa.String(N)),
    )
    op.create_index(
        "ix_search_reference_target", "search_reference", ["target_id", "target_type", "param", "res_type"]
    )
    op.create_index("ix_search_reference_url", "search_reference", ["res_type", "param", "url"])

    _table("search_uri", sa.Column("value", sa.String(N), nullable=False))
    op.create_index(
        "ix_search_uri_value",
        "search_uri",
        ["res_type", "param", "value"],
        postgresql_ops={"value": "text_pattern_ops"},
    )


def downgrade() -> None:
    for name in (
        "search_uri",
        "search_reference",
        "search_quantity",
        "search_number",
        "search_date",
        "search_token",
        "search_string",
    ):
        op.drop_table(name)
