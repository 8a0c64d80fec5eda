"""Settings of the users service, from the environment."""

from __future__ import annotations

from functools import lru_cache
from typing import Annotated

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class UsersSettings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", populate_by_name=True)

    wecom_max_skew_seconds: Annotated[int, Field(ge=0, le=86400)] = Field(
        default=300, validation_alias="SCRM_WECOM_MAX_SKEW_SECONDS"
    )
    webhook_max_skew_seconds: Annotated[int, Field(ge=0, le=86400)] = Field(
        default=300, validation_alias="SCRM_WEBHOOK_MAX_SKEW_SECONDS"
    )
    wecom_api_base: str = Field(
        default="https://qyapi.weixin.qq.com", validation_alias="SCRM_WECOM_API_BASE"
    )
    wecom_retry_base_seconds: Annotated[float, Field(ge=0.01, le=3600)] = Field(
        default=30.0, validation_alias="SCRM_WECOM_RETRY_BASE_SECONDS"
    )
    wecom_retry_max_seconds: Annotated[float, Field(ge=0.01, le=86400)] = Field(
        default=1800.0, validation_alias="SCRM_WECOM_RETRY_MAX_SECONDS"
    )
    ingest_batch_size: Annotated[int, Field(ge=1, le=5000)] = Field(
        default=100, validation_alias="SCRM_INGEST_BATCH_SIZE"
    )
    ingest_batch_wait_ms: Annotated[float, Field(ge=0, le=1000)] = Field(
        default=0.0, validation_alias="SCRM_INGEST_BATCH_WAIT_MS"
    )
    ingest_writers: Annotated[int, Field(ge=1, le=32)] = Field(
        default=4, validation_alias="SCRM_INGEST_WRITERS"
    )
    ingest_flood_events_per_second: Annotated[int, Field(ge=0, le=10_000_000)] = Field(
        default=1200, validation_alias="SCRM_INGEST_FLOOD_EVENTS_PER_SECOND"
    )
    inbound_batch_size: Annotated[int, Field(ge=1, le=1000)] = Field(
        default=100, validation_alias="SCRM_INBOUND_BATCH_SIZE"
    )
    inbound_concurrency: Annotated[int, Field(ge=1, le=32)] = Field(
        default=2, validation_alias="SCRM_INBOUND_CONCURRENCY"
    )
    tenant_cache_seconds: Annotated[float, Field(ge=0, le=3600)] = Field(
        default=10.0, validation_alias="SCRM_TENANT_CACHE_SECONDS"
    )


@lru_cache(maxsize=1)
def users_settings() -> UsersSettings:
    return UsersSettings()
