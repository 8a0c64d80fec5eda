"""inbound events are claimed by the users worker straight from their table

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-23 09:30:00.000000

A stored callback or webhook event used to write an outbox row too, which the
relay then marked published and handed to a queue, and whose delivery wrote a
processed_events row. The users worker now claims unprocessed rows itself
(FOR UPDATE SKIP LOCKED, in id order, through a partial index that holds only
them), so inbound_events carries its own retry state: attempts, retry_at and
the last error. A row that keeps failing becomes a dead letter that points at
it (dead_letters.inbound_event_id); dead letters of the old wake-up events
move over to their inbound rows.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0008'
down_revision: str | None = '0007'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        'inbound_events',
        sa.Column('attempts', sa.SmallInteger(), server_default='0', nullable=False),
    )
    op.add_column('inbound_events', sa.Column('retry_at', sa.DateTime(timezone=True), nullable=True))
    op.add_column('inbound_events', sa.Column('last_error', sa.Text(), nullable=True))
    op.create_index(
        'ix_inbound_events_unprocessed',
        'inbound_events',
        ['id'],
        unique=False,
        postgresql_where=sa.text('processed_at IS NULL'),
    )
    op.add_column('dead_letters', sa.Column('inbound_event_id', sa.BigInteger(), nullable=True))
    op.create_foreign_key(
        op.f('fk_dead_letters_inbound_event_id_inbound_events'),
        'dead_letters',
        'inbound_events',
        ['inbound_event_id'],
        ['id'],
        ondelete='CASCADE',
    )
    op.create_unique_constraint(
        'uq_dead_letters_inbound_event', 'dead_letters', ['inbound_event_id']
    )
    # Dead letters of the old wake-up events now point at the rows they were about,
    # and those rows wait for a replay instead of being claimed again.
    op.execute(
        """
        UPDATE dead_letters d
           SET inbound_event_id = (o.payload ->> 'inbound_id')::bigint, event_id = NULL
          FROM outbox_events o
         WHERE d.event_id = o.id AND d.handler = 'users.process_inbound'
        """
    )
    op.execute(
        """
        UPDATE inbound_events i
           SET retry_at = 'infinity', outcome = 'dead', attempts = LEAST(d.attempts, 32767),
               last_error = d.last_error
          FROM dead_letters d
         WHERE d.inbound_event_id = i.id AND d.status = 'dead' AND i.processed_at IS NULL
        """
    )


def downgrade() -> None:
    # Unprocessed rows need their wake-up events back to be delivered by the old path.
    op.execute(
        """
        INSERT INTO outbox_events (event_id, tenant_id, type, payload)
        SELECT gen_random_uuid(), tenant_id, 'users.inbound_received',
               jsonb_build_object('inbound_id', id)
          FROM inbound_events WHERE processed_at IS NULL AND retry_at IS DISTINCT FROM 'infinity'
         ORDER BY id
        """
    )
    # Their dead letters point at wake-up events again (published: they stay dead).
    op.execute(
        """
        WITH woken AS (
            INSERT INTO outbox_events (event_id, tenant_id, type, payload, published_at)
            SELECT gen_random_uuid(), tenant_id, 'users.inbound_received',
                   jsonb_build_object('inbound_id', inbound_event_id, 'dead_letter', id), now()
              FROM dead_letters WHERE inbound_event_id IS NOT NULL
            RETURNING id, payload
        )
        UPDATE dead_letters d SET event_id = w.id, inbound_event_id = NULL
          FROM woken w WHERE d.id = (w.payload ->> 'dead_letter')::bigint
        """
    )
    op.drop_constraint('uq_dead_letters_inbound_event', 'dead_letters', type_='unique')
    op.drop_constraint(
        op.f('fk_dead_letters_inbound_event_id_inbound_events'), 'dead_letters', type_='foreignkey'
    )
    op.drop_column('dead_letters', 'inbound_event_id')
    op.drop_index('ix_inbound_events_unprocessed', table_name='inbound_events')
    op.drop_column('inbound_events', 'last_error')
    op.drop_column('inbound_events', 'retry_at')
    op.drop_column('inbound_events', 'attempts')
