"""App Launch: users, authorization codes, refresh tokens, EHR launch contexts.

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from fhir_api.db import UTCDateTime

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "auth_user",
        sa.Column("username", sa.String(64), primary_key=True),
        sa.Column("password_hash", sa.Text, nullable=False),
        sa.Column("role", sa.String(32), nullable=False),
        sa.Column("fhir_user", sa.String(128), nullable=False),
        sa.Column("name", sa.String(200)),
        sa.Column("disabled", sa.Boolean, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
    )
    op.create_table(
        "auth_code",
        sa.Column("code_hash", sa.String(64), primary_key=True),
        sa.Column("client_id", sa.String(64), nullable=False),
        sa.Column("username", sa.String(64), nullable=False),
        sa.Column("redirect_uri", sa.Text, nullable=False),
        sa.Column("scope", sa.Text, nullable=False),
        sa.Column("code_challenge", sa.String(128), nullable=False),
        sa.Column("code_challenge_method", sa.String(8), nullable=False),
        sa.Column("nonce", sa.String(256)),
        sa.Column("patient", sa.String(64)),
        sa.Column("encounter", sa.String(64)),
        sa.Column("expires_at", UTCDateTime, nullable=False),
    )
    op.create_index("ix_auth_code_expires", "auth_code", ["expires_at"])
    op.create_table(
        "auth_refresh_token",
        sa.Column("token_hash", sa.String(64), primary_key=True),
        sa.Column("client_id", sa.String(64), nullable=False),
        sa.Column("username", sa.String(64), nullable=False),
        sa.Column("scope", sa.Text, nullable=False),
        sa.Column("patient", sa.String(64)),
        sa.Column("encounter", sa.String(64)),
        sa.Column("expires_at", UTCDateTime, nullable=False),
        sa.Column("revoked", sa.Boolean, nullable=False),
    )
    op.create_index("ix_auth_refresh_token_expires", "auth_refresh_token", ["expires_at"])
    op.create_table(
        "auth_launch",
        sa.Column("launch_id", sa.String(64), primary_key=True),
        sa.Column("patient", sa.String(64)),
        sa.Column("encounter", sa.String(64)),
        sa.Column("created_by", sa.String(64), nullable=False),
        sa.Column("expires_at", UTCDateTime, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("auth_launch")
    op.drop_index("ix_auth_refresh_token_expires", "auth_refresh_token")
    op.drop_table("auth_refresh_token")
    op.drop_index("ix_auth_code_expires", "auth_code")
    op.drop_table("auth_code")
    op.drop_table("auth_user")
