"""Settings of the tagging service, from the environment (prefix SCRM_TAGGING_)."""

from __future__ import annotations

from pydantic_settings import BaseSettings, SettingsConfigDict


class TaggingSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SCRM_TAGGING_", extra="ignore")
