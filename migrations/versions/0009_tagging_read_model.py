"""tagging: the read model of each contact (profile, event counts by day, events with
properties, customer-group memberships), fed by the other services' events

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01 09:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = '0009'
down_revision: str | None = '0008'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NOW = sa.text('now()')
EMPTY = sa.text("'{}'::jsonb")


def upgrade() -> None:
    op.create_table(
        'tagging_profiles',
        sa.Column('tenant_id', sa.Uuid(), nullable=False),
        sa.Column('contact_id', sa.Uuid(), nullable=False),
        sa.Column('status', sa.String(16), server_default='live', nullable=False),
        sa.Column('merged_into', sa.Uuid(), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), server_default=NOW, nullable=False),
        sa.Column('owner_staff', sa.String(64), nullable=True),
        sa.Column('channel', sa.String(64), nullable=True),
        sa.Column('attributes', postgresql.JSONB(), server_default=EMPTY, nullable=False),
        sa.Column('consent', postgresql.JSONB(), server_default=EMPTY, nullable=False),
        sa.Column('points_tier', sa.String(32), nullable=True),
        sa.Column('lost_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('lost_reason', sa.String(32), nullable=True),
        sa.Column('lifecycle_stage', sa.String(16), server_default='potential', nullable=False),
        sa.Column('stage_since', sa.DateTime(timezone=True), server_default=NOW, nullable=False),
        sa.Column('stage_due_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('first_order_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('last_order_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('last_interaction_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('updated_at', sa.DateTime(timezone=True), server_default=NOW, nullable=False),
        sa.PrimaryKeyConstraint('tenant_id', 'contact_id', name=op.f('pk_tagging_profiles')),
    )
    op.create_index(
        'ix_tagging_profiles_stage_due',
        'tagging_profiles',
        ['stage_due_at'],
        postgresql_where=sa.text('stage_due_at IS NOT NULL'),
    )
    op.create_index(
        'ix_tagging_profiles_created', 'tagging_profiles', ['tenant_id', 'created_at']
    )
    op.create_table(
        'tagging_event_days',
        sa.Column('tenant_id', sa.Uuid(), nullable=False),
        sa.Column('contact_id', sa.Uuid(), nullable=False),
        sa.Column('event_type', sa.String(100), nullable=False),
        sa.Column('day', sa.Date(), nullable=False),
        sa.Column('n', sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint(
            'tenant_id', 'contact_id', 'event_type', 'day', name=op.f('pk_tagging_event_days')
        ),
    )
    op.create_index(
        'ix_tagging_event_days_type_day',
        'tagging_event_days',
        ['tenant_id', 'event_type', 'day'],
        postgresql_include=['contact_id', 'n'],
    )
    op.create_table(
        'tagging_events',
        sa.Column('id', sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column('tenant_id', sa.Uuid(), nullable=False),
        sa.Column('contact_id', sa.Uuid(), nullable=False),
        sa.Column('event_type', sa.String(100), nullable=False),
        sa.Column('occurred_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('day', sa.Date(), nullable=False),
        sa.Column('properties', postgresql.JSONB(), server_default=EMPTY, nullable=False),
        sa.Column('source_event_id', sa.Uuid(), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_tagging_events')),
        sa.UniqueConstraint('source_event_id', name=op.f('uq_tagging_events_source_event_id')),
    )
    op.create_index(
        'ix_tagging_events_contact_type',
        'tagging_events',
        ['tenant_id', 'contact_id', 'event_type', 'occurred_at'],
    )
    op.create_index(
        'ix_tagging_events_type_time', 'tagging_events', ['tenant_id', 'event_type', 'occurred_at']
    )
    op.create_table(
        'tagging_group_members',
        sa.Column('tenant_id', sa.Uuid(), nullable=False),
        sa.Column('chat_id', sa.String(100), nullable=False),
        sa.Column('contact_id', sa.Uuid(), nullable=False),
        sa.Column('joined_at', sa.DateTime(timezone=True), server_default=NOW, nullable=False),
        sa.PrimaryKeyConstraint(
            'tenant_id', 'chat_id', 'contact_id', name=op.f('pk_tagging_group_members')
        ),
    )
    op.create_index(
        'ix_tagging_group_members_contact', 'tagging_group_members', ['tenant_id', 'contact_id']
    )


def downgrade() -> None:
    op.drop_table('tagging_group_members')
    op.drop_table('tagging_events')
    op.drop_table('tagging_event_days')
    op.drop_table('tagging_profiles')
