"""campaigns: runner columns, sends, in-app inbox, settings, reviews, staff tasks

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-01 16:50:48.770270
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0018"
down_revision: str | None = "0017"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "campaign_settings",
        sa.Column("tenant_id", sa.UUID(), nullable=False),
        sa.Column("settings", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("tenant_id", name=op.f("pk_campaign_settings")),
    )
    op.create_table(
        "campaign_sends",
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column("tenant_id", sa.UUID(), nullable=False),
        sa.Column("key", sa.String(length=200), nullable=False),
        sa.Column("campaign_id", sa.BigInteger(), nullable=True),
        sa.Column("version", sa.Integer(), nullable=True),
        sa.Column("enrolment_id", sa.BigInteger(), nullable=True),
        sa.Column("step_id", sa.String(length=64), nullable=True),
        sa.Column("contact_id", sa.UUID(), nullable=False),
        sa.Column("channel", sa.String(length=32), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.String(length=64), nullable=True),
        sa.Column("content", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("sender", sa.String(length=64), nullable=True),
        sa.Column("due_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("provider_ref", sa.String(length=200), nullable=True),
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
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "status IN ('planned', 'deferred', 'sending', 'sent', 'delivered', 'skipped', "
            "'failed')",
            name=op.f("ck_campaign_sends_status_known"),
        ),
        sa.ForeignKeyConstraint(
            ["campaign_id"],
            ["campaigns.id"],
            name=op.f("fk_campaign_sends_campaign_id_campaigns"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_campaign_sends")),
    )
    op.create_index(
        "ix_campaign_sends_campaign", "campaign_sends", ["campaign_id", "id"], unique=False
    )
    op.create_index(
        "ix_campaign_sends_contact",
        "campaign_sends",
        ["tenant_id", "contact_id", "id"],
        unique=False,
    )
    op.create_index(
        "ix_campaign_sends_due",
        "campaign_sends",
        ["due_at"],
        unique=False,
        postgresql_where="status IN ('planned', 'sending')",
    )
    op.create_index(
        "ix_campaign_sends_provider_ref",
        "campaign_sends",
        ["channel", "provider_ref"],
        unique=False,
    )
    op.create_index("uq_campaign_sends_key", "campaign_sends", ["tenant_id", "key"], unique=True)
    op.create_table(
        "campaign_staff_tasks",
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column("tenant_id", sa.UUID(), nullable=False),
        sa.Column("key", sa.String(length=200), nullable=False),
        sa.Column("kind", sa.String(length=16), server_default="task", nullable=False),
        sa.Column("campaign_id", sa.BigInteger(), nullable=True),
        sa.Column("enrolment_id", sa.BigInteger(), nullable=True),
        sa.Column("step_id", sa.String(length=64), nullable=True),
        sa.Column("contact_id", sa.UUID(), nullable=True),
        sa.Column("staff_userid", sa.String(length=64), nullable=True),
        sa.Column("title", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=16), server_default="open", nullable=False),
        sa.Column("due_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("reminders", sa.Integer(), server_default="0", nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("confirmed_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "kind IN ('task', 'wecom_mass')", name=op.f("ck_campaign_staff_tasks_kind_known")
        ),
        sa.CheckConstraint(
            "status IN ('open', 'confirmed', 'overdue', 'cancelled')",
            name=op.f("ck_campaign_staff_tasks_status_known"),
        ),
        sa.ForeignKeyConstraint(
            ["campaign_id"],
            ["campaigns.id"],
            name=op.f("fk_campaign_staff_tasks_campaign_id_campaigns"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_campaign_staff_tasks")),
    )
    op.create_index(
        "ix_campaign_staff_tasks_campaign",
        "campaign_staff_tasks",
        ["campaign_id", "id"],
        unique=False,
    )
    op.create_index(
        "ix_campaign_staff_tasks_staff",
        "campaign_staff_tasks",
        ["tenant_id", "staff_userid", "id"],
        unique=False,
    )
    op.create_index(
        "uq_campaign_staff_tasks_key", "campaign_staff_tasks", ["tenant_id", "key"], unique=True
    )
    op.create_table(
        "campaign_reviews",
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column("tenant_id", sa.UUID(), nullable=False),
        sa.Column("send_id", sa.BigInteger(), nullable=False),
        sa.Column("words", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("status", sa.String(length=16), server_default="open", nullable=False),
        sa.Column("decided_by", sa.String(length=100), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "status IN ('open', 'approved', 'rejected')",
            name=op.f("ck_campaign_reviews_status_known"),
        ),
        sa.ForeignKeyConstraint(
            ["send_id"],
            ["campaign_sends.id"],
            name=op.f("fk_campaign_reviews_send_id_campaign_sends"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_campaign_reviews")),
        sa.UniqueConstraint("send_id", name=op.f("uq_campaign_reviews_send_id")),
    )
    op.create_index(
        "ix_campaign_reviews_open",
        "campaign_reviews",
        ["tenant_id", "id"],
        unique=False,
        postgresql_where="status = 'open'",
    )
    op.create_table(
        "contact_inbox",
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column("tenant_id", sa.UUID(), nullable=False),
        sa.Column("contact_id", sa.UUID(), nullable=False),
        sa.Column("send_id", sa.BigInteger(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("read_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["send_id"],
            ["campaign_sends.id"],
            name=op.f("fk_contact_inbox_send_id_campaign_sends"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_contact_inbox")),
        sa.UniqueConstraint("send_id", name=op.f("uq_contact_inbox_send_id")),
    )
    op.create_index(
        "ix_contact_inbox_contact", "contact_inbox", ["tenant_id", "contact_id", "id"], unique=False
    )
    op.add_column(
        "campaign_enrolments",
        sa.Column(
            "step_since",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
    )
    op.add_column(
        "campaign_enrolments", sa.Column("seq", sa.Integer(), server_default="0", nullable=False)
    )
    op.add_column(
        "campaign_enrolments",
        sa.Column("listens", postgresql.ARRAY(sa.Text()), server_default="{}", nullable=False),
    )
    op.add_column("campaign_enrolments", sa.Column("variant", sa.String(length=50), nullable=True))
    op.add_column(
        "campaign_enrolments",
        sa.Column(
            "context",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default="{}",
            nullable=False,
        ),
    )
    op.drop_index("ix_campaign_enrolments_due", table_name="campaign_enrolments")
    op.create_index(
        "ix_campaign_enrolments_due",
        "campaign_enrolments",
        ["campaign_id", "due_at"],
        unique=False,
        postgresql_where="status IN ('active', 'waiting')",
    )
    op.add_column("campaigns", sa.Column("live_since", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    op.drop_column("campaigns", "live_since")
    op.drop_index(
        "ix_campaign_enrolments_due",
        table_name="campaign_enrolments",
        postgresql_where="status IN ('active', 'waiting')",
    )
    op.create_index(
        "ix_campaign_enrolments_due",
        "campaign_enrolments",
        ["due_at"],
        unique=False,
        postgresql_where=sa.text("status = 'active'"),
    )
    op.drop_column("campaign_enrolments", "context")
    op.drop_column("campaign_enrolments", "variant")
    op.drop_column("campaign_enrolments", "listens")
    op.drop_column("campaign_enrolments", "seq")
    op.drop_column("campaign_enrolments", "step_since")
    op.drop_index("ix_contact_inbox_contact", table_name="contact_inbox")
    op.drop_table("contact_inbox")
    op.drop_index(
        "ix_campaign_reviews_open",
        table_name="campaign_reviews",
        postgresql_where="status = 'open'",
    )
    op.drop_table("campaign_reviews")
    op.drop_index("uq_campaign_staff_tasks_key", table_name="campaign_staff_tasks")
    op.drop_index("ix_campaign_staff_tasks_staff", table_name="campaign_staff_tasks")
    op.drop_index("ix_campaign_staff_tasks_campaign", table_name="campaign_staff_tasks")
    op.drop_table("campaign_staff_tasks")
    op.drop_index("uq_campaign_sends_key", table_name="campaign_sends")
    op.drop_index("ix_campaign_sends_provider_ref", table_name="campaign_sends")
    op.drop_index(
        "ix_campaign_sends_due",
        table_name="campaign_sends",
        postgresql_where="status IN ('planned', 'sending')",
    )
    op.drop_index("ix_campaign_sends_contact", table_name="campaign_sends")
    op.drop_index("ix_campaign_sends_campaign", table_name="campaign_sends")
    op.drop_table("campaign_sends")
    op.drop_table("campaign_settings")
