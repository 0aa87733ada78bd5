"""Extended statistics on the search index tables (PostgreSQL).

The planner otherwise multiplies the selectivities of res_type, param, code and system as if independent
and underestimates common codes by 20x or more; with these it walks the sort index and stops at the page
size instead of sorting every match.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

STATISTICS = {
    "st_search_token": "res_type, param, code, system FROM search_token",
    "st_search_reference": "res_type, param, target_type FROM search_reference",
    "st_search_string": "res_type, param FROM search_string",
    "st_search_date": "res_type, param FROM search_date",
    "st_search_quantity": "res_type, param, code FROM search_quantity",
    "st_search_uri": "res_type, param FROM search_uri",
    "st_search_composite": "res_type, param, c1_code FROM search_composite",
}


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for name, target in STATISTICS.items():
        op.execute(f"CREATE STATISTICS IF NOT EXISTS {name} (dependencies, mcv) ON {target}")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for name in STATISTICS:
        op.execute(f"DROP STATISTICS IF EXISTS {name}")
