"""Settings of the users service, from the environment (prefix SCRM_USERS_)."""

from __future__ import annotations

from pydantic_settings import BaseSettings, SettingsConfigDict


class UsersSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SCRM_USERS_", extra="ignore")
