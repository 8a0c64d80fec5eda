"""tagging: tag groups, tags, contact tags (weights computed with tag_weight(), never
rewritten for decay) and their history; segments and their members

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01 09:45:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = '0010'
down_revision: str | None = '0009'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NOW = sa.text('now()')
EMPTY = sa.text("'{}'::jsonb")

# The current weight of a contact tag: the stored weight halved every half-life
# since it was stored (no decay when half_life_days is NULL). After 900 half-lives
# it is 0: power() would fail with an underflow long before a weight that small
# (0.5^1075) could be told from 0.
TAG_WEIGHT = """
CREATE FUNCTION tag_weight(
    weight double precision, weighted_at timestamptz,
    half_life_days double precision, at timestamptz
) RETURNS double precision
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE
        WHEN half_life_days IS NULL OR at <= weighted_at THEN weight
        WHEN extract(epoch FROM at - weighted_at) / (half_life_days * 86400.0) > 900 THEN 0
        ELSE weight * power(
            0.5::double precision,
            extract(epoch FROM at - weighted_at) / (half_life_days * 86400.0)
        )
    END
$$
"""


def upgrade() -> None:
    op.create_table(
        'tag_groups',
        sa.Column('id', sa.BigInteger(), nullable=False),
        sa.Column('tenant_id', sa.Uuid(), nullable=False),
        sa.Column('name', sa.String(30), nullable=False),
        sa.Column('kind', sa.String(16), server_default='custom', nullable=False),
        sa.Column('half_life_days', sa.Float(), nullable=True),
        sa.Column('floor', sa.Float(), server_default='0', nullable=False),
        sa.Column('exclusive', sa.Boolean(), server_default='false', nullable=False),
        sa.Column('decay_manual', sa.Boolean(), server_default='false', nullable=False),
        sa.Column('mirror_to_wecom', sa.Boolean(), server_default='false', nullable=False),
        sa.Column('wecom_group_id', sa.String(64), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), server_default=NOW, nullable=False),
        sa.Column('updated_at', sa.DateTime(timezone=True), server_default=NOW, nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_tag_groups')),
        sa.UniqueConstraint('tenant_id', 'name', name='uq_tag_groups_name'),
    )
    op.create_index(op.f('ix_tag_groups_tenant_id'), 'tag_groups', ['tenant_id'])
    op.create_table(
        'tags',
        sa.Column('id', sa.BigInteger(), nullable=False),
        sa.Column('tenant_id', sa.Uuid(), nullable=False),
        sa.Column('group_id', sa.BigInteger(), nullable=False),
        sa.Column('name', sa.String(30), nullable=False),
        sa.Column('wecom_tag_id', sa.String(64), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), server_default=NOW, nullable=False),
        sa.Column('updated_at', sa.DateTime(timezone=True), server_default=NOW, nullable=False),
        sa.ForeignKeyConstraint(
            ['group_id'], ['tag_groups.id'], name=op.f('fk_tags_group_id_tag_groups'),
            ondelete='CASCADE',
        ),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_tags')),
        sa.UniqueConstraint('tenant_id', 'group_id', 'name', name='uq_tags_name'),
    )
    op.create_index(op.f('ix_tags_tenant_id'), 'tags', ['tenant_id'])
    op.create_table(
        'contact_tags',
        sa.Column('tenant_id', sa.Uuid(), nullable=False),
        sa.Column('contact_id', sa.Uuid(), nullable=False),
        sa.Column('tag_id', sa.BigInteger(), nullable=False),
        sa.Column('weight', sa.Float(), nullable=False),
        sa.Column('weighted_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('half_life_days', sa.Float(), nullable=True),
        sa.Column('source', sa.String(16), nullable=False),
        sa.Column('first_raised_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('last_raised_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('drops_at', sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ['tag_id'], ['tags.id'], name=op.f('fk_contact_tags_tag_id_tags'), ondelete='CASCADE'
        ),
        sa.PrimaryKeyConstraint('tenant_id', 'contact_id', 'tag_id', name=op.f('pk_contact_tags')),
    )
    op.create_index(
        'ix_contact_tags_tag', 'contact_tags', ['tenant_id', 'tag_id', 'contact_id'],
    )
    op.create_index(
        'ix_contact_tags_drops', 'contact_tags', ['drops_at'],
        postgresql_where=sa.text('drops_at IS NOT NULL'),
    )
    op.create_table(
        'contact_tag_history',
        sa.Column('id', sa.BigInteger(), nullable=False),
        sa.Column('tenant_id', sa.Uuid(), nullable=False),
        sa.Column('contact_id', sa.Uuid(), nullable=False),
        sa.Column('tag_id', sa.BigInteger(), nullable=False),
        sa.Column('action', sa.String(16), nullable=False),
        sa.Column('weight', sa.Float(), nullable=True),
        sa.Column('source', sa.String(16), nullable=False),
        sa.Column('cause', postgresql.JSONB(), server_default=EMPTY, nullable=False),
        sa.Column('at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_contact_tag_history')),
    )
    op.create_index(
        'ix_contact_tag_history_contact', 'contact_tag_history',
        ['tenant_id', 'contact_id', 'tag_id', 'id'],
    )
    op.execute(TAG_WEIGHT)
    op.create_table(
        'segments',
        sa.Column('id', sa.BigInteger(), nullable=False),
        sa.Column('tenant_id', sa.Uuid(), nullable=False),
        sa.Column('name', sa.String(100), nullable=False),
        sa.Column('kind', sa.String(16), server_default='dynamic', nullable=False),
        sa.Column('rule', postgresql.JSONB(), nullable=True),
        sa.Column('status', sa.String(16), server_default='building', nullable=False),
        sa.Column('error', sa.Text(), nullable=True),
        sa.Column('build_attempts', sa.Integer(), server_default='0', nullable=False),
        sa.Column('last_built_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('version', sa.Integer(), server_default='1', nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), server_default=NOW, nullable=False),
        sa.Column('updated_at', sa.DateTime(timezone=True), server_default=NOW, nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_segments')),
        sa.UniqueConstraint('tenant_id', 'name', name='uq_segments_name'),
    )
    op.create_index(op.f('ix_segments_tenant_id'), 'segments', ['tenant_id'])
    op.create_table(
        'segment_members',
        sa.Column('segment_id', sa.BigInteger(), nullable=False),
        sa.Column('contact_id', sa.Uuid(), nullable=False),
        sa.Column('tenant_id', sa.Uuid(), nullable=False),
        sa.Column('entered_at', sa.DateTime(timezone=True), server_default=NOW, nullable=False),
        sa.ForeignKeyConstraint(
            ['segment_id'], ['segments.id'], name=op.f('fk_segment_members_segment_id_segments'),
            ondelete='CASCADE',
        ),
        sa.PrimaryKeyConstraint('segment_id', 'contact_id', name=op.f('pk_segment_members')),
    )
    op.create_index(
        'ix_segment_members_contact', 'segment_members', ['tenant_id', 'contact_id']
    )


def downgrade() -> None:
    op.drop_table('segment_members')
    op.drop_table('segments')
    op.execute('DROP FUNCTION tag_weight(double precision, timestamptz, double precision, timestamptz)')
    op.drop_table('contact_tag_history')
    op.drop_table('contact_tags')
    op.drop_table('tags')
    op.drop_table('tag_groups')
