"""Settings of the WeCom corp-tag mirror, from the environment (prefix SCRM_TAGGING_WECOM_)."""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class WeComTagSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SCRM_TAGGING_WECOM_", extra="ignore")

    # WeCom answers 45033 beyond 5 concurrent calls of a corp: the queue never has more
    # in flight, across every worker process.
    max_concurrent_calls: int = Field(default=5, ge=1, le=5)
    # An op is tried this many times, then kept as failed (listed, retried by hand).
    max_attempts: int = Field(default=8, ge=1, le=100)
    # Retry n waits base * 4^(n-1) seconds, at most retry_max_seconds.
    retry_base_seconds: float = Field(default=2.0, gt=0)
    retry_max_seconds: float = Field(default=3600.0, gt=0)
    # An in-flight op whose worker died is claimed again after this.
    lease_seconds: float = Field(default=120.0, ge=15)


@lru_cache
def wecom_tag_settings() -> WeComTagSettings:
    return WeComTagSettings()
