"""points: the course of referrals (transitions, rewards, reviews, settings)

Revision ID: 0022
Revises: 0021
Create Date: 2026-12-01 20:07:12.380897
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0022"
down_revision: str | None = "0021"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "referral_reviews",
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column("tenant_id", sa.UUID(), nullable=False),
        sa.Column("inviter_id", sa.UUID(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("trigger", sa.String(length=32), nullable=False),
        sa.Column(
            "details",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        sa.Column("opened_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("decided_by", sa.String(length=200), nullable=True),
        sa.Column("decision_reason", sa.String(length=500), nullable=True),
        sa.CheckConstraint(
            "status IN ('open', 'approved', 'rejected')",
            name=op.f("ck_referral_reviews_status_known"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_referral_reviews")),
    )
    op.create_index(
        "ix_referral_reviews_tenant",
        "referral_reviews",
        ["tenant_id", "status", "id"],
        unique=False,
    )
    op.create_index(
        "uq_referral_reviews_open",
        "referral_reviews",
        ["tenant_id", "inviter_id"],
        unique=True,
        postgresql_where="status = 'open'",
    )
    op.create_table(
        "referral_rewards",
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column("tenant_id", sa.UUID(), nullable=False),
        sa.Column("reward_key", sa.String(length=120), nullable=False),
        sa.Column("purpose", sa.String(length=16), nullable=False),
        sa.Column("referral_id", sa.BigInteger(), nullable=True),
        sa.Column("contact_id", sa.UUID(), nullable=False),
        sa.Column("tier_count", sa.Integer(), nullable=True),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("points", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("value_fen", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("sku", sa.String(length=64), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("entry_id", sa.BigInteger(), nullable=True),
        sa.Column("clawback_entry_id", sa.BigInteger(), nullable=True),
        sa.Column("clawback_points", sa.BigInteger(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("granted_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("clawed_back_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "kind IN ('points', 'coupon', 'item')", name=op.f("ck_referral_rewards_kind")
        ),
        sa.CheckConstraint(
            "status IN ('granted', 'owed', 'clawed_back')",
            name=op.f("ck_referral_rewards_status_known"),
        ),
        sa.ForeignKeyConstraint(
            ["referral_id"],
            ["referrals.id"],
            name=op.f("fk_referral_rewards_referral_id_referrals"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_referral_rewards")),
    )
    op.create_index(
        "ix_referral_rewards_owed",
        "referral_rewards",
        ["tenant_id"],
        unique=False,
        postgresql_where="status = 'owed'",
    )
    op.create_index(
        "ix_referral_rewards_referral", "referral_rewards", ["referral_id"], unique=False
    )
    op.create_index(
        "uq_referral_rewards_key", "referral_rewards", ["tenant_id", "reward_key"], unique=True
    )
    op.create_table(
        "referral_settings",
        sa.Column("tenant_id", sa.UUID(), nullable=False),
        sa.Column("config", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_referral_settings_tenant_id_tenants")
        ),
        sa.PrimaryKeyConstraint("tenant_id", name=op.f("pk_referral_settings")),
    )
    op.create_table(
        "referral_transitions",
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column("tenant_id", sa.UUID(), nullable=False),
        sa.Column("referral_id", sa.BigInteger(), nullable=False),
        sa.Column("from_status", sa.String(length=16), nullable=True),
        sa.Column("to_status", sa.String(length=16), nullable=False),
        sa.Column("cause", sa.String(length=64), nullable=False),
        sa.Column(
            "details",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        sa.Column("actor", sa.String(length=200), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["referral_id"],
            ["referrals.id"],
            name=op.f("fk_referral_transitions_referral_id_referrals"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_referral_transitions")),
    )
    op.create_index(
        "ix_referral_transitions_referral", "referral_transitions", ["referral_id"], unique=False
    )
    op.add_column("referrals", sa.Column("order_id", sa.String(length=128), nullable=True))
    op.add_column("referrals", sa.Column("order_amount_fen", sa.BigInteger(), nullable=True))
    op.add_column(
        "referrals", sa.Column("refunded_fen", sa.BigInteger(), server_default="0", nullable=False)
    )
    op.add_column("referrals", sa.Column("hold_until", sa.DateTime(timezone=True), nullable=True))
    op.create_index(
        "ix_referrals_hold",
        "referrals",
        ["hold_until"],
        unique=False,
        postgresql_where="status = 'qualified'",
    )


def downgrade() -> None:
    op.drop_index(
        "ix_referrals_hold", table_name="referrals", postgresql_where="status = 'qualified'"
    )
    op.drop_column("referrals", "hold_until")
    op.drop_column("referrals", "refunded_fen")
    op.drop_column("referrals", "order_amount_fen")
    op.drop_column("referrals", "order_id")
    op.drop_index("ix_referral_transitions_referral", table_name="referral_transitions")
    op.drop_table("referral_transitions")
    op.drop_table("referral_settings")
    op.drop_index("uq_referral_rewards_key", table_name="referral_rewards")
    op.drop_index("ix_referral_rewards_referral", table_name="referral_rewards")
    op.drop_index(
        "ix_referral_rewards_owed",
        table_name="referral_rewards",
        postgresql_where="status = 'owed'",
    )
    op.drop_table("referral_rewards")
    op.drop_index(
        "uq_referral_reviews_open",
        table_name="referral_reviews",
        postgresql_where="status = 'open'",
    )
    op.drop_index("ix_referral_reviews_tenant", table_name="referral_reviews")
    op.drop_table("referral_reviews")
