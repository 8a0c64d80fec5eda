"""tagging: the wecom part's tables: the queue of WeCom operations, the corp tags as
WeCom last showed them, and the triggers that enqueue what ops change in mirrored
tag groups

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-01 09:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = '0012'
down_revision: str | None = '0011'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NOW = sa.text('now()')
EMPTY = sa.text("'{}'::jsonb")

# What ops change in a mirrored group becomes an op in the same transaction: a new or
# renamed tag or group is pushed (the worker reads what to send when it runs), a
# deleted one is deleted in WeCom by id. Changes that come from WeCom itself are made
# with scrm.wecom_tag_origin = 'wecom' (transaction-local) and enqueue nothing.
ENQUEUE = """
CREATE FUNCTION wecom_tag_ops_enqueue() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    queued bigint := 0;
BEGIN
    IF current_setting('scrm.wecom_tag_origin', true) = 'wecom' THEN
        RETURN NULL;
    END IF;
    IF TG_TABLE_NAME = 'tags' AND TG_OP = 'INSERT' THEN
        INSERT INTO wecom_tag_ops (tenant_id, kind, serial_key, coalesce_key, payload)
        SELECT n.tenant_id, 'push_tag', 'corp', 'push_tag:' || n.id,
               jsonb_build_object('tag_id', n.id)
          FROM new_rows n JOIN tag_groups g ON g.id = n.group_id
         WHERE g.mirror_to_wecom AND n.wecom_tag_id IS NULL
        ON CONFLICT (tenant_id, coalesce_key)
           WHERE status = 'pending' AND coalesce_key IS NOT NULL DO NOTHING;
        GET DIAGNOSTICS queued = ROW_COUNT;
    ELSIF TG_TABLE_NAME = 'tags' AND TG_OP = 'UPDATE' THEN
        INSERT INTO wecom_tag_ops (tenant_id, kind, serial_key, coalesce_key, payload)
        SELECT n.tenant_id, 'push_tag', 'corp', 'push_tag:' || n.id,
               jsonb_build_object('tag_id', n.id)
          FROM new_rows n
          JOIN old_rows o ON o.id = n.id
          JOIN tag_groups g ON g.id = n.group_id
         WHERE g.mirror_to_wecom AND n.name IS DISTINCT FROM o.name
        ON CONFLICT (tenant_id, coalesce_key)
           WHERE status = 'pending' AND coalesce_key IS NOT NULL DO NOTHING;
        GET DIAGNOSTICS queued = ROW_COUNT;
    ELSIF TG_TABLE_NAME = 'tags' AND TG_OP = 'DELETE' THEN
        -- Tags deleted with their group are not found here: the group's op deletes them.
        INSERT INTO wecom_tag_ops (tenant_id, kind, serial_key, payload)
        SELECT o.tenant_id, 'delete', 'corp',
               jsonb_build_object('wecom_tag_ids', jsonb_agg(o.wecom_tag_id ORDER BY o.id),
                                  'wecom_group_ids', '[]'::jsonb)
          FROM old_rows o JOIN tag_groups g ON g.id = o.group_id
         WHERE g.mirror_to_wecom AND o.wecom_tag_id IS NOT NULL
         GROUP BY o.tenant_id;
        GET DIAGNOSTICS queued = ROW_COUNT;
    ELSIF TG_TABLE_NAME = 'tag_groups' AND TG_OP = 'UPDATE' THEN
        INSERT INTO wecom_tag_ops (tenant_id, kind, serial_key, coalesce_key, payload)
        SELECT n.tenant_id, 'push_group', 'corp', 'push_group:' || n.id,
               jsonb_build_object('group_id', n.id)
          FROM new_rows n JOIN old_rows o ON o.id = n.id
         WHERE n.mirror_to_wecom AND n.wecom_group_id IS NOT NULL
           AND n.name IS DISTINCT FROM o.name
        ON CONFLICT (tenant_id, coalesce_key)
           WHERE status = 'pending' AND coalesce_key IS NOT NULL DO NOTHING;
        GET DIAGNOSTICS queued = ROW_COUNT;
        -- A group that starts mirroring: its tags not yet in WeCom are pushed.
        INSERT INTO wecom_tag_ops (tenant_id, kind, serial_key, coalesce_key, payload)
        SELECT t.tenant_id, 'push_tag', 'corp', 'push_tag:' || t.id,
               jsonb_build_object('tag_id', t.id)
          FROM new_rows n
          JOIN old_rows o ON o.id = n.id
          JOIN tags t ON t.group_id = n.id
         WHERE n.mirror_to_wecom AND NOT o.mirror_to_wecom AND t.wecom_tag_id IS NULL
        ON CONFLICT (tenant_id, coalesce_key)
           WHERE status = 'pending' AND coalesce_key IS NOT NULL DO NOTHING;
        queued := queued + 1;
    ELSIF TG_TABLE_NAME = 'tag_groups' AND TG_OP = 'DELETE' THEN
        INSERT INTO wecom_tag_ops (tenant_id, kind, serial_key, payload)
        SELECT o.tenant_id, 'delete', 'corp',
               jsonb_build_object('wecom_tag_ids', '[]'::jsonb,
                                  'wecom_group_ids', jsonb_agg(o.wecom_group_id ORDER BY o.id))
          FROM old_rows o
         WHERE o.mirror_to_wecom AND o.wecom_group_id IS NOT NULL
         GROUP BY o.tenant_id;
        GET DIAGNOSTICS queued = ROW_COUNT;
    END IF;
    IF queued > 0 THEN
        PERFORM pg_notify('scrm_wecom_tags', '');
    END IF;
    RETURN NULL;
