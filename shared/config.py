"""Process-wide settings, read from the environment (and `.env`) by pydantic-settings.

Invalid values stop the process at start with a message naming the setting
(see `load_settings`); nothing half-configured ever runs.
"""

from __future__ import annotations

import os
import secrets
from functools import lru_cache
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

_PG_SCHEMES = {"postgresql", "postgres", "postgresql+asyncpg", "postgres+asyncpg"}
_REDIS_SCHEMES = {"redis", "rediss", "unix"}


class SettingsError(RuntimeError):
    """A setting is missing or invalid; the message names it."""


class Settings(BaseSettings):
    """Everything a process of any service needs to know about its surroundings."""

    model_config = SettingsConfigDict(
        env_file=".env", extra="ignore", frozen=True, populate_by_name=True
    )

    database_url: str | None = Field(default=None, validation_alias="DATABASE_URL")
    redis_url: str | None = Field(default=None, validation_alias="REDIS_URL")
    host: str = Field(default="127.0.0.1", validation_alias="HOST", min_length=1)
    port: Annotated[int, Field(ge=1, le=65535)] = Field(default=8000, validation_alias="PORT")
    data_dir: Path = Field(default=Path(".scrm"), validation_alias="SCRM_DATA_DIR")
    secret_key: SecretStr | None = Field(default=None, validation_alias="SCRM_SECRET_KEY")
    encryption_keys: SecretStr | None = Field(default=None, validation_alias="SCRM_ENCRYPTION_KEYS")
    log_level: str = Field(default="INFO", validation_alias="SCRM_LOG_LEVEL")
    queue_prefix: str = Field(
        default="scrm", validation_alias="SCRM_QUEUE_PREFIX", pattern=r"^[A-Za-z0-9_.:-]+$"
    )
    db_pool_size: Annotated[int, Field(ge=1, le=500)] = Field(
        default=10, validation_alias="SCRM_DB_POOL_SIZE"
    )
    event_max_attempts: Annotated[int, Field(ge=1, le=100)] = Field(
        default=5, validation_alias="SCRM_EVENT_MAX_ATTEMPTS"
    )
    event_retry_base_seconds: Annotated[float, Field(ge=0, le=3600)] = Field(
        default=2.0, validation_alias="SCRM_EVENT_RETRY_BASE_SECONDS"
    )
    worker_poll_seconds: Annotated[float, Field(gt=0, le=10)] = Field(
        default=0.02, validation_alias="SCRM_WORKER_POLL_SECONDS"
    )
    # Worker processes of each service under `scrm up` (deploy/ scales replicas instead).
    worker_processes: Annotated[int, Field(ge=1, le=32)] = Field(
        default=1, validation_alias="SCRM_WORKER_PROCESSES"
    )
    worker_max_jobs: Annotated[int, Field(ge=1, le=1000)] = Field(
        default=4, validation_alias="SCRM_WORKER_MAX_JOBS"
    )
    # Scheduling priority of worker processes (Unix nice, added to the current one):
    # where workers share cores with an API, a processing backlog yields the CPU to
    # acknowledging integrations and catches up when the flood is over.
    worker_nice: Annotated[int, Field(ge=0, le=19)] = Field(
        default=10, validation_alias="SCRM_WORKER_NICE"
    )
    job_timeout_seconds: Annotated[float, Field(ge=1, le=3600)] = Field(
        default=120.0, validation_alias="SCRM_JOB_TIMEOUT_SECONDS"
    )
    extra_task_modules: str = Field(
        default="",
        validation_alias="SCRM_EXTRA_TASK_MODULES",
        description="Comma-separated modules with more @subscribe handlers / scheduled jobs.",
    )
    # After a pass that published events, the relay waits this long before the next:
    # under a steady stream, what was committed meanwhile goes out in one job per
    # service instead of many small ones (each a consumer transaction of its own).
    relay_pause_seconds: Annotated[float, Field(ge=0, le=5)] = Field(
        default=0.1, validation_alias="SCRM_RELAY_PAUSE_SECONDS"
    )
    redeliver_after_seconds: Annotated[float, Field(ge=0, le=7 * 86400)] = Field(
        default=600.0, validation_alias="SCRM_REDELIVER_AFTER_SECONDS"
    )
    event_retention_days: Annotated[int, Field(ge=8, le=3650)] = Field(
        default=30, validation_alias="SCRM_EVENT_RETENTION_DAYS"
    )
    idempotency_retention_hours: Annotated[int, Field(ge=1, le=24 * 365)] = Field(
        default=72, validation_alias="SCRM_IDEMPOTENCY_RETENTION_HOURS"
    )
    scheduler_horizon_seconds: Annotated[float, Field(ge=1, le=3600)] = Field(
        default=60.0, validation_alias="SCRM_SCHEDULER_HORIZON_SECONDS"
    )
    # Every request body, front doors included; a route that needs more says so
    # (shared.http_guard.body_limit: the CSV import).
    max_body_bytes: Annotated[int, Field(ge=1024, le=1024**3)] = Field(
        default=1024 * 1024, validation_alias="SCRM_MAX_BODY_BYTES"
    )
    # A connection whose request head, or whole body, takes longer is closed (a body
    # with 408 first): slow clients cannot hold connections open (shared.http_server).
    http_header_timeout_seconds: Annotated[float, Field(gt=0, le=3600)] = Field(
        default=10.0, validation_alias="SCRM_HTTP_HEADER_TIMEOUT_SECONDS"
    )
    http_body_timeout_seconds: Annotated[float, Field(gt=0, le=86400)] = Field(
        default=30.0, validation_alias="SCRM_HTTP_BODY_TIMEOUT_SECONDS"
    )

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        parts = urlsplit(value)
        if parts.scheme not in _PG_SCHEMES:
            raise ValueError(
                "must look like postgresql://user@host:port/dbname "
                f"(scheme {parts.scheme!r} is not supported)"
            )
        if not parts.path.strip("/"):
            raise ValueError("must name a database, e.g. postgresql://user@host:5432/scrm")
        return value

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        parts = urlsplit(value)
        if parts.scheme not in _REDIS_SCHEMES:
            raise ValueError(
                f"must look like redis://host:port/db (scheme {parts.scheme!r} is not supported)"
            )
        db = parts.path.strip("/")
        if db and not db.isdigit():
            raise ValueError(f"database number {db!r} is not an integer")
        return value

    @field_validator("log_level")
    @classmethod
    def _check_log_level(cls, value: str) -> str:
        level = value.upper()
        if level not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ValueError("must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
        return level

    @property
    def embedded(self) -> bool:
        """True when at least one server must come from the embedded mode."""
        return self.database_url is None or self.redis_url is None

    def resolved_data_dir(self) -> Path:
        return self.data_dir.expanduser().resolve()


def sqlalchemy_url(url: str) -> str:
    """The asyncpg flavour of a postgres URL, whatever driver suffix the user wrote."""
    scheme, _, rest = url.partition("://")
    if scheme not in _PG_SCHEMES:
        raise SettingsError(f"DATABASE_URL: unsupported scheme {scheme!r}")
    return f"postgresql+asyncpg://{rest}"


def plain_postgres_url(url: str) -> str:
    """The libpq/asyncpg form of a postgres URL (no SQLAlchemy driver suffix)."""
    _, _, rest = url.partition("://")
    return f"postgresql://{rest}"


def load_settings() -> Settings:
    """Read the settings once; raise SettingsError naming each invalid setting."""
    try:
        return Settings()
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            name = str(error["loc"][0]) if error["loc"] else "settings"
            message = error["msg"].removeprefix("Value error, ")
            value = error.get("input")
            shown = "" if "SECRET" in name.upper() else f" (got {value!r})"
            problems.append(f"{name}: {message}{shown}")
        raise SettingsError("invalid configuration: " + "; ".join(problems)) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return load_settings()


def secret_key(settings: Settings) -> bytes:
    """The installation's secret: SCRM_SECRET_KEY, else one generated once in the data dir.

    Kept in a 0600 file so API keys and encrypted fields stay valid across restarts.
    Never logged.
    """
    if settings.secret_key is not None:
        value = settings.secret_key.get_secret_value()
        if len(value) < 32:
            raise SettingsError("SCRM_SECRET_KEY: must be at least 32 characters long")
        return value.encode()
    data_dir = settings.resolved_data_dir()
    path = data_dir / "secret_key"
    if path.exists():
        return path.read_text().strip().encode()
    data_dir.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(48)
    # O_EXCL: two processes starting at once must not write different keys.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip().encode()
    with os.fdopen(fd, "w") as fh:
        fh.write(value + "\n")
    return value.encode()
