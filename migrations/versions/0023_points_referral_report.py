"""points: the referral report's read model (contacts, invitee activity) and alerts

Revision ID: 0023
Revises: 0022
Create Date: 2026-12-01 21:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0023"
down_revision: str | None = "0022"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The behavioural events that count as an invitee coming back (reports_tasks.ACTIVITY).
_ACTIVITY = (
    "'order.paid', 'checkin', 'comment', 'page.view', 'product.view', 'cart.add', "
    "'share', 'live.watch'"
)


# A referral counting a new person (report_models.invitee_condition).
_INVITEE = (
    "status <> 'refused' AND NOT (status = 'revoked' "
    "AND COALESCE(reason, '') IN ('merged', 'self_invite'))"
)


def upgrade() -> None:
    op.create_table(
        "referral_contacts",
        sa.Column("tenant_id", sa.UUID(), nullable=False),
        sa.Column("contact_id", sa.UUID(), nullable=False),
        sa.Column("joined_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("first_paid_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("tenant_id", "contact_id", name=op.f("pk_referral_contacts")),
    )
    op.create_index(
        "ix_referral_contacts_joined",
        "referral_contacts",
        ["tenant_id", "joined_at"],
        unique=False,
        postgresql_include=["contact_id", "first_paid_at"],
    )
    op.create_table(
        "referral_activity",
        sa.Column("tenant_id", sa.UUID(), nullable=False),
        sa.Column("contact_id", sa.UUID(), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.PrimaryKeyConstraint(
            "tenant_id", "contact_id", "day", name=op.f("pk_referral_activity")
        ),
    )
    op.create_table(
        "referral_alerts",
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column("tenant_id", sa.UUID(), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("cohort_day", sa.Date(), nullable=False),
        sa.Column("invitees", sa.Integer(), nullable=False),
        sa.Column("retained", sa.Integer(), nullable=False),
        sa.Column(
            "details",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("delivery_error", sa.Text(), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_referral_alerts")),
        sa.UniqueConstraint(
            "tenant_id", "kind", "cohort_day", name="uq_referral_alerts_cohort"
        ),
    )
    op.create_index(
        "ix_referral_alerts_undelivered",
        "referral_alerts",
        ["tenant_id"],
        unique=False,
        postgresql_where="delivered_at IS NULL",
    )
    # Covering indexes: the report reads these ranges from the index alone.
    op.create_index(
        "ix_referrals_attributed",
        "referrals",
        ["tenant_id", "attributed_at"],
        unique=False,
        postgresql_include=[
            "status",
            "reason",
            "inviter_id",
            "invitee_id",
            "level2_inviter_id",
            "qualified_at",
        ],
    )
    op.create_index(
        "ix_referrals_invitees",
        "referrals",
        ["tenant_id", "invitee_id"],
        unique=False,
        postgresql_include=["level2_inviter_id"],
        postgresql_where=_INVITEE,
    )
    op.create_index(
        "ix_referral_rewards_granted",
        "referral_rewards",
        ["tenant_id", "granted_at"],
        unique=False,
        postgresql_include=["kind", "status", "points", "value_fen", "sku"],
        postgresql_where="granted_at IS NOT NULL",
    )
    # Once, the history from before the read model: each contact's creation and first
    # paid order, and the invitees active on the day after their attribution. From now
    # on the events keep them (points.referral_joined, points.referral_first_paid,
    # points.referral_d1_activity).
    op.execute(
        """
        INSERT INTO referral_contacts (tenant_id, contact_id, joined_at, first_paid_at)
        SELECT c.tenant_id, c.id, c.created_at,
               (SELECT min(e.occurred_at) FROM contact_events e
                 WHERE e.tenant_id = c.tenant_id AND e.contact_id = c.id
                   AND e.type = 'order.paid')
          FROM contacts c
         WHERE c.merged_into_id IS NULL
        """
    )
    op.execute(
        f"""
        INSERT INTO referral_activity (tenant_id, contact_id, day)
        SELECT DISTINCT r.tenant_id, r.invitee_id,
               CAST((e.occurred_at AT TIME ZONE t.timezone) AS date)
          FROM referrals r
          JOIN tenants t ON t.id = r.tenant_id
          JOIN contact_events e
            ON e.tenant_id = r.tenant_id AND e.contact_id = r.invitee_id
           AND e.occurred_at > r.attributed_at
           AND e.occurred_at < r.attributed_at + interval '50 hours'
         WHERE r.status <> 'refused' AND e.type IN ({_ACTIVITY})
           AND CAST((e.occurred_at AT TIME ZONE t.timezone) AS date)
             = CAST((r.attributed_at AT TIME ZONE t.timezone) AS date) + 1
        ON CONFLICT DO NOTHING
        """
    )


def downgrade() -> None:
    op.drop_index(
        "ix_referral_rewards_granted",
        table_name="referral_rewards",
        postgresql_where="granted_at IS NOT NULL",
    )
    op.drop_index("ix_referrals_invitees", table_name="referrals", postgresql_where=_INVITEE)
    op.drop_index("ix_referrals_attributed", table_name="referrals")
    op.drop_index(
        "ix_referral_alerts_undelivered",
        table_name="referral_alerts",
        postgresql_where="delivered_at IS NULL",
    )
    op.drop_table("referral_alerts")
    op.drop_table("referral_activity")
    op.drop_index("ix_referral_contacts_joined", table_name="referral_contacts")
    op.drop_table("referral_contacts")
