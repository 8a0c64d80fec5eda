"""The points ledger: accounts, entries and lots; earning, spending, refunds' clawbacks,
adjustments and expiry; contact merges; the consistency check (verify)."""
