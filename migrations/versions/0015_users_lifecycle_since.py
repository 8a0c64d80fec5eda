"""users: when a contact's lifecycle stage took effect (stale stage changes are ignored)

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-01 09:45:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("contacts", sa.Column("lifecycle_since", sa.DateTime(timezone=True)))


def downgrade() -> None:
    op.drop_column("contacts", "lifecycle_since")
