"""Referrals (裂变): invite codes and share links, attribution, delayed rewards,
anti-fraud, reports. The points service pays the rewards."""
