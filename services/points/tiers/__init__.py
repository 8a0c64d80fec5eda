"""Membership tiers: upgrades on growth and periodic retention reviews."""
