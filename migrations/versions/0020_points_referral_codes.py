"""points: referrals, invite codes

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-01 18:48:17.218300
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = "0020"
down_revision: str | None = "0019"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "referral_codes",
        sa.Column("tenant_id", sa.UUID(), nullable=False),
        sa.Column("contact_id", sa.UUID(), nullable=False),
        sa.Column("code", sa.String(length=16), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("qr_code", sa.Text(), nullable=True),
        sa.Column("wecom_config_id", sa.String(length=100), nullable=True),
        sa.Column("qr_error", sa.String(length=100), nullable=True),
        sa.PrimaryKeyConstraint("tenant_id", "contact_id", name=op.f("pk_referral_codes")),
    )
    op.create_index("uq_referral_codes_code", "referral_codes", ["code"], unique=True)


def downgrade() -> None:
    op.drop_index("uq_referral_codes_code", table_name="referral_codes")
    op.drop_table("referral_codes")
