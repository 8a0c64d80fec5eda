"""campaigns: WeCom mass-message and Moments tasks; schedule firings; staff notices

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-01 17:19:35.165885
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0019"
down_revision: str | None = "0018"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "campaign_wecom_jobs",
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column("tenant_id", sa.UUID(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("campaign_id", sa.BigInteger(), nullable=True),
        sa.Column("sender", sa.String(length=64), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("recipients", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("status", sa.String(length=16), server_default="calling", nullable=False),
        sa.Column("msgid", sa.String(length=200), nullable=True),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("call_started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("due_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("deadline_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column(
            "reminded_at",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default="[]",
            nullable=False,
        ),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "kind IN ('single', 'group', 'moment')", name=op.f("ck_campaign_wecom_jobs_kind_known")
        ),
        sa.CheckConstraint(
            "status IN ('calling', 'created', 'done', 'cancelled', 'failed')",
            name=op.f("ck_campaign_wecom_jobs_status_known"),
        ),
        sa.ForeignKeyConstraint(
            ["campaign_id"],
            ["campaigns.id"],
            name=op.f("fk_campaign_wecom_jobs_campaign_id_campaigns"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_campaign_wecom_jobs")),
    )
    op.create_index(
        "ix_campaign_wecom_jobs_due",
        "campaign_wecom_jobs",
        ["due_at"],
        unique=False,
        postgresql_where="status IN ('calling', 'created')",
    )
    op.create_index(
        "ix_campaign_wecom_jobs_msgid", "campaign_wecom_jobs", ["tenant_id", "msgid"], unique=False
    )
    op.add_column("campaigns", sa.Column("fired_at", sa.DateTime(timezone=True), nullable=True))
    op.alter_column("campaign_sends", "contact_id", existing_type=sa.UUID(), nullable=True)
    op.add_column(
        "campaign_staff_tasks", sa.Column("notified_at", sa.DateTime(timezone=True), nullable=True)
    )
    op.add_column(
        "campaign_staff_tasks", sa.Column("reminded_at", sa.DateTime(timezone=True), nullable=True)
    )


def downgrade() -> None:
    op.drop_column("campaign_staff_tasks", "reminded_at")
    op.drop_column("campaign_staff_tasks", "notified_at")
    op.execute("DELETE FROM campaign_sends WHERE contact_id IS NULL")
    op.alter_column("campaign_sends", "contact_id", existing_type=sa.UUID(), nullable=False)
    op.drop_column("campaigns", "fired_at")
    op.drop_index("ix_campaign_wecom_jobs_msgid", table_name="campaign_wecom_jobs")
    op.drop_index(
        "ix_campaign_wecom_jobs_due",
        table_name="campaign_wecom_jobs",
        postgresql_where="status IN ('calling', 'created')",
    )
    op.drop_table("campaign_wecom_jobs")
