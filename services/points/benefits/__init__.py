"""Member benefits by tier: quotas, claims and the monthly usage report."""
