"""Tables of the referrals part.

`referral_codes`: each contact's invite code, made on first request and stable
afterwards. A code is unguessable (50 random bits in a 32-letter alphabet without
look-alike letters) and unique across tenants, but only ever looked up within its
tenant: another tenant's code is unknown.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import Index, String
from sqlalchemy.orm import Mapped, mapped_column

from shared.db import Base, utcnow_column


class ReferralCode(Base):
    __tablename__ = "referral_codes"
    __table_args__ = (Index("uq_referral_codes_code", "code", unique=True),)

    tenant_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    contact_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = utcnow_column()
