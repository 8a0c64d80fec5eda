"""Settings of the campaigns service, from the environment (prefix SCRM_CAMPAIGNS_)."""

from __future__ import annotations

import functools

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class CampaignsSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SCRM_CAMPAIGNS_", extra="ignore")

    wecom_check_seconds: float = Field(
        default=300.0,
        gt=0,
        description="How often a WeCom mass message's results are asked for until all are in.",
    )
    wecom_remind_after_seconds: float = Field(
        default=7200.0,
        gt=0,
        description="A staff member who has not sent a mass message this long after it was "
        "created is reminded (remind_groupmsg_send; at most 3 reminders in 24 h).",
    )
    wecom_deadline_hours: float = Field(
        default=24.0,
        gt=0,
        description="After this, a mass message not sent counts as not done: it is cancelled "
        "and its recipients' sends fail (`not_confirmed`).",
    )
    wecom_lease_seconds: float = Field(
        default=60.0,
        gt=0,
        description="How long a WeCom call may go unanswered before WeCom is asked what it "
        "already created.",
    )
    welcome_lease_seconds: float = Field(
        default=5.0,
        gt=0,
        description="The same for welcome messages (their code is valid for 20 s).",
    )
    max_send_attempts: int = Field(default=6, ge=1, le=20)


@functools.cache
def campaigns_settings() -> CampaignsSettings:
    return CampaignsSettings()
