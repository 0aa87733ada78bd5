"""Subscriptions: delivery state, change outbox, delivery queue and attempt log.

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from fhir_api.db import UTCDateTime

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

BigIntId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "subscription_state",
        sa.Column("sub_id", sa.String(64), primary_key=True),
        sa.Column("owner", sa.String(64), nullable=False),
        sa.Column("principal", sa.Text, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("criteria_type", sa.String(64), nullable=False),
        sa.Column("criteria", sa.Text, nullable=False),
        sa.Column("endpoint", sa.String(2048), nullable=False),
        sa.Column("content", sa.String(16), nullable=False),
        sa.Column("mime", sa.String(64)),
        sa.Column("data_key", sa.Text, nullable=False),
        sa.Column("secret", sa.Text, nullable=False),
        sa.Column("old_secret", sa.Text),
        sa.Column("old_until", UTCDateTime),
        sa.Column("headers", sa.Text),
        sa.Column("next_seq", sa.Integer, nullable=False),
        sa.Column("failures", sa.Integer, nullable=False),
        sa.Column("error", sa.Text),
        sa.Column("due", UTCDateTime),
        sa.Column("lease_owner", sa.String(128)),
        sa.Column("lease_until", UTCDateTime),
        sa.Column("created", UTCDateTime, nullable=False),
        sa.Column("end", UTCDateTime),
    )
    op.create_index("ix_subscription_state_type", "subscription_state", ["criteria_type", "status"])
    op.create_index("ix_subscription_state_due", "subscription_state", ["due"])
    op.create_index("ix_subscription_state_owner", "subscription_state", ["owner"])
    op.create_table(
        "subscription_change",
        sa.Column("seq", BigIntId, primary_key=True, autoincrement=True),
        sa.Column("res_type", sa.String(64), nullable=False),
        sa.Column("res_id", sa.String(64), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("deleted", sa.Boolean, nullable=False),
        sa.Column("created", UTCDateTime, nullable=False),
    )
    op.create_table(
        "subscription_delivery",
        sa.Column("id", BigIntId, primary_key=True, autoincrement=True),
        sa.Column("sub_id", sa.String(64), nullable=False),
        sa.Column("event_number", sa.Integer, nullable=False),
        sa.Column("res_type", sa.String(64), nullable=False),
        sa.Column("res_id", sa.String(64), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("event", sa.String(8), nullable=False),
        sa.Column("replay", sa.Boolean, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("next_attempt", UTCDateTime),
        sa.Column("last_code", sa.Integer),
        sa.Column("last_error", sa.Text),
        sa.Column("latency_ms", sa.Integer),
        sa.Column("created", UTCDateTime, nullable=False),
        sa.Column("finished", UTCDateTime),
    )
    op.create_index("ix_subscription_delivery_queue", "subscription_delivery", ["sub_id", "status", "id"])
    op.create_index("ix_subscription_delivery_number", "subscription_delivery", ["sub_id", "event_number"])
    op.create_index(
        "ix_subscription_delivery_resource", "subscription_delivery", ["sub_id", "res_type", "res_id"]
    )
    op.create_table(
        "subscription_attempt",
        sa.Column("id", BigIntId, primary_key=True, autoincrement=True),
        sa.Column("delivery_id", BigIntId, nullable=False),
        sa.Column("at", UTCDateTime, nullable=False),
        sa.Column("code", sa.Integer),
        sa.Column("error", sa.Text),
        sa.Column("latency_ms", sa.Integer, nullable=False),
    )
    op.create_index("ix_subscription_attempt_delivery", "subscription_attempt", ["delivery_id", "id"])


def downgrade() -> None:
    for table in (
        "subscription_attempt",
        "subscription_delivery",
        "subscription_change",
        "subscription_state",
    ):
        op.drop_table(table)
