"""Settings of the campaigns service, from the environment (prefix SCRM_CAMPAIGNS_)."""

from __future__ import annotations

from pydantic_settings import BaseSettings, SettingsConfigDict


class CampaignsSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SCRM_CAMPAIGNS_", extra="ignore")
