"""HTTP route of the referral report (in/out only: the figures are made in reports.py)."""

from __future__ import annotations

import uuid
from datetime import date, datetime
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field

from services.points.ledger.booking import now as clock_now
from services.points.referrals import reports
from shared.auth import Principal, require
from shared.deps import SessionDep

# Included by services.points.api, whose router adds the /v1 prefix and the tag.
router = APIRouter()

Reader = Annotated[Principal, require("admin", "operator", "analyst")]


class ReportWindow(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    from_: date = Field(alias="from", description="The first tenant-local day, included.")
    to: date = Field(description="The last tenant-local day, included.")
    days: int
    timezone: str = Field(description="The tenant's time zone the days are in.")
    starts_at: datetime = Field(description="The first day's local midnight.")
    ends_at: datetime = Field(description="The local midnight after the last day (excluded).")


class Funnel(BaseModel):
    invites: int = Field(description="Attribution attempts of the window, refused ones too.")
    attributed: int = Field(description="Those not refused (whatever their status now).")
    qualified: int = Field(
        description="Those that reached qualified or beyond (a first paid order), revoked "
        "later or not."
    )
    succeeded: int = Field(description="Those rewarded: the hold ended without a revocation.")
    revoked: int
    revoked_by_reason: dict[str, int] = Field(
        description="deleted_staff, refunded, fraud, merged, self_invite."
    )
    refused: int
    refused_by_reason: dict[str, int] = Field(
        description="unknown_code, self_invite, cycle, already_known, already_attributed, "
        "duplicate_device, duplicate_ip, daily_cap, ..."
    )


class NewContacts(BaseModel):
    joined: int = Field(description="Contacts created in the window.")
    level1: int = Field(description="Of them, invitees: attributed to an inviter.")
    level1_share: float | None = Field(description="level1 / joined (null: none joined).")
    level2: int = Field(
        description="Of them, invitees whose inviter was invited too (a part of level1)."
    )
    level2_share: float | None = Field(description="level2 / joined (null: none joined).")


class Conversion(BaseModel):
    contacts: int
    paid: int = Field(description="Of them, those with a paid order (by now).")
    share: float | None = Field(description="paid / contacts (null: no contacts).")


class PaidConversion(BaseModel):
    invited: Conversion = Field(description="The window's new contacts who are invitees.")
    organic: Conversion = Field(
        description="The window's new contacts with no attributed referral (a refused "
        "attempt does not count)."
    )


class TopInviter(BaseModel):
    contact_id: uuid.UUID
    attributed: int = Field(description="Their attributed referrals of the window.")
    succeeded: int = Field(description="Of them, those rewarded.")


class KFactor(BaseModel):
    inviters: int = Field(description="Distinct inviters of the window's attributed referrals.")
    attributed: int
    succeeded: int
    invites_per_inviter: float | None = Field(description="attributed / inviters.")
    conversion: float | None = Field(description="succeeded / attributed.")
    k_factor: float | None = Field(
        description="invites_per_inviter x conversion (= succeeded / inviters): the new "
        "customers each active inviter brought."
    )


class Cohort(BaseModel):
    day: date = Field(description="The tenant-local day the invitees were attributed.")
    invitees: int
    retained: int = Field(description="Of them, those active on the day after.")
    d1_retention: float | None = Field(description="retained / invitees.")
    complete: bool = Field(description="False while the day after has not ended.")


class D1Retention(BaseModel):
    invitees: int = Field(description="Invitees of the window's complete cohorts.")
    retained: int = Field(
        description="Of them, those with an interaction or an order on the tenant-local "
        "day after their attribution."
    )
    d1_retention: float | None = Field(description="retained / invitees.")
    measured_through: date | None = Field(description="The last complete cohort's day.")
    alert_below: float = Field(description="The tenant's d1_retention_alert_below.")
    cohorts: list[Cohort]


class RewardSums(BaseModel):
    rewards: int
    points: int = Field(description="The points rewards' points.")
    points_fen: int = Field(description="Those points at their redemption value.")
    coupons_fen: int = Field(description="The coupons' value.")
    items_fen: int = Field(description="The items' points cost at its redemption value.")
    total_fen: int


class RewardCost(BaseModel):
    points_per_yuan_off: int = Field(description="A point is worth 100 / this many fen.")
    granted: RewardSums = Field(description="The rewards granted in the window.")
    clawed_back: RewardSums = Field(description="Of them, those clawed back since.")
    net_fen: int = Field(description="granted minus clawed back.")
    acquired: int = Field(description="Acquired customers: the window's succeeded referrals.")
    per_acquired_fen: int | None = Field(description="net_fen / acquired, rounded.")


class RetentionAlert(BaseModel):
    id: int
    cohort_day: date
    invitees: int
    retained: int
    details: dict[str, float] = Field(description="d1_retention and the threshold.")
    delivered_at: datetime | None = Field(description="When the alert webhook took it.")
    delivery_error: str | None
    created_at: datetime


class ReferralReport(BaseModel):
    window: ReportWindow
    generated_at: datetime
    funnel: Funnel = Field(description="The referrals attributed in the window, as they are now.")
    new_contacts: NewContacts
    paid_conversion: PaidConversion
    top_inviters: list[TopInviter] = Field(
        description="The 10 with the most succeeded, then attributed, referrals."
    )
    k_factor: KFactor
    d1_retention: D1Retention
    reward_cost: RewardCost = Field(description="Reward cost per acquired customer.")
    alerts: list[RetentionAlert] = Field(
        description="D1 retention alerts recorded for the window's cohort days."
    )


@router.get(
    "/points/referrals/report",
    response_model=ReferralReport,
    openapi_extra={"x-scrm-errors": [401, 403, 422]},
)
async def referral_report(
    principal: Reader,
    session: SessionDep,
    from_: Annotated[
        date | None,
        Query(alias="from", description="The first tenant-local day (YYYY-MM-DD), included."),
    ] = None,
    to: Annotated[
        date | None,
        Query(description="The last tenant-local day (YYYY-MM-DD), included; today by default."),
    ] = None,
) -> ReferralReport:
    """The referral programme over a window of tenant-local days (both ends included; the
    last 30 days by default, at most 366): the funnel, the new contacts' level-1 and
    level-2 shares, top inviters, the K-factor, invitees' D1 retention and its alerts,
    paid conversion of invited and organic contacts, and the reward cost per acquired
    customer. 422 when from is after to or the window is longer than 366 days."""
    found = await reports.referral_report(
        session, principal.tenant, first=from_, last=to, now=clock_now()
    )
    return ReferralReport.model_validate(found)
