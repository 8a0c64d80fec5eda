"""indexes on the acknowledgement's path: none that a stored event need not write

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-23 07:55:00.000000

Every stored callback or webhook event writes each index of inbound_events and
of outbox_events while its sender waits. inbound_events' tenant_id index
repeated the dedupe key's leading column; its contact_id and outbox_events'
published_at are NULL when the row is written and are now indexed only once
set (by processing, and by the relay), which is all their queries look for.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0007'
down_revision: str | None = '0006'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_index('ix_inbound_events_tenant_id', table_name='inbound_events')
    op.drop_index('ix_inbound_events_contact_id', table_name='inbound_events')
    op.create_index(
        'ix_inbound_events_contact_id',
        'inbound_events',
        ['contact_id'],
        unique=False,
        postgresql_where=sa.text('contact_id IS NOT NULL'),
    )
    op.drop_index('ix_outbox_events_published_at', table_name='outbox_events')
    op.create_index(
        'ix_outbox_events_published_at',
        'outbox_events',
        ['published_at'],
        unique=False,
        postgresql_where=sa.text('published_at IS NOT NULL'),
    )


def downgrade() -> None:
    op.drop_index('ix_outbox_events_published_at', table_name='outbox_events')
    op.create_index('ix_outbox_events_published_at', 'outbox_events', ['published_at'], unique=False)
    op.drop_index('ix_inbound_events_contact_id', table_name='inbound_events')
    op.create_index('ix_inbound_events_contact_id', 'inbound_events', ['contact_id'], unique=False)
    op.create_index('ix_inbound_events_tenant_id', 'inbound_events', ['tenant_id'], unique=False)
