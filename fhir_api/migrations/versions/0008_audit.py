"""Audit log: events, links, hash chain and checkpoints, append-only by trigger (and by owner on PostgreSQL).

On PostgreSQL the four tables are handed to a NOLOGIN role ``fhir_audit_owner`` when the migrating user may
create roles; the application role (``FHIR_DB_APP_ROLE``, else the migrating user when it is not the owner)
keeps only INSERT and SELECT. Triggers refuse UPDATE, DELETE and TRUNCATE whoever asks, superusers included,
unless they disable the triggers first (which only the owner or a superuser can do).

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-24
"""

from __future__ import annotations

import os

import sqlalchemy as sa
from alembic import op

from fhir_api.db import UTCDateTime

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

TABLES = ("audit_event", "audit_link", "audit_chain", "audit_checkpoint")
OWNER = "fhir_audit_owner"
POS = sa.BigInteger().with_variant(sa.Integer, "sqlite")  # SQLite: INTEGER PRIMARY KEY is the rowid


def upgrade() -> None:
    bind = op.get_bind()
    pg = bind.dialect.name == "postgresql"
    op.create_table(
        "audit_event",
        # PostgreSQL: the key includes ``recorded``, as a table partitioned by time requires
        sa.Column("pos", POS, primary_key=True, autoincrement=True),
        sa.Column("event_id", sa.String(64), nullable=False),
        sa.Column("recorded", UTCDateTime, nullable=False, primary_key=pg),
        sa.Column(
            "txid",
            sa.BigInteger,
            server_default=sa.text("(pg_current_xact_id()::text)::bigint") if pg else None,
        ),
        sa.Column("type_code", sa.String(32), nullable=False),
        sa.Column("subtype", sa.String(64), nullable=False),
        sa.Column("action", sa.String(1), nullable=False),
        sa.Column("outcome", sa.String(2), nullable=False),
        sa.Column("client_id", sa.String(128)),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("mac", sa.String(64)),
    )
    op.create_index("ix_audit_event_id", "audit_event", ["event_id"])
    op.create_index("ix_audit_event_recorded", "audit_event", ["recorded"])
    op.create_index("ix_audit_event_txid", "audit_event", ["txid", "pos"])
    op.create_index("ix_audit_event_client", "audit_event", ["client_id", "recorded"])
    op.create_table(
        "audit_link",
        sa.Column("event_id", sa.String(64), primary_key=True),
        sa.Column("kind", sa.String(8), primary_key=True),
        sa.Column("ref", sa.String(256), primary_key=True),
        sa.Column("recorded", UTCDateTime, nullable=False, primary_key=True),
    )
    op.create_index("ix_audit_link_ref", "audit_link", ["kind", "ref", "recorded"])
    op.create_table(
        "audit_chain",
        sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("pos", sa.BigInteger, nullable=False),
        sa.Column("recorded", UTCDateTime, nullable=False, primary_key=True),
        sa.UniqueConstraint("pos", "recorded", name="uq_audit_chain_pos"),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.Column("txid", sa.BigInteger),
    )
    op.create_table(
        "audit_checkpoint",
        sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.Column("created", UTCDateTime, nullable=False),
        sa.Column("key_id", sa.String(128), nullable=False),
        sa.Column("jws", sa.Text, nullable=False),
    )
    if pg:
        _postgresql_append_only()
    else:
        for table in TABLES:
            for verb in ("UPDATE", "DELETE"):
                op.execute(
                    f"CREATE TRIGGER {table}_no_{verb.lower()} BEFORE {verb} ON {table} "
                    f"BEGIN SELECT RAISE(ABORT, '{table} is append-only'); END"
                )


def _postgresql_append_only() -> None:
    op.execute(
        """
        CREATE OR REPLACE FUNCTION fhir_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION '% is append-only: % refused', TG_TABLE_NAME, TG_OP
                USING ERRCODE = 'insufficient_privilege';
        END $$
        """
    )
    for table in TABLES:
        op.execute(
            f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
            "FOR EACH ROW EXECUTE FUNCTION fhir_audit_append_only()"
        )
        op.execute(
            f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
            "FOR EACH STATEMENT EXECUTE FUNCTION fhir_audit_append_only()"
        )
    app_role = os.environ.get("FHIR_DB_APP_ROLE") or ""
    # Hand the tables to a role nobody logs in as, when this user may: the app role then cannot drop the
    # triggers or grant itself more. Without CREATEROLE (or superuser) the triggers alone guard the tables.
    op.execute(
        f"""
        DO $$
        DECLARE
            app text := coalesce(nullif('{app_role}', ''), current_user);
            t text;
        BEGIN
            IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{OWNER}') THEN
                BEGIN
                    CREATE ROLE {OWNER} NOLOGIN;
                EXCEPTION WHEN insufficient_privilege THEN
                    RAISE WARNING 'cannot create role {OWNER}: audit tables stay owned by %', current_user;
                    RETURN;
                END;
            END IF;
            FOREACH t IN ARRAY ARRAY{list(TABLES)!r} LOOP
                BEGIN
                    EXECUTE format('ALTER TABLE %I OWNER TO {OWNER}', t);
                    EXECUTE format('REVOKE ALL ON %I FROM PUBLIC', t);
                    EXECUTE format('REVOKE ALL ON %I FROM %I', t, app);
                    EXECUTE format('GRANT SELECT, INSERT ON %I TO %I', t, app);
                EXCEPTION WHEN insufficient_privilege THEN
                    RAISE WARNING 'cannot hand % to {OWNER}: it stays owned by %', t, current_user;
                END;
            END LOOP;
            BEGIN
                EXECUTE format('GRANT USAGE ON SEQUENCE audit_event_pos_seq TO %I', app);
            EXCEPTION WHEN insufficient_privilege THEN NULL;
            END;
        END $$
        """
    )


def downgrade() -> None:
    bind = op.get_bind()
    for table in reversed(TABLES):
        op.drop_table(table)
    if bind.dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS fhir_audit_append_only()")
