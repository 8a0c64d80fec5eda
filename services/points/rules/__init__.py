"""A tenant's points rules: earning, caps, promotions, tiers' thresholds, expiry."""
