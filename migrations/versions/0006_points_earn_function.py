"""points_earn(): an earning by rule as one statement; no tenant-only indexes on
points_ledger and points_lots

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-23 06:40:00.000000

The ledger's most frequent write, in the database: lock the member's account
(creating it), apply the multiplier of the member's tier, check the rule's
daily cap, append the entry and its lot, and move the balance. Each statement
of a PL/pgSQL function takes a fresh snapshot after the lock (READ COMMITTED),
so the cap count and the growth figure include every earning committed before
it, as separate statements would; the caller spends one round trip instead of
five. Callers: services/points/ledger/repository.py `earn_by_rule`.

Outcomes: booked; replayed (the source key was booked before: its entry is
returned); nothing (the rule gives 0 points); capped (the daily cap is reached);
debt (the account owes points from a clawback: nothing was written, and the
caller books the earning with its settlement in Python).
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

POINTS_EARN = """
CREATE OR REPLACE FUNCTION points_earn(
    p_tenant uuid, p_contact uuid, p_rule text, p_base bigint, p_multipliers jsonb,
    p_day text, p_daily_cap integer, p_source_key text, p_reason text, p_order_id text,
    p_details jsonb, p_earned_at timestamptz, p_expires_at timestamptz,
    p_growth_since timestamptz,
    OUT outcome text, OUT account_id bigint, OUT contact_id uuid, OUT tier text,
    OUT entry_id bigint, OUT points bigint, OUT balance_after bigint,
    OUT created_at timestamptz, OUT growth bigint
) LANGUAGE plpgsql AS $fn$
DECLARE
    v_account bigint;
    v_balance bigint;
    v_debt bigint;
    v_tier text;
    v_multiplier text;
    v_points bigint;
    v_entry bigint;
    v_created timestamptz;
BEGIN
    -- The lock every ledger change takes first. A plain row lock leaves no new
    -- row version behind; only a member's first earning inserts the account.
    SELECT a.id, a.balance, a.debt, a.tier INTO v_account, v_balance, v_debt, v_tier
      FROM points_accounts a
     WHERE a.tenant_id = p_tenant AND a.contact_id = p_contact
       FOR UPDATE;
    IF v_account IS NULL THEN
        INSERT INTO points_accounts AS a (tenant_id, contact_id) VALUES (p_tenant, p_contact)
        ON CONFLICT ON CONSTRAINT uq_points_accounts_contact DO UPDATE SET updated_at = now()
        RETURNING a.id, a.balance, a.debt, a.tier INTO v_account, v_balance, v_debt, v_tier;
    END IF;
    account_id := v_account;
    contact_id := p_contact;
    tier := v_tier;
    IF v_debt > 0 THEN
        outcome := 'debt';
        RETURN;
    END IF;
    -- The caller's multipliers per tier ('' for a member without a tier yet).
    v_multiplier := p_multipliers ->> COALESCE(v_tier, '');
    IF v_multiplier IS NULL THEN
        v_multiplier := p_multipliers ->> '';
    END IF;
    v_points := floor(p_base * v_multiplier::numeric);
    IF v_points IS NULL OR v_points <= 0 THEN
        outcome := 'nothing';
        RETURN;
    END IF;
    IF p_daily_cap IS NOT NULL AND (
        SELECT count(*) FROM points_ledger l
         WHERE l.account_id = v_account AND l.rule = p_rule AND l.kind = 'earn'
           AND l.details ->> 'day' = p_day) >= p_daily_cap THEN
        outcome := 'capped';
        RETURN;
    END IF;
    INSERT INTO points_ledger AS l (tenant_id, account_id, kind, points, debt_delta,
                                    balance_after, reason, rule, source_key, order_id,
                                    expires_at, details)
    VALUES (p_tenant, v_account, 'earn', v_points, 0, v_balance + v_points, p_reason, p_rule,
            p_source_key, p_order_id, p_expires_at,
            p_details || jsonb_build_object('multiplier', v_multiplier))
    ON CONFLICT ON CONSTRAINT uq_points_ledger_source DO NOTHING
    RETURNING l.id, l.created_at INTO v_entry, v_created;
    IF v_entry IS NULL THEN
        outcome := 'replayed';
        SELECT l.id, l.account_id, a.contact_id, a.tier, l.points, l.balance_after, l.created_at
          INTO entry_id, account_id, contact_id, tier, points, balance_after, created_at
          FROM points_ledger l JOIN points_accounts a ON a.id = l.account_id
         WHERE l.tenant_id = p_tenant AND l.source_key = p_source_key;
        v_account := account_id;
    ELSE
        INSERT INTO points_lots (tenant_id, account_id, entry_id, order_id, kind, rule, points,
                                 remaining, earned_at, expires_at)
        VALUES (p_tenant, v_account, v_entry, p_order_id, 'earn', p_rule, v_points, v_points,
                COALESCE(p_earned_at, v_created), p_expires_at);
        UPDATE points_accounts a
           SET balance = v_balance + v_points, lifetime_earned = a.lifetime_earned + v_points,
               updated_at = now()
         WHERE a.id = v_account;
        outcome := 'booked';
        entry_id := v_entry;
        points := v_points;
        balance_after := v_balance + v_points;
        created_at := v_created;
    END IF;
    -- Points earned within the growth window, this earning included (tier check).
    IF p_growth_since IS NOT NULL THEN
        SELECT COALESCE(sum(lt.points), 0) INTO growth
          FROM points_lots lt
         WHERE lt.account_id = v_account AND lt.kind = 'earn'
           AND lt.earned_at > p_growth_since;
    END IF;
END
$fn$
"""


def upgrade() -> None:
    op.execute(POINTS_EARN)
    # Written by every earning and read by no query: the ledger's source key leads
    # with tenant_id, and lots are read by account or by expiry date.
    op.drop_index('ix_points_ledger_tenant_id', table_name='points_ledger')
    op.drop_index('ix_points_lots_tenant_id', table_name='points_lots')


def downgrade() -> None:
    op.create_index('ix_points_lots_tenant_id', 'points_lots', ['tenant_id'], unique=False)
    op.create_index('ix_points_ledger_tenant_id', 'points_ledger', ['tenant_id'], unique=False)
    op.execute(
        "DROP FUNCTION IF EXISTS points_earn(uuid, uuid, text, bigint, jsonb, text, integer,"
        " text, text, text, jsonb, timestamptz, timestamptz, timestamptz)"
    )
