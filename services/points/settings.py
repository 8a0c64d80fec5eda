"""Settings of the points service, from the environment (prefix SCRM_POINTS_)."""

from __future__ import annotations

from pydantic_settings import BaseSettings, SettingsConfigDict


class PointsSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SCRM_POINTS_", extra="ignore")