END
$$
"""

TRIGGERS = [
    "CREATE TRIGGER wecom_tags_inserted AFTER INSERT ON tags "
    "REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION wecom_tag_ops_enqueue()",
    "CREATE TRIGGER wecom_tags_updated AFTER UPDATE ON tags "
    "REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows "
    "FOR EACH STATEMENT EXECUTE FUNCTION wecom_tag_ops_enqueue()",
    "CREATE TRIGGER wecom_tags_deleted AFTER DELETE ON tags "
    "REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION wecom_tag_ops_enqueue()",
    "CREATE TRIGGER wecom_tag_groups_updated AFTER UPDATE ON tag_groups "
    "REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows "
    "FOR EACH STATEMENT EXECUTE FUNCTION wecom_tag_ops_enqueue()",
    "CREATE TRIGGER wecom_tag_groups_deleted AFTER DELETE ON tag_groups "
    "REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION wecom_tag_ops_enqueue()",
]


def upgrade() -> None:
    op.create_table(
        'wecom_tag_ops',
        sa.Column('id', sa.BigInteger(), nullable=False),
        sa.Column('tenant_id', sa.Uuid(), nullable=False),
        sa.Column('kind', sa.String(16), nullable=False),
        sa.Column('serial_key', sa.String(80), nullable=False),
        sa.Column('coalesce_key', sa.String(120), nullable=True),
        sa.Column('payload', postgresql.JSONB(), server_default=EMPTY, nullable=False),
        sa.Column('status', sa.String(16), server_default='pending', nullable=False),
        sa.Column('attempts', sa.Integer(), server_default='0', nullable=False),
        sa.Column('next_attempt_at', sa.DateTime(timezone=True), server_default=NOW, nullable=False),
        sa.Column('lease_until', sa.DateTime(timezone=True), nullable=True),
        sa.Column('last_error', sa.Text(), nullable=True),
        sa.Column('result', postgresql.JSONB(), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), server_default=NOW, nullable=False),
        sa.Column('updated_at', sa.DateTime(timezone=True), server_default=NOW, nullable=False),
        sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "status IN ('pending','in_flight','done','failed')",
            name=op.f('ck_wecom_tag_ops_status'),
        ),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_wecom_tag_ops')),
    )
    op.create_index(
        'ix_wecom_tag_ops_due',
        'wecom_tag_ops',
        ['tenant_id', 'next_attempt_at'],
        postgresql_where=sa.text("status = 'pending'"),
    )
    op.create_index(
        'ix_wecom_tag_ops_in_flight',
        'wecom_tag_ops',
        ['lease_until'],
        postgresql_where=sa.text("status = 'in_flight'"),
    )
    op.create_index(
        'ix_wecom_tag_ops_serial',
        'wecom_tag_ops',
        ['tenant_id', 'serial_key', 'id'],
        postgresql_where=sa.text("status IN ('pending', 'in_flight')"),
    )
    op.create_index(
        'ix_wecom_tag_ops_tenant_status', 'wecom_tag_ops', ['tenant_id', 'status', 'id']
    )
    op.create_index(
        'uq_wecom_tag_ops_pending',
        'wecom_tag_ops',
        ['tenant_id', 'coalesce_key'],
        unique=True,
        postgresql_where=sa.text("status = 'pending' AND coalesce_key IS NOT NULL"),
    )
    op.create_table(
        'wecom_corp_tags',
        sa.Column('tenant_id', sa.Uuid(), nullable=False),
        sa.Column('wecom_id', sa.String(64), nullable=False),
        sa.Column('kind', sa.String(8), nullable=False),
        sa.Column('wecom_group_id', sa.String(64), nullable=True),
        sa.Column('name', sa.String(64), nullable=False),
        sa.Column('sort_order', sa.BigInteger(), server_default='0', nullable=False),
        sa.Column('created_time', sa.BigInteger(), nullable=True),
        sa.Column('group_id', sa.BigInteger(), nullable=True),
        sa.Column('tag_id', sa.BigInteger(), nullable=True),
        sa.Column('synced_at', sa.DateTime(timezone=True), server_default=NOW, nullable=False),
        sa.ForeignKeyConstraint(
            ['group_id'], ['tag_groups.id'],
            name=op.f('fk_wecom_corp_tags_group_id_tag_groups'), ondelete='SET NULL',
        ),
        sa.ForeignKeyConstraint(
            ['tag_id'], ['tags.id'],
            name=op.f('fk_wecom_corp_tags_tag_id_tags'), ondelete='SET NULL',
        ),
        sa.PrimaryKeyConstraint('tenant_id', 'wecom_id', name=op.f('pk_wecom_corp_tags')),
    )
    op.execute(ENQUEUE)
    for trigger in TRIGGERS:
        op.execute(trigger)


def downgrade() -> None:
    op.execute('DROP TRIGGER IF EXISTS wecom_tag_groups_deleted ON tag_groups')
    op.execute('DROP TRIGGER IF EXISTS wecom_tag_groups_updated ON tag_groups')
    op.execute('DROP TRIGGER IF EXISTS wecom_tags_deleted ON tags')
    op.execute('DROP TRIGGER IF EXISTS wecom_tags_updated ON tags')
    op.execute('DROP TRIGGER IF EXISTS wecom_tags_inserted ON tags')
    op.execute('DROP FUNCTION IF EXISTS wecom_tag_ops_enqueue()')
    op.drop_table('wecom_corp_tags')
    op.drop_table('wecom_tag_ops')
