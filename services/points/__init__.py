"""points service: Points ledger, earning rules, redemption, expiry, tiers and benefits.

Other services read from it only through functions exported here, and
otherwise talk to it through events.
"""

SERVICE = "points"
