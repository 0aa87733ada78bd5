"""Per-version owners: whose records each stored version belongs to (resources.owners).

Access rules used to judge old versions (vread, history) by the current version's search index rows, so
a resource moved from patient B to patient A showed A every version, B's included. The backfill gives
every existing version its owners:

- current versions: copied from their search_reference rows (exactly what the search index decided, with
  references under the server's own base URL resolved);
- older versions: read from their stored bodies with the server's own extraction (the base URL is not
  known here: an absolute self-reference makes no owner, which hides the version, never shows it);
- deletions: the owners of the version they deleted.

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-24
"""

from __future__ import annotations

import json

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

BATCH = 1000


def upgrade() -> None:
    op.create_table(
        "resource_version_owner",
        sa.Column("res_type", sa.String(64), primary_key=True),
        sa.Column("res_id", sa.String(64), primary_key=True),
        sa.Column("version", sa.Integer, primary_key=True),
        sa.Column("owner_type", sa.String(64), primary_key=True),
        sa.Column("owner_id", sa.String(64), primary_key=True),
    )
    op.create_index(
        "ix_resource_version_owner_owner", "resource_version_owner", ["owner_id", "owner_type", "res_type"]
    )
    _backfill(op.get_bind())


def downgrade() -> None:
    op.drop_index("ix_resource_version_owner_owner", "resource_version_owner")
    op.drop_table("resource_version_owner")


def _backfill(conn: sa.Connection) -> None:
    from resources import owners

    meta = sa.MetaData()
    owner = sa.Table("resource_version_owner", meta, autoload_with=conn)
    version = sa.Table("resource_version", meta, autoload_with=conn)
    resource = sa.Table("resource", meta, autoload_with=conn)
    reference = sa.Table("search_reference", meta, autoload_with=conn)
    columns = ["res_type", "res_id", "version", "owner_type", "owner_id"]
    types = sorted(t for t in owners.compartments()[owners.PATIENT] if owners.owner_params(t))

    # current versions, from the search index
    for res_type in types:
        links = [
            sa.and_(reference.c.param == param, reference.c.target_type.in_(owner_types))
            for param, owner_types in owners.owner_params(res_type).items()
        ]
        rows = (
            sa.select(
                reference.c.res_type,
                reference.c.res_id,
                resource.c.version,
                reference.c.target_type,
                reference.c.target_id,
            )
            .join(
                resource,
                sa.and_(resource.c.res_type == reference.c.res_type, resource.c.res_id == reference.c.res_id),
            )
            .where(
                reference.c.res_type == res_type,
                sa.or_(*links),
                reference.c.target_id.is_not(None),
                resource.c.deleted.is_(False),
            )
            .distinct()  # one target can come through several parameters
        )
        conn.execute(sa.insert(owner).from_select(columns, rows))

    # older versions, from their bodies
    current = sa.exists().where(
        resource.c.res_type == version.c.res_type,
        resource.c.res_id == version.c.res_id,
        resource.c.version == version.c.version,
    )
    after = 0
    while True:
        batch = conn.execute(
            sa.select(version.c.seq, version.c.res_type, version.c.res_id, version.c.version, version.c.body)
            .where(
                version.c.seq > after,
                version.c.res_type.in_(types),
                version.c.deleted.is_(False),
                version.c.body.is_not(None),
                ~current,
            )
            .order_by(version.c.seq)
            .limit(BATCH)
        ).all()
        if not batch:
            break
        out = []
        for _, res_type, res_id, number, body in batch:
            refs = owners.references(res_type, json.loads(body))
            out += owners.rows(res_type, res_id, number, refs)
        if out:
            conn.execute(sa.insert(owner), out)
        after = batch[-1][0]

    # deletions: the owners of the version each deleted
    deleted = sa.alias(version, "deleted")
    previous = sa.alias(owner, "previous")
    rows = sa.select(
        previous.c.res_type,
        previous.c.res_id,
        deleted.c.version,
        previous.c.owner_type,
        previous.c.owner_id,
    ).join(
        deleted,
        sa.and_(
            deleted.c.res_type == previous.c.res_type,
            deleted.c.res_id == previous.c.res_id,
            deleted.c.version == previous.c.version + 1,
            deleted.c.deleted.is_(True),
        ),
    )
    conn.execute(sa.insert(owner).from_select(columns, rows))
