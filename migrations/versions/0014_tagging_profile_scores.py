"""tagging: orders for RFM, each contact's RFM scores, cell, value tier and health, the
tenants' score boundaries and the profile part's settings (lifecycle thresholds, RFM)

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-01 09:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NOW = sa.text("now()")
EMPTY = sa.text("'{}'::jsonb")


def upgrade() -> None:
    op.create_table(
        "tagging_orders",
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("order_id", sa.String(128), nullable=False),
        sa.Column("contact_id", sa.Uuid(), nullable=False),
        sa.Column("paid_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("amount_fen", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("refunded_fen", sa.BigInteger(), server_default="0", nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "order_id", name=op.f("pk_tagging_orders")),
    )
    op.create_index(
        "ix_tagging_orders_contact", "tagging_orders", ["tenant_id", "contact_id", "paid_at"]
    )
    op.create_table(
        "tagging_settings",
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("settings", postgresql.JSONB(), server_default=EMPTY, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=NOW, nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", name=op.f("pk_tagging_settings")),
    )
    op.create_table(
        "tagging_score_boundaries",
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("recency_days", postgresql.ARRAY(sa.Float()), nullable=False),
        sa.Column("frequency", postgresql.ARRAY(sa.Float()), nullable=False),
        sa.Column("monetary_fen", postgresql.ARRAY(sa.Float()), nullable=False),
        sa.Column("engagement_max", sa.Float(), server_default="0", nullable=False),
        sa.Column("buyers", sa.Integer(), server_default="0", nullable=False),
        sa.Column("computed_at", sa.DateTime(timezone=True), server_default=NOW, nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", name=op.f("pk_tagging_score_boundaries")),
    )
    for name, kind in (
        ("recency_days", sa.Integer()),
        ("frequency", sa.Integer()),
        ("monetary_fen", sa.BigInteger()),
        ("r_score", sa.SmallInteger()),
        ("f_score", sa.SmallInteger()),
        ("m_score", sa.SmallInteger()),
        ("rfm_cell", sa.String(32)),
        ("value_tier", sa.String(16)),
        ("health_score", sa.SmallInteger()),
        ("scored_at", sa.DateTime(timezone=True)),
    ):
        op.add_column("tagging_profiles", sa.Column(name, kind, nullable=True))


def downgrade() -> None:
    for name in (
        "scored_at",
        "health_score",
        "value_tier",
        "rfm_cell",
        "m_score",
        "f_score",
        "r_score",
        "monetary_fen",
        "frequency",
        "recency_days",
    ):
        op.drop_column("tagging_profiles", name)
    op.drop_table("tagging_score_boundaries")
    op.drop_table("tagging_settings")
    op.drop_table("tagging_orders")
