"""Settings of the points service, from the environment (prefix SCRM_POINTS_)."""

from __future__ import annotations

import functools

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class PointsSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SCRM_POINTS_", extra="ignore")

    referral_link_base: str = Field(
        default="https://scrm.example.com/r",
        pattern=r"^https?://\S+$",
        description="Share links are this + '/' + the invite code (the brand's landing "
        "page, which resolves the code).",
    )


@functools.cache
def points_settings() -> PointsSettings:
    return PointsSettings()
