"""points: referrals (attributions and their course)

Revision ID: 0021
Revises: 0020
Create Date: 2026-12-01 18:50:20.117544
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = "0021"
down_revision: str | None = "0020"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "referrals",
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column("tenant_id", sa.UUID(), nullable=False),
        sa.Column("invitee_id", sa.UUID(), nullable=False),
        sa.Column("inviter_id", sa.UUID(), nullable=True),
        sa.Column("level2_inviter_id", sa.UUID(), nullable=True),
        sa.Column("code", sa.String(length=16), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("event_key", sa.String(length=100), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.String(length=64), nullable=True),
        sa.Column("device_hash", sa.String(length=64), nullable=True),
        sa.Column("ip_hash", sa.String(length=64), nullable=True),
        sa.Column("attributed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("qualified_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("rewarded_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "status IN ('pending', 'qualified', 'rewarded', 'revoked', 'refused')",
            name=op.f("ck_referrals_status_known"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_referrals")),
    )
    op.create_index(
        "ix_referrals_inviter",
        "referrals",
        ["tenant_id", "inviter_id", "attributed_at"],
        unique=False,
    )
    op.create_index("uq_referrals_event", "referrals", ["tenant_id", "event_key"], unique=True)
    op.create_index(
        "uq_referrals_invitee",
        "referrals",
        ["tenant_id", "invitee_id"],
        unique=True,
        postgresql_where="status <> 'refused'",
    )


def downgrade() -> None:
    op.drop_index(
        "uq_referrals_invitee", table_name="referrals", postgresql_where="status <> 'refused'"
    )
    op.drop_index("uq_referrals_event", table_name="referrals")
    op.drop_index("ix_referrals_inviter", table_name="referrals")
    op.drop_table("referrals")
