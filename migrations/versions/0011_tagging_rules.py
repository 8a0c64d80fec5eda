"""tagging: tag rules (event counts in a window raise or set a tag), the record of which
rule fired on which source event (once each), and the tenants whose defaults are in

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-01 09:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = '0011'
down_revision: str | None = '0010'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NOW = sa.text('now()')
EMPTY = sa.text("'{}'::jsonb")


def upgrade() -> None:
    op.create_table(
        'tag_rules',
        sa.Column('id', sa.BigInteger(), nullable=False),
        sa.Column('tenant_id', sa.Uuid(), nullable=False),
        sa.Column('name', sa.String(100), nullable=False),
        sa.Column('event_type', sa.String(100), nullable=False),
        sa.Column('where', postgresql.JSONB(), server_default=EMPTY, nullable=False),
        sa.Column('min_count', sa.Integer(), server_default='1', nullable=False),
        sa.Column('window_days', sa.Integer(), nullable=True),
        sa.Column('action', sa.String(8), server_default='raise', nullable=False),
        sa.Column('weight', sa.Float(), nullable=False),
        sa.Column('cap', sa.Float(), nullable=True),
        sa.Column('tag_id', sa.BigInteger(), nullable=True),
        sa.Column('group_id', sa.BigInteger(), nullable=True),
        sa.Column('from_property', sa.String(100), nullable=True),
        sa.Column('status', sa.String(16), server_default='active', nullable=False),
        sa.Column('default_key', sa.String(32), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), server_default=NOW, nullable=False),
        sa.Column('updated_at', sa.DateTime(timezone=True), server_default=NOW, nullable=False),
        sa.CheckConstraint(
            '(tag_id IS NOT NULL AND group_id IS NULL AND from_property IS NULL)'
            ' OR (tag_id IS NULL AND group_id IS NOT NULL AND from_property IS NOT NULL)',
            name=op.f('ck_tag_rules_one_target'),
        ),
        sa.ForeignKeyConstraint(
            ['tag_id'], ['tags.id'], name=op.f('fk_tag_rules_tag_id_tags'), ondelete='CASCADE'
        ),
        sa.ForeignKeyConstraint(
            ['group_id'], ['tag_groups.id'], name=op.f('fk_tag_rules_group_id_tag_groups'),
            ondelete='CASCADE',
        ),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_tag_rules')),
        sa.UniqueConstraint('tenant_id', 'name', name='uq_tag_rules_name'),
    )
    op.create_index(op.f('ix_tag_rules_tenant_id'), 'tag_rules', ['tenant_id'])
    op.create_index('ix_tag_rules_event', 'tag_rules', ['tenant_id', 'event_type'])
    op.create_index(
        'uq_tag_rules_default_key', 'tag_rules', ['tenant_id', 'default_key'], unique=True,
        postgresql_where=sa.text('default_key IS NOT NULL'),
    )
    op.create_table(
        'tag_rule_firings',
        sa.Column('id', sa.BigInteger(), sa.Identity(), nullable=False),
        sa.Column('rule_id', sa.BigInteger(), nullable=False),
        sa.Column('source_event_id', sa.Uuid(), nullable=False),
        sa.Column('tenant_id', sa.Uuid(), nullable=False),
        sa.Column('contact_id', sa.Uuid(), nullable=False),
        sa.Column('tag_id', sa.BigInteger(), nullable=True),
        sa.Column('outcome', sa.String(16), nullable=False),
        sa.Column('reason', sa.String(32), nullable=True),
        sa.Column('fired_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ['rule_id'], ['tag_rules.id'], name=op.f('fk_tag_rule_firings_rule_id_tag_rules'),
            ondelete='CASCADE',
        ),
        sa.PrimaryKeyConstraint('rule_id', 'source_event_id', name=op.f('pk_tag_rule_firings')),
    )
    op.create_index(
        'ix_tag_rule_firings_contact', 'tag_rule_firings', ['tenant_id', 'contact_id']
    )
    op.create_index(
        'ix_tag_rule_firings_rule_id', 'tag_rule_firings', ['rule_id', 'id'], unique=True
    )
    op.create_table(
        'tag_rule_tenants',
        sa.Column('tenant_id', sa.Uuid(), nullable=False),
        sa.Column(
            'defaults_installed_at', sa.DateTime(timezone=True), server_default=NOW,
            nullable=False,
        ),
        sa.PrimaryKeyConstraint('tenant_id', name=op.f('pk_tag_rule_tenants')),
    )


def downgrade() -> None:
    op.drop_table('tag_rule_tenants')
    op.drop_table('tag_rule_firings')
    op.drop_table('tag_rules')
