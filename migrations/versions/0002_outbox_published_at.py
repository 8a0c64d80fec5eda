"""index outbox events by publication time

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23 01:49:18.453100
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0002'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index('ix_outbox_events_published_at', 'outbox_events', ['published_at'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_outbox_events_published_at', table_name='outbox_events')
