"""campaigns: enrolments and entries (re-entry policy)

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-01 16:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "campaign_enrolments",
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("campaign_id", sa.BigInteger(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("contact_id", sa.Uuid(), nullable=False),
        sa.Column("occurrence", sa.String(length=200), nullable=False),
        sa.Column("status", sa.String(length=16), server_default="active", nullable=False),
        sa.Column("step_id", sa.String(length=64), nullable=False),
        sa.Column("due_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column(
            "entered_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False
        ),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("end_reason", sa.Text(), nullable=True),
        sa.CheckConstraint(
            "status IN ('active', 'waiting', 'done', 'exited', 'converted')",
            name=op.f("ck_campaign_enrolments_status_known"),
        ),
        sa.ForeignKeyConstraint(
            ["campaign_id"],
            ["campaigns.id"],
            name=op.f("fk_campaign_enrolments_campaign_id_campaigns"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_campaign_enrolments")),
    )
    op.create_index(
        "uq_campaign_enrolments_occurrence",
        "campaign_enrolments",
        ["campaign_id", "contact_id", "occurrence"],
        unique=True,
    )
    op.create_index(
        "ix_campaign_enrolments_due",
        "campaign_enrolments",
        ["due_at"],
        unique=False,
        postgresql_where=sa.text("status = 'active'"),
    )
    op.create_index(
        "ix_campaign_enrolments_contact",
        "campaign_enrolments",
        ["tenant_id", "contact_id"],
        unique=False,
    )
    op.create_table(
        "campaign_entries",
        sa.Column("campaign_id", sa.BigInteger(), nullable=False),
        sa.Column("contact_id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("last_entered_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["campaign_id"],
            ["campaigns.id"],
            name=op.f("fk_campaign_entries_campaign_id_campaigns"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("campaign_id", "contact_id", name=op.f("pk_campaign_entries")),
    )


def downgrade() -> None:
    op.drop_table("campaign_entries")
    op.drop_index("ix_campaign_enrolments_contact", table_name="campaign_enrolments")
    op.drop_index("ix_campaign_enrolments_due", table_name="campaign_enrolments")
    op.drop_index("uq_campaign_enrolments_occurrence", table_name="campaign_enrolments")
    op.drop_table("campaign_enrolments")
