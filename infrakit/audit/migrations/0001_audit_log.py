"""The append-only, hash-chained audit log.

Revision ID: 0001_audit_log
Revises:
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001_audit_log"
down_revision = None
branch_labels = None
depends_on = None

TABLE = "infrakit_audit_log"


def upgrade() -> None:
    op.create_table(
        TABLE,
        # Insertion order, which is also chain order: writers are serialised.
        sa.Column(
            "seq",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("timestamp", sa.DateTime(timezone=True), nullable=False),
        sa.Column("action", sa.String(128), nullable=False),
        sa.Column("resource_type", sa.String(128), nullable=False),
        sa.Column("result", sa.String(64), nullable=False),
        sa.Column("resource_id", sa.String(256), nullable=True),
        sa.Column("user_id", sa.String(256), nullable=True),
        sa.Column("details", sa.Text(), nullable=False),
        sa.Column("ip_address", sa.String(64), nullable=True),
        sa.Column("user_agent", sa.Text(), nullable=True),
        sa.Column("request_id", sa.String(128), nullable=True),
        sa.Column("trace_id", sa.String(32), nullable=True),
        sa.Column("prev_hash", sa.String(64), nullable=True),
        sa.Column("hash", sa.String(64), nullable=True),
        sa.UniqueConstraint("id", name=f"uq_{TABLE}_id"),
    )
    op.create_index(f"ix_{TABLE}_timestamp_id", TABLE, ["timestamp", "id"])
    op.create_index(f"ix_{TABLE}_user_id_timestamp", TABLE, ["user_id", "timestamp"])
    op.create_index(f"ix_{TABLE}_action_timestamp", TABLE, ["action", "timestamp"])
    op.create_index(f"ix_{TABLE}_resource", TABLE, ["resource_type", "resource_id"])


def downgrade() -> None:
    op.drop_table(TABLE)
