"""Server configuration: flags and STEPLINE_* environment variables, read once at the edge."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Frozen configuration passed down explicitly; nothing below the CLI reads the env."""

    model_config = SettingsConfigDict(env_prefix="STEPLINE_", frozen=True, extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(default=50051, ge=0, le=65535)
    redis_url: str | None = None
    redis_prefix: str = "stepline"
    workflows: list[str] = Field(default_factory=lambda: ["stepline_examples"])
    max_concurrent_runs: int = Field(default=64, ge=1)
    lease_ttl: float = Field(default=5.0, gt=0)
    shutdown_grace: float = Field(default=10.0, ge=0)
    max_message_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    reflection: bool = True
    log_level: str = "INFO"
