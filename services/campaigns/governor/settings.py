"""Each tenant's governor settings: WeCom quotas, frequency caps, quiet hours, the
sensitive-word filter (`GET|PUT /v1/campaigns/settings`).

Defaults (SPEC §7): a contact receives at most 4 WeCom mass messages a natural month
and one a day from the same staff member; quiet hours 22:00-08:00 tenant time; no
frequency caps beyond those until ops set some; the filter blocks a hit.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

CLOCK = re.compile(r"([01]\d|2[0-3]):([0-5]\d)")
CAP_CHANNELS = ("wecom_single", "wecom_group", "wecom_moment", "sms", "in_app", "webhook")
STAGES = ("potential", "new", "active", "silent", "churned")
MAX_WORDS = 10_000


class QuietHours(BaseModel):
    model_config = ConfigDict(extra="forbid")

    start: str = Field(examples=["22:00"], description="HH:MM, tenant time.")
    end: str = Field(examples=["08:00"], description="HH:MM, tenant time; before start wraps.")

    @field_validator("start", "end")
    @classmethod
    def _clock(cls, value: str) -> str:
        if not CLOCK.fullmatch(value):
            raise ValueError("must be a time of day HH:MM (24 h)")
        return value

    @model_validator(mode="after")
    def _not_empty(self) -> QuietHours:
        if self.start == self.end:
            raise ValueError("start and end are the same time: use null for no quiet hours")
        return self


class Cap(BaseModel):
    """At most so many sends per tenant-local day, week (Monday on) and natural month."""

    model_config = ConfigDict(extra="forbid")

    day: int | None = Field(default=None, ge=0, le=1000)
    week: int | None = Field(default=None, ge=0, le=1000)
    month: int | None = Field(default=None, ge=0, le=10_000)


class SensitiveWords(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mode: Literal["block", "review"] = Field(
        default="block", description="A hit blocks the send (skipped) or queues it for review."
    )
    words: list[str] = Field(default_factory=list, max_length=MAX_WORDS)

    @field_validator("words")
    @classmethod
    def _words(cls, words: list[str]) -> list[str]:
        clean = []
        for word in words:
            word = word.strip()
            if not 1 <= len(word) <= 50:
                raise ValueError("each word is 1 to 50 characters")
            clean.append(word)
        return sorted(set(clean))


class SmsProvider(BaseModel):
    """The tenant's SMS gateway (sends/sms.py): requests are signed with `secret`, and
    its delivery receipts come to `POST /v1/sms/{tenant_slug}/receipts` signed the same
    way."""

    model_config = ConfigDict(extra="forbid")

    base_url: str = Field(pattern=r"^https?://[^\s/?#]+[^\s?#]*$", max_length=500)
    api_key: str = Field(min_length=1, max_length=200)
    secret: str = Field(
        max_length=200,
        description="16 characters or more; shown masked (send it back masked to keep it).",
    )
    sign_name: str = Field(
        default="", max_length=30, description="The signature the gateway prefixes (【品牌】)."
    )

    @field_validator("secret")
    @classmethod
    def _secret(cls, value: str) -> str:
        if not value.startswith("****") and len(value) < 16:
            raise ValueError("at least 16 characters")
        return value


class GovernorSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    quiet_hours: QuietHours | None = Field(
        default_factory=lambda: QuietHours(start="22:00", end="08:00"),
        description="Sends due in the window are deferred to its end (never dropped); "
        "welcome messages are not held back.",
    )
    wecom_monthly_quota: int | None = Field(
        default=4,
        ge=0,
        le=100,
        description="WeCom mass messages (wecom_single) a contact may receive per natural "
        "month (WeCom's older rule: 4); null for no monthly limit.",
    )
    wecom_weekly_quota: int | None = Field(
        default=None, ge=0, le=100, description="Newer corps: e.g. 7 a week."
    )
    wecom_daily_quota: int | None = Field(
        default=None, ge=0, le=100, description="Newer corps: e.g. 1 a day."
    )
    wecom_per_staff_daily: int = Field(
        default=1,
        ge=0,
        le=100,
        description="Mass messages a contact may receive a day from the same staff member.",
    )
    caps: dict[str, Cap] = Field(
        default_factory=dict,
        description="Frequency caps per channel (wecom_single, wecom_group, wecom_moment, "
        "sms, in_app, webhook).",
    )
    stage_caps: dict[str, Cap] = Field(
        default_factory=dict,
        description="Caps on all of a contact's journey sends by lifecycle stage, e.g. "
        '{"silent": {"month": 1}, "churned": {"week": 1}}.',
    )
    sensitive_words: SensitiveWords = Field(default_factory=SensitiveWords)
    webhook_secret: str | None = Field(
        default=None,
        max_length=200,
        description="Signs the journeys' webhook calls (X-Scrm-Signature), 16 characters "
        "or more; shown masked (send the masked value back to keep it).",
    )

    expiry_notice: str = Field(
        default="您有 {{expiring_points}} 积分将于 {{expiring_at}} 到期，记得及时使用。",  # noqa: RUF001
        min_length=1,
        max_length=500,
        description="The text of the points service's expiry notices (points.expiring), "
        "with the template variables of a journey's sends.",
    )
    wecom_agent_id: int | None = Field(
        default=None,
        ge=1,
        le=2**31 - 1,
        description="The WeCom app's AgentId: staff are told of their tasks (and of overdue "
        "ones) by app message; without it they see them in the task list only.",
    )
    sms_provider: SmsProvider | None = Field(
        default=None, description="Where SMS sends go; without one they are skipped (no_sms)."
    )

    @field_validator("expiry_notice")
    @classmethod
    def _notice(cls, value: str) -> str:
        from services.campaigns.journeys.definition import JourneyError, check_template

        try:
            check_template(value, "expiry_notice", 500)
        except JourneyError as exc:
            raise ValueError(exc.message.split(": ", 1)[-1]) from None
        return value

    @field_validator("webhook_secret")
    @classmethod
    def _secret(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("****") and len(value) < 16:
            raise ValueError("at least 16 characters")
        return value

    @field_validator("caps")
    @classmethod
    def _cap_channels(cls, caps: dict[str, Cap]) -> dict[str, Cap]:
        for channel in caps:
            if channel not in CAP_CHANNELS:
                raise ValueError(f"unknown channel {channel!r}; one of {', '.join(CAP_CHANNELS)}")
        return caps

    @field_validator("stage_caps")
    @classmethod
    def _stages(cls, caps: dict[str, Cap]) -> dict[str, Cap]:
        for stage in caps:
            if stage not in STAGES:
                raise ValueError(f"unknown lifecycle stage {stage!r}; one of {', '.join(STAGES)}")
        return caps


def load(raw: dict[str, Any] | None) -> GovernorSettings:
    """Stored settings (or the defaults)."""
    return GovernorSettings.model_validate(raw or {})
