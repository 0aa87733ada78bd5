"""Authorization: registered clients, used client assertions (replay cache), revoked tokens.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from fhir_api.db import UTCDateTime

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "auth_client",
        sa.Column("client_id", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("role", sa.String(32), nullable=False),
        sa.Column("scope", sa.Text, nullable=False),
        sa.Column("jwks", sa.Text),
        sa.Column("jwks_url", sa.String(2048)),
        sa.Column("organization", sa.String(128)),
        sa.Column("redirect_uris", sa.Text),
        sa.Column("public", sa.Boolean, nullable=False),
        sa.Column("disabled", sa.Boolean, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
    )
    op.create_table(
        "auth_used_assertion",
        sa.Column("key", sa.String(400), primary_key=True),
        sa.Column("expires_at", UTCDateTime, nullable=False),
    )
    op.create_index("ix_auth_used_assertion_expires", "auth_used_assertion", ["expires_at"])
    op.create_table(
        "auth_revoked_token",
        sa.Column("jti", sa.String(64), primary_key=True),
        sa.Column("expires_at", UTCDateTime, nullable=False),
    )
    op.create_index("ix_auth_revoked_token_expires", "auth_revoked_token", ["expires_at"])


def downgrade() -> None:
    op.drop_table("auth_revoked_token")
    op.drop_table("auth_used_assertion")
    op.drop_table("auth_client")
