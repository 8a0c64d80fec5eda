"""users service: contacts, identities, inbound events

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23 02:04:55.019513
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = '0003'
down_revision: str | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('contact_merges',
    sa.Column('id', sa.BigInteger(), autoincrement=True, nullable=False),
    sa.Column('survivor_id', sa.UUID(), nullable=False),
    sa.Column('merged_id', sa.UUID(), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('merged_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('tenant_id', sa.UUID(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_contact_merges')),
    sa.UniqueConstraint('merged_id', name=op.f('uq_contact_merges_merged_id'))
    )
    op.create_index(op.f('ix_contact_merges_survivor_id'), 'contact_merges', ['survivor_id'], unique=False)
    op.create_index(op.f('ix_contact_merges_tenant_id'), 'contact_merges', ['tenant_id'], unique=False)
    op.create_table('contacts',
    sa.Column('id', sa.UUID(), nullable=False),
    sa.Column('name_enc', sa.LargeBinary(), nullable=True),
    sa.Column('name_grams', postgresql.ARRAY(sa.LargeBinary()), server_default=sa.text("'{}'::bytea[]"), nullable=False),
    sa.Column('avatar_url', sa.Text(), nullable=True),
    sa.Column('gender', sa.Integer(), nullable=True),
    sa.Column('contact_type', sa.Integer(), nullable=True),
    sa.Column('corp_name', sa.String(length=200), nullable=True),
    sa.Column('attributes', postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'{}'::jsonb"), nullable=False),
    sa.Column('owner_staff_userid', sa.String(length=64), nullable=True),
    sa.Column('channel_state', sa.String(length=64), nullable=True),
    sa.Column('lifecycle_stage', sa.String(length=16), server_default='potential', nullable=False),
    sa.Column('enriched_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('merged_into_id', sa.UUID(), nullable=True),
    sa.Column('erased_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('pseudonym', sa.String(length=40), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('tenant_id', sa.UUID(), nullable=False),
    sa.CheckConstraint("lifecycle_stage IN ('potential','new','active','silent','churned')", name=op.f('ck_contacts_lifecycle_known')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_contacts'))
    )
    op.create_index(op.f('ix_contacts_lifecycle_stage'), 'contacts', ['lifecycle_stage'], unique=False)
    op.create_index('ix_contacts_name_grams', 'contacts', ['name_grams'], unique=False, postgresql_using='gin')
    op.create_index(op.f('ix_contacts_owner_staff_userid'), 'contacts', ['owner_staff_userid'], unique=False)
    op.create_index('ix_contacts_tenant_created', 'contacts', ['tenant_id', 'created_at', 'id'], unique=False)
    op.create_index(op.f('ix_contacts_tenant_id'), 'contacts', ['tenant_id'], unique=False)
    op.create_table('customer_groups',
    sa.Column('id', sa.BigInteger(), autoincrement=True, nullable=False),
    sa.Column('chat_id', sa.String(length=64), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=True),
    sa.Column('owner_userid', sa.String(length=64), nullable=True),
    sa.Column('status', sa.String(length=16), server_default='active', nullable=False),
    sa.Column('member_count', sa.Integer(), server_default='0', nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('dismissed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('tenant_id', sa.UUID(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_customer_groups')),
    sa.UniqueConstraint('tenant_id', 'chat_id', name='uq_customer_groups_chat')
    )
    op.create_index(op.f('ix_customer_groups_tenant_id'), 'customer_groups', ['tenant_id'], unique=False)
    op.create_table('group_members',
    sa.Column('id', sa.BigInteger(), autoincrement=True, nullable=False),
    sa.Column('chat_id', sa.String(length=64), nullable=False),
    sa.Column('member_id', sa.String(length=64), nullable=False),
    sa.Column('member_type', sa.Integer(), nullable=False),
    sa.Column('contact_id', sa.UUID(), nullable=True),
    sa.Column('joined_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('join_scene', sa.Integer(), nullable=True),
    sa.Column('left_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('tenant_id', sa.UUID(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_group_members')),
    sa.UniqueConstraint('tenant_id', 'chat_id', 'member_id', name='uq_group_members_member')
    )
    op.create_index(op.f('ix_group_members_contact_id'), 'group_members', ['contact_id'], unique=False)
    op.create_index(op.f('ix_group_members_tenant_id'), 'group_members', ['tenant_id'], unique=False)
    op.create_table('inbound_events',
    sa.Column('id', sa.BigInteger(), autoincrement=True, nullable=False),
    sa.Column('source', sa.String(length=16), nullable=False),
    sa.Column('dedupe_key', sa.String(length=300), nullable=False),
    sa.Column('type', sa.String(length=100), nullable=False),
    sa.Column('payload_enc', sa.LargeBinary(), nullable=True),
    sa.Column('contact_id', sa.UUID(), nullable=True),
    sa.Column('received_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('processed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('outcome', sa.String(length=100), nullable=True),
    sa.Column('tenant_id', sa.UUID(), nullable=False),
    sa.CheckConstraint("source IN ('wecom','event','import')", name=op.f('ck_inbound_events_source_known')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_inbound_events')),
    sa.UniqueConstraint('tenant_id', 'source', 'dedupe_key', name='uq_inbound_events_dedupe')
    )
    op.create_index(op.f('ix_inbound_events_contact_id'), 'inbound_events', ['contact_id'], unique=False)
    op.create_index(op.f('ix_inbound_events_tenant_id'), 'inbound_events', ['tenant_id'], unique=False)
    op.create_table('staff',
    sa.Column('id', sa.BigInteger(), autoincrement=True, nullable=False),
    sa.Column('userid', sa.String(length=64), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=True),
    sa.Column('active', sa.Boolean(), server_default=sa.text('true'), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('tenant_id', sa.UUID(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_staff')),
    sa.UniqueConstraint('tenant_id', 'userid', name='uq_staff_userid')
    )
    op.create_index(op.f('ix_staff_tenant_id'), 'staff', ['tenant_id'], unique=False)
    op.create_table('webhook_secrets',
    sa.Column('id', sa.UUID(), nullable=False),
    sa.Column('secret_enc', sa.LargeBinary(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('revoked_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('tenant_id', sa.UUID(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_webhook_secrets'))
    )
    op.create_index(op.f('ix_webhook_secrets_tenant_id'), 'webhook_secrets', ['tenant_id'], unique=False)
    op.create_table('consent_changes',
    sa.Column('id', sa.BigInteger(), autoincrement=True, nullable=False),
    sa.Column('contact_id', sa.UUID(), nullable=False),
    sa.Column('channel', sa.String(length=32), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('source', sa.String(length=64), nullable=False),
    sa.Column('note', sa.Text(), nullable=True),
    sa.Column('changed_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('tenant_id', sa.UUID(), nullable=False),
    sa.CheckConstraint("status IN ('opted_in','opted_out')", name=op.f('ck_consent_changes_status_known')),
    sa.ForeignKeyConstraint(['contact_id'], ['contacts.id'], name=op.f('fk_consent_changes_contact_id_contacts'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_consent_changes'))
    )
    op.create_index('ix_consent_changes_lookup', 'consent_changes', ['tenant_id', 'contact_id', 'channel', 'id'], unique=False)
    op.create_index(op.f('ix_consent_changes_tenant_id'), 'consent_changes', ['tenant_id'], unique=False)
    op.create_table('contact_events',
    sa.Column('id', sa.BigInteger(), autoincrement=True, nullable=False),
    sa.Column('contact_id', sa.UUID(), nullable=False),
    sa.Column('type', sa.String(length=100), nullable=False),
    sa.Column('source', sa.String(length=16), nullable=False),
    sa.Column('source_event_id', sa.String(length=300), nullable=False),
    sa.Column('occurred_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('properties', postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'{}'::jsonb"), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('tenant_id', sa.UUID(), nullable=False),
    sa.ForeignKeyConstraint(['contact_id'], ['contacts.id'], name=op.f('fk_contact_events_contact_id_contacts'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_contact_events')),
    sa.UniqueConstraint('tenant_id', 'source', 'source_event_id', name='uq_contact_events_source')
    )
    op.create_index('ix_contact_events_contact', 'contact_events', ['tenant_id', 'contact_id', 'occurred_at'], unique=False)
    op.create_index(op.f('ix_contact_events_tenant_id'), 'contact_events', ['tenant_id'], unique=False)
    op.create_table('contact_follows',
    sa.Column('id', sa.BigInteger(), autoincrement=True, nullable=False),
    sa.Column('contact_id', sa.UUID(), nullable=False),
    sa.Column('staff_userid', sa.String(length=64), nullable=False),
    sa.Column('status', sa.String(length=24), nullable=False),
    sa.Column('remark', sa.String(length=200), nullable=True),
    sa.Column('state', sa.String(length=64), nullable=True),
    sa.Column('welcome_code', sa.String(length=200), nullable=True),
    sa.Column('add_way', sa.Integer(), nullable=True),
    sa.Column('added_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('removed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('tenant_id', sa.UUID(), nullable=False),
    sa.CheckConstraint("status IN ('active','half','deleted_by_staff','deleted_by_contact')", name=op.f('ck_contact_follows_status_known')),
    sa.ForeignKeyConstraint(['contact_id'], ['contacts.id'], name=op.f('fk_contact_follows_contact_id_contacts'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_contact_follows')),
    sa.UniqueConstraint('tenant_id', 'contact_id', 'staff_userid', name='uq_contact_follows_pair')
    )
    op.create_index(op.f('ix_contact_follows_contact_id'), 'contact_follows', ['contact_id'], unique=False)
    op.create_index(op.f('ix_contact_follows_tenant_id'), 'contact_follows', ['tenant_id'], unique=False)
    op.create_table('contact_identities',
    sa.Column('id', sa.BigInteger(), autoincrement=True, nullable=False),
    sa.Column('contact_id', sa.UUID(), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('value_bidx', sa.LargeBinary(), nullable=False),
    sa.Column('value_enc', sa.LargeBinary(), nullable=False),
    sa.Column('source', sa.String(length=32), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('tenant_id', sa.UUID(), nullable=False),
    sa.CheckConstraint("kind IN ('external_userid','unionid','openid','phone','shop_customer_id','referral_code','email')", name=op.f('ck_contact_identities_kind_known')),
    sa.ForeignKeyConstraint(['contact_id'], ['contacts.id'], name=op.f('fk_contact_identities_contact_id_contacts'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_contact_identities')),
    sa.UniqueConstraint('tenant_id', 'kind', 'value_bidx', name='uq_contact_identities_value')
    )
    op.create_index(op.f('ix_contact_identities_contact_id'), 'contact_identities', ['contact_id'], unique=False)
    op.create_index(op.f('ix_contact_identities_tenant_id'), 'contact_identities', ['tenant_id'], unique=False)
    op.create_table('wecom_settings',
    sa.Column('tenant_id', sa.UUID(), nullable=False),
    sa.Column('corp_id', sa.String(length=64), nullable=False),
    sa.Column('token_enc', sa.LargeBinary(), nullable=False),
    sa.Column('aes_key_enc', sa.LargeBinary(), nullable=False),
    sa.Column('secret_enc', sa.LargeBinary(), nullable=True),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], name=op.f('fk_wecom_settings_tenant_id_tenants'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('tenant_id', name=op.f('pk_wecom_settings'))
    )


def downgrade() -> None:
    op.drop_table('wecom_settings')
    op.drop_index(op.f('ix_contact_identities_tenant_id'), table_name='contact_identities')
    op.drop_index(op.f('ix_contact_identities_contact_id'), table_name='contact_identities')
    op.drop_table('contact_identities')
    op.drop_index(op.f('ix_contact_follows_tenant_id'), table_name='contact_follows')
    op.drop_index(op.f('ix_contact_follows_contact_id'), table_name='contact_follows')
    op.drop_table('contact_follows')
    op.drop_index(op.f('ix_contact_events_tenant_id'), table_name='contact_events')
    op.drop_index('ix_contact_events_contact', table_name='contact_events')
    op.drop_table('contact_events')
    op.drop_index(op.f('ix_consent_changes_tenant_id'), table_name='consent_changes')
    op.drop_index('ix_consent_changes_lookup', table_name='consent_changes')
    op.drop_table('consent_changes')
    op.drop_index(op.f('ix_webhook_secrets_tenant_id'), table_name='webhook_secrets')
    op.drop_table('webhook_secrets')
    op.drop_index(op.f('ix_staff_tenant_id'), table_name='staff')
    op.drop_table('staff')
    op.drop_index(op.f('ix_inbound_events_tenant_id'), table_name='inbound_events')
    op.drop_index(op.f('ix_inbound_events_contact_id'), table_name='inbound_events')
    op.drop_table('inbound_events')
    op.drop_index(op.f('ix_group_members_tenant_id'), table_name='group_members')
    op.drop_index(op.f('ix_group_members_contact_id'), table_name='group_members')
    op.drop_table('group_members')
    op.drop_index(op.f('ix_customer_groups_tenant_id'), table_name='customer_groups')
    op.drop_table('customer_groups')
    op.drop_index(op.f('ix_contacts_tenant_id'), table_name='contacts')
    op.drop_index('ix_contacts_tenant_created', table_name='contacts')
    op.drop_index(op.f('ix_contacts_owner_staff_userid'), table_name='contacts')
    op.drop_index('ix_contacts_name_grams', table_name='contacts', postgresql_using='gin')
    op.drop_index(op.f('ix_contacts_lifecycle_stage'), table_name='contacts')
    op.drop_table('contacts')
    op.drop_index(op.f('ix_contact_merges_tenant_id'), table_name='contact_merges')
    op.drop_index(op.f('ix_contact_merges_survivor_id'), table_name='contact_merges')
    op.drop_table('contact_merges')
