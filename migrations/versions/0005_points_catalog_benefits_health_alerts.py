"""points catalog, benefits, health alerts

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23 04:49:09.774524
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = '0005'
down_revision: str | None = '0004'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('points_benefits',
    sa.Column('id', sa.UUID(), nullable=False),
    sa.Column('code', sa.String(length=64), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('tiers', postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'[]'::jsonb"), nullable=False),
    sa.Column('member_quota', sa.Integer(), nullable=True),
    sa.Column('member_period', sa.String(length=8), server_default='month', nullable=False),
    sa.Column('total_quota', sa.Integer(), nullable=True),
    sa.Column('total_period', sa.String(length=8), server_default='week', nullable=False),
    sa.Column('active', sa.Boolean(), server_default=sa.text('true'), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('tenant_id', sa.UUID(), nullable=False),
    sa.CheckConstraint("member_period IN ('week','month','quarter','year')", name=op.f('ck_points_benefits_member_period_known')),
    sa.CheckConstraint("total_period IN ('week','month','quarter','year')", name=op.f('ck_points_benefits_total_period_known')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_points_benefits')),
    sa.UniqueConstraint('tenant_id', 'code', name='uq_points_benefits_code')
    )
    op.create_index(op.f('ix_points_benefits_tenant_id'), 'points_benefits', ['tenant_id'], unique=False)
    op.create_table('points_health_alerts',
    sa.Column('id', sa.BigInteger(), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('week_start', sa.Date(), nullable=False),
    sa.Column('earned', sa.BigInteger(), nullable=False),
    sa.Column('spent', sa.BigInteger(), nullable=False),
    sa.Column('details', postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'{}'::jsonb"), nullable=False),
    sa.Column('delivered_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('delivery_error', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('tenant_id', sa.UUID(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_points_health_alerts')),
    sa.UniqueConstraint('tenant_id', 'kind', 'week_start', name='uq_points_health_alert_week')
    )
    op.create_index(op.f('ix_points_health_alerts_tenant_id'), 'points_health_alerts', ['tenant_id'], unique=False)
    op.create_table('points_items',
    sa.Column('id', sa.UUID(), nullable=False),
    sa.Column('sku', sa.String(length=64), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('points_cost', sa.Integer(), nullable=False),
    sa.Column('cash_fen', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('coupon_value_fen', sa.BigInteger(), nullable=True),
    sa.Column('stock', sa.Integer(), nullable=True),
    sa.Column('per_member_limit', sa.Integer(), nullable=True),
    sa.Column('hold_minutes', sa.Integer(), server_default='30', nullable=False),
    sa.Column('active', sa.Boolean(), server_default=sa.text('true'), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('tenant_id', sa.UUID(), nullable=False),
    sa.CheckConstraint("kind IN ('coupon','lottery','points_cash')", name=op.f('ck_points_items_kind_known')),
    sa.CheckConstraint('cash_fen >= 0', name=op.f('ck_points_items_cash_not_negative')),
    sa.CheckConstraint('points_cost > 0', name=op.f('ck_points_items_costs_points')),
    sa.CheckConstraint('stock IS NULL OR stock >= 0', name=op.f('ck_points_items_stock_not_negative')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_points_items')),
    sa.UniqueConstraint('tenant_id', 'sku', name='uq_points_items_sku')
    )
    op.create_index(op.f('ix_points_items_tenant_id'), 'points_items', ['tenant_id'], unique=False)
    op.create_table('points_benefit_claims',
    sa.Column('id', sa.BigInteger(), nullable=False),
    sa.Column('benefit_id', sa.UUID(), nullable=False),
    sa.Column('account_id', sa.BigInteger(), nullable=False),
    sa.Column('contact_id', sa.UUID(), nullable=False),
    sa.Column('tier', sa.String(length=32), nullable=True),
    sa.Column('member_period_start', sa.Date(), nullable=False),
    sa.Column('claimed_on', sa.Date(), nullable=False),
    sa.Column('created_by', sa.String(length=200), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('tenant_id', sa.UUID(), nullable=False),
    sa.ForeignKeyConstraint(['account_id'], ['points_accounts.id'], name=op.f('fk_points_benefit_claims_account_id_points_accounts')),
    sa.ForeignKeyConstraint(['benefit_id'], ['points_benefits.id'], name=op.f('fk_points_benefit_claims_benefit_id_points_benefits')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_points_benefit_claims'))
    )
    op.create_index('ix_points_benefit_claims_member', 'points_benefit_claims', ['benefit_id', 'account_id', 'member_period_start'], unique=False)
    op.create_index('ix_points_benefit_claims_month', 'points_benefit_claims', ['tenant_id', 'claimed_on'], unique=False)
    op.create_index(op.f('ix_points_benefit_claims_tenant_id'), 'points_benefit_claims', ['tenant_id'], unique=False)
    op.create_table('points_benefit_usage',
    sa.Column('id', sa.BigInteger(), nullable=False),
    sa.Column('benefit_id', sa.UUID(), nullable=False),
    sa.Column('period_start', sa.Date(), nullable=False),
    sa.Column('used', sa.Integer(), server_default='0', nullable=False),
    sa.Column('tenant_id', sa.UUID(), nullable=False),
    sa.ForeignKeyConstraint(['benefit_id'], ['points_benefits.id'], name=op.f('fk_points_benefit_usage_benefit_id_points_benefits')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_points_benefit_usage')),
    sa.UniqueConstraint('benefit_id', 'period_start', name='uq_points_benefit_usage_period')
    )
    op.create_index(op.f('ix_points_benefit_usage_tenant_id'), 'points_benefit_usage', ['tenant_id'], unique=False)
    op.create_table('points_lottery_prizes',
    sa.Column('id', sa.BigInteger(), nullable=False),
    sa.Column('item_id', sa.UUID(), nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('weight', sa.Integer(), nullable=False),
    sa.Column('stock', sa.Integer(), nullable=True),
    sa.Column('is_blank', sa.Boolean(), server_default=sa.text('false'), nullable=False),
    sa.Column('tenant_id', sa.UUID(), nullable=False),
    sa.CheckConstraint('stock IS NULL OR stock >= 0', name=op.f('ck_points_lottery_prizes_stock_not_negative')),
    sa.CheckConstraint('weight > 0', name=op.f('ck_points_lottery_prizes_weight_positive')),
    sa.ForeignKeyConstraint(['item_id'], ['points_items.id'], name=op.f('fk_points_lottery_prizes_item_id_points_items')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_points_lottery_prizes'))
    )
    op.create_index('ix_points_lottery_prizes_item', 'points_lottery_prizes', ['item_id', 'position'], unique=False)
    op.create_index(op.f('ix_points_lottery_prizes_tenant_id'), 'points_lottery_prizes', ['tenant_id'], unique=False)
    op.create_table('points_redemptions',
    sa.Column('id', sa.BigInteger(), nullable=False),
    sa.Column('item_id', sa.UUID(), nullable=False),
    sa.Column('account_id', sa.BigInteger(), nullable=False),
    sa.Column('contact_id', sa.UUID(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('points', sa.Integer(), nullable=False),
    sa.Column('cash_fen', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('entry_id', sa.BigInteger(), nullable=False),
    sa.Column('reversal_entry_id', sa.BigInteger(), nullable=True),
    sa.Column('order_id', sa.String(length=128), nullable=True),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('seed', sa.String(length=64), nullable=True),
    sa.Column('prize_id', sa.BigInteger(), nullable=True),
    sa.Column('outcome', postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'{}'::jsonb"), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('tenant_id', sa.UUID(), nullable=False),
    sa.CheckConstraint("status IN ('completed','held','spent','released')", name=op.f('ck_points_redemptions_status_known')),
    sa.ForeignKeyConstraint(['account_id'], ['points_accounts.id'], name=op.f('fk_points_redemptions_account_id_points_accounts')),
    sa.ForeignKeyConstraint(['entry_id'], ['points_ledger.id'], name=op.f('fk_points_redemptions_entry_id_points_ledger')),
    sa.ForeignKeyConstraint(['item_id'], ['points_items.id'], name=op.f('fk_points_redemptions_item_id_points_items')),
    sa.ForeignKeyConstraint(['prize_id'], ['points_lottery_prizes.id'], name=op.f('fk_points_redemptions_prize_id_points_lottery_prizes')),
    sa.ForeignKeyConstraint(['reversal_entry_id'], ['points_ledger.id'], name=op.f('fk_points_redemptions_reversal_entry_id_points_ledger')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_points_redemptions')),
    sa.UniqueConstraint('tenant_id', 'order_id', name='uq_points_redemptions_order')
    )
    op.create_index('ix_points_redemptions_held', 'points_redemptions', ['expires_at'], unique=False, postgresql_where="status = 'held'")
    op.create_index('ix_points_redemptions_member', 'points_redemptions', ['item_id', 'account_id'], unique=False)
    op.create_index(op.f('ix_points_redemptions_tenant_id'), 'points_redemptions', ['tenant_id'], unique=False)



def downgrade() -> None:
    op.drop_index(op.f('ix_points_redemptions_tenant_id'), table_name='points_redemptions')
    op.drop_index('ix_points_redemptions_member', table_name='points_redemptions')
    op.drop_index('ix_points_redemptions_held', table_name='points_redemptions', postgresql_where="status = 'held'")
    op.drop_table('points_redemptions')
    op.drop_index(op.f('ix_points_lottery_prizes_tenant_id'), table_name='points_lottery_prizes')
    op.drop_index('ix_points_lottery_prizes_item', table_name='points_lottery_prizes')
    op.drop_table('points_lottery_prizes')
    op.drop_index(op.f('ix_points_benefit_usage_tenant_id'), table_name='points_benefit_usage')
    op.drop_table('points_benefit_usage')
    op.drop_index(op.f('ix_points_benefit_claims_tenant_id'), table_name='points_benefit_claims')
    op.drop_index('ix_points_benefit_claims_month', table_name='points_benefit_claims')
    op.drop_index('ix_points_benefit_claims_member', table_name='points_benefit_claims')
    op.drop_table('points_benefit_claims')
    op.drop_index(op.f('ix_points_items_tenant_id'), table_name='points_items')
    op.drop_table('points_items')
    op.drop_index(op.f('ix_points_health_alerts_tenant_id'), table_name='points_health_alerts')
    op.drop_table('points_health_alerts')
    op.drop_index(op.f('ix_points_benefits_tenant_id'), table_name='points_benefits')
    op.drop_table('points_benefits')

