"""points service: ledger, lots, tiers, expiry notices, refunds, rules

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23 04:47:14.412527
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = '0004'
down_revision: str | None = '0003'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('points_accounts',
    sa.Column('id', sa.BigInteger(), nullable=False),
    sa.Column('contact_id', sa.UUID(), nullable=False),
    sa.Column('balance', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('debt', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('lifetime_earned', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('lifetime_spent', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('tier', sa.String(length=32), nullable=True),
    sa.Column('tier_since', sa.DateTime(timezone=True), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('tenant_id', sa.UUID(), nullable=False),
    sa.CheckConstraint('balance >= 0', name=op.f('ck_points_accounts_balance_not_negative')),
    sa.CheckConstraint('debt >= 0', name=op.f('ck_points_accounts_debt_not_negative')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_points_accounts')),
    sa.UniqueConstraint('tenant_id', 'contact_id', name='uq_points_accounts_contact')
    )
    op.create_index(op.f('ix_points_accounts_tenant_id'), 'points_accounts', ['tenant_id'], unique=False)
    op.create_table('points_order_refunds',
    sa.Column('id', sa.BigInteger(), nullable=False),
    sa.Column('order_id', sa.String(length=128), nullable=False),
    sa.Column('source_key', sa.String(length=200), nullable=False),
    sa.Column('refund_fen', sa.BigInteger(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('tenant_id', sa.UUID(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_points_order_refunds')),
    sa.UniqueConstraint('tenant_id', 'source_key', name='uq_points_order_refunds_source')
    )
    op.create_index('ix_points_order_refunds_order', 'points_order_refunds', ['tenant_id', 'order_id'], unique=False)
    op.create_index(op.f('ix_points_order_refunds_tenant_id'), 'points_order_refunds', ['tenant_id'], unique=False)
    op.create_table('points_tier_reviews',
    sa.Column('id', sa.BigInteger(), nullable=False),
    sa.Column('period_start', sa.Date(), nullable=False),
    sa.Column('downgraded', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('tenant_id', sa.UUID(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_points_tier_reviews')),
    sa.UniqueConstraint('tenant_id', 'period_start', name='uq_points_tier_review_period')
    )
    op.create_index(op.f('ix_points_tier_reviews_tenant_id'), 'points_tier_reviews', ['tenant_id'], unique=False)
    op.create_table('points_config',
    sa.Column('tenant_id', sa.UUID(), nullable=False),
    sa.Column('config', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], name=op.f('fk_points_config_tenant_id_tenants')),
    sa.PrimaryKeyConstraint('tenant_id', name=op.f('pk_points_config'))
    )
    op.create_table('points_expiry_notices',
    sa.Column('id', sa.BigInteger(), nullable=False),
    sa.Column('account_id', sa.BigInteger(), nullable=False),
    sa.Column('contact_id', sa.UUID(), nullable=False),
    sa.Column('expires_on', sa.Date(), nullable=False),
    sa.Column('points', sa.BigInteger(), nullable=False),
    sa.Column('channels', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('tenant_id', sa.UUID(), nullable=False),
    sa.ForeignKeyConstraint(['account_id'], ['points_accounts.id'], name=op.f('fk_points_expiry_notices_account_id_points_accounts')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_points_expiry_notices')),
    sa.UniqueConstraint('account_id', 'expires_on', name='uq_points_expiry_notice')
    )
    op.create_index(op.f('ix_points_expiry_notices_tenant_id'), 'points_expiry_notices', ['tenant_id'], unique=False)
    op.create_table('points_ledger',
    sa.Column('id', sa.BigInteger(), nullable=False),
    sa.Column('account_id', sa.BigInteger(), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('points', sa.BigInteger(), nullable=False),
    sa.Column('debt_delta', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('balance_after', sa.BigInteger(), nullable=False),
    sa.Column('reason', sa.Text(), server_default='', nullable=False),
    sa.Column('rule', sa.String(length=64), nullable=True),
    sa.Column('source_key', sa.String(length=200), nullable=True),
    sa.Column('order_id', sa.String(length=128), nullable=True),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('details', postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'{}'::jsonb"), nullable=False),
    sa.Column('created_by', sa.String(length=200), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('tenant_id', sa.UUID(), nullable=False),
    sa.CheckConstraint("kind IN ('earn','spend','expire','clawback','adjustment','reversal')", name=op.f('ck_points_ledger_kind_known')),
    sa.CheckConstraint('points <> 0 OR debt_delta <> 0', name=op.f('ck_points_ledger_moves_something')),
    sa.ForeignKeyConstraint(['account_id'], ['points_accounts.id'], name=op.f('fk_points_ledger_account_id_points_accounts')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_points_ledger')),
    sa.UniqueConstraint('tenant_id', 'source_key', name='uq_points_ledger_source')
    )
    op.create_index('ix_points_ledger_account', 'points_ledger', ['account_id', 'id'], unique=False)
    op.create_index('ix_points_ledger_order', 'points_ledger', ['tenant_id', 'order_id'], unique=False, postgresql_where='order_id IS NOT NULL')
    op.create_index(op.f('ix_points_ledger_tenant_id'), 'points_ledger', ['tenant_id'], unique=False)
    op.create_table('points_tier_changes',
    sa.Column('id', sa.BigInteger(), nullable=False),
    sa.Column('account_id', sa.BigInteger(), nullable=False),
    sa.Column('from_tier', sa.String(length=32), nullable=True),
    sa.Column('to_tier', sa.String(length=32), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('details', postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'{}'::jsonb"), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('tenant_id', sa.UUID(), nullable=False),
    sa.ForeignKeyConstraint(['account_id'], ['points_accounts.id'], name=op.f('fk_points_tier_changes_account_id_points_accounts')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_points_tier_changes'))
    )
    op.create_index('ix_points_tier_changes_account', 'points_tier_changes', ['account_id', 'id'], unique=False)
    op.create_index(op.f('ix_points_tier_changes_tenant_id'), 'points_tier_changes', ['tenant_id'], unique=False)
    op.create_table('points_lots',
    sa.Column('id', sa.BigInteger(), nullable=False),
    sa.Column('account_id', sa.BigInteger(), nullable=False),
    sa.Column('entry_id', sa.BigInteger(), nullable=False),
    sa.Column('order_id', sa.String(length=128), nullable=True),
    sa.Column('kind', sa.String(length=16), server_default='earn', nullable=False),
    sa.Column('rule', sa.String(length=64), nullable=True),
    sa.Column('points', sa.Integer(), nullable=False),
    sa.Column('remaining', sa.Integer(), nullable=False),
    sa.Column('earned_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('tenant_id', sa.UUID(), nullable=False),
    sa.CheckConstraint('remaining >= 0 AND remaining <= points', name=op.f('ck_points_lots_remaining_in_range')),
    sa.ForeignKeyConstraint(['account_id'], ['points_accounts.id'], name=op.f('fk_points_lots_account_id_points_accounts')),
    sa.ForeignKeyConstraint(['entry_id'], ['points_ledger.id'], name=op.f('fk_points_lots_entry_id_points_ledger')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_points_lots'))
    )
    op.create_index('ix_points_lots_account_earned', 'points_lots', ['account_id', 'earned_at'], unique=False)
    op.create_index('ix_points_lots_expiring', 'points_lots', ['expires_at'], unique=False, postgresql_where='remaining > 0')
    op.create_index('ix_points_lots_open', 'points_lots', ['account_id', 'earned_at', 'id'], unique=False, postgresql_where='remaining > 0')
    op.create_index(op.f('ix_points_lots_tenant_id'), 'points_lots', ['tenant_id'], unique=False)
    op.create_table('points_lot_moves',
    sa.Column('id', sa.BigInteger(), nullable=False),
    sa.Column('entry_id', sa.BigInteger(), nullable=False),
    sa.Column('lot_id', sa.BigInteger(), nullable=False),
    sa.Column('points', sa.Integer(), nullable=False),
    sa.Column('tenant_id', sa.UUID(), nullable=False),
    sa.ForeignKeyConstraint(['entry_id'], ['points_ledger.id'], name=op.f('fk_points_lot_moves_entry_id_points_ledger')),
    sa.ForeignKeyConstraint(['lot_id'], ['points_lots.id'], name=op.f('fk_points_lot_moves_lot_id_points_lots')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_points_lot_moves'))
    )
    op.create_index(op.f('ix_points_lot_moves_entry_id'), 'points_lot_moves', ['entry_id'], unique=False)
    op.create_index('ix_points_lot_moves_lot', 'points_lot_moves', ['lot_id'], unique=False)
    op.create_index(op.f('ix_points_lot_moves_tenant_id'), 'points_lot_moves', ['tenant_id'], unique=False)

    # The ledger is append-only: corrections are new entries, never edits.
    op.execute(
        """
        CREATE FUNCTION points_ledger_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'points_ledger is append-only (% refused)', TG_OP
                USING ERRCODE = 'restrict_violation';
        END $$
        """
    )
    op.execute(
        "CREATE TRIGGER points_ledger_append_only BEFORE UPDATE OR DELETE ON points_ledger"
        " FOR EACH ROW EXECUTE FUNCTION points_ledger_append_only()"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS points_ledger_append_only ON points_ledger")
    op.execute("DROP FUNCTION IF EXISTS points_ledger_append_only()")
    op.drop_index(op.f('ix_points_lot_moves_tenant_id'), table_name='points_lot_moves')
    op.drop_index('ix_points_lot_moves_lot', table_name='points_lot_moves')
    op.drop_index(op.f('ix_points_lot_moves_entry_id'), table_name='points_lot_moves')
    op.drop_table('points_lot_moves')
    op.drop_index(op.f('ix_points_lots_tenant_id'), table_name='points_lots')
    op.drop_index('ix_points_lots_open', table_name='points_lots', postgresql_where='remaining > 0')
    op.drop_index('ix_points_lots_expiring', table_name='points_lots', postgresql_where='remaining > 0')
    op.drop_index('ix_points_lots_account_earned', table_name='points_lots')
    op.drop_table('points_lots')
    op.drop_index(op.f('ix_points_tier_changes_tenant_id'), table_name='points_tier_changes')
    op.drop_index('ix_points_tier_changes_account', table_name='points_tier_changes')
    op.drop_table('points_tier_changes')
    op.drop_index(op.f('ix_points_ledger_tenant_id'), table_name='points_ledger')
    op.drop_index('ix_points_ledger_order', table_name='points_ledger', postgresql_where='order_id IS NOT NULL')
    op.drop_index('ix_points_ledger_account', table_name='points_ledger')
    op.drop_table('points_ledger')
    op.drop_index(op.f('ix_points_expiry_notices_tenant_id'), table_name='points_expiry_notices')
    op.drop_table('points_expiry_notices')
    op.drop_table('points_config')
    op.drop_index(op.f('ix_points_tier_reviews_tenant_id'), table_name='points_tier_reviews')
    op.drop_table('points_tier_reviews')
    op.drop_index(op.f('ix_points_order_refunds_tenant_id'), table_name='points_order_refunds')
    op.drop_index('ix_points_order_refunds_order', table_name='points_order_refunds')
    op.drop_table('points_order_refunds')
    op.drop_index(op.f('ix_points_accounts_tenant_id'), table_name='points_accounts')
    op.drop_table('points_accounts')
