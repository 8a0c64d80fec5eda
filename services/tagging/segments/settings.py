"""Settings of the segments part, from the environment (prefix SCRM_TAGGING_SEGMENTS_)."""

from __future__ import annotations

from functools import lru_cache

from pydantic_settings import BaseSettings, SettingsConfigDict


class SegmentSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SCRM_TAGGING_SEGMENTS_", extra="ignore")

    # A tenant with at most this many live profiles gets a new or edited segment
    # built in the request; a bigger one in the tagging worker.
    inline_build_contacts: int = 10_000
    # A build waits this long for a lock and runs this long before it fails (and is
    # retried with backoff, up to build_max_attempts).
    build_lock_timeout_ms: int = 10_000
    build_statement_timeout_ms: int = 600_000
    build_retry_base_seconds: float = 30.0
    build_max_attempts: int = 8
    # Memory for the hash tables of a build or preview over every contact (PostgreSQL's
    # work_mem for that transaction): event counts of a million contacts fit in 64 MB,
    # where the server's default spills them to disk. JIT compilation costs more than
    # it saves on these statements.
    evaluation_work_mem: str = "64MB"


@lru_cache(maxsize=1)
def segment_settings() -> SegmentSettings:
    return SegmentSettings()
