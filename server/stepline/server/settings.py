"""Server configuration: flags and STEPLINE_* environment variables, read once at the edge.

Every field is a `stepline serve` flag (`--field-name`) and an environment variable
(`STEPLINE_FIELD_NAME`); a flag wins over the variable. Times are seconds. The whole object
is validated when it is built, so a bad value stops the server before it binds anything.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
# A browser origin as sent in the Origin header: scheme, host and an optional port.
_ORIGIN = re.compile(r"https?://[^/\s:]+(:[0-9]{1,5})?|https?://\[[0-9a-fA-F:.]+\](:[0-9]{1,5})?")


class ConfigError(ValueError):
    """A setting that is well-formed but can't be used (e.g. a certificate file that holds no
    certificate). Raised at start-up, before anything is served."""


class Settings(BaseSettings):
    """Frozen configuration passed down explicitly; nothing below the CLI reads the env."""

    model_config = SettingsConfigDict(env_prefix="STEPLINE_", frozen=True, extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(default=50051, ge=0, le=65535)
    redis_url: str | None = None
    redis_prefix: str = "stepline"
    # How long one Redis command may go unanswered before the call fails UNAVAILABLE.
    redis_timeout: float = Field(default=5.0, gt=0)
    workflows: list[str] = Field(default_factory=lambda: ["stepline_examples"])
    # Start the sample runs that --workflows modules list in EXAMPLE_RUNS, once, when the
    # store holds no run yet (what `scripts/serve.sh` shows a newcomer in the console).
    example_runs: bool = False
    max_concurrent_runs: int = Field(default=64, ge=1)
    lease_ttl: float = Field(default=5.0, gt=0)
    shutdown_grace: float = Field(default=10.0, ge=0)
    # Seconds a finished (success, failed, canceled) run is kept after its last change;
    # 0 keeps runs until they are deleted.
    run_retention: float = Field(default=7 * 24 * 3600.0, ge=0)
    # Events kept per run; older ones are trimmed (a Watch from before them is OUT_OF_RANGE).
    max_events_per_run: int = Field(default=100_000, ge=10)
    reflection: bool = True

    # -- transport limits and keepalive --------------------------------------------------------
    max_message_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    # HTTP/2 streams one connection may have open at once (each RPC is one stream).
    max_concurrent_streams: int = Field(default=1000, ge=1)
    # RPCs in flight on the whole server; beyond it calls fail RESOURCE_EXHAUSTED. None: no cap.
    max_concurrent_rpcs: int | None = Field(default=None, ge=1)
    keepalive_time: float = Field(default=30.0, gt=0)
    keepalive_timeout: float = Field(default=10.0, gt=0)
    # Clients pinging more often than this (without data) are told to go away.
    keepalive_min_ping_interval: float = Field(default=5.0, gt=0)
    # Long-lived connections are closed (gracefully) so clients rebalance across replicas.
    max_connection_age: float = Field(default=1800.0, gt=0)
    max_connection_age_grace: float = Field(default=60.0, ge=0)

    # -- security ------------------------------------------------------------------------------
    # Bearer tokens with every scope. Env: a comma-separated list.
    auth_tokens: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    # One token per line, optionally followed by its scopes (see stepline.server.auth).
    auth_token_file: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # CA bundle that client certificates are checked against (mutual TLS).
    tls_client_ca: Path | None = None
    tls_require_client_auth: bool = False

    # -- HTTP/JSON API (stepline.server.http) ----------------------------------------------------
    # Serve the HTTP/JSON API and its OpenAPI document on this port of `host`, with the same
    # TLS and tokens as gRPC; None turns it off, 0 picks a free port.
    http_port: int | None = Field(default=None, ge=0, le=65535)
    # Browser origins (scheme://host[:port]) allowed to call the HTTP API (CORS); "*" allows
    # any. Empty (the default): no CORS headers, so browsers only allow same-origin pages.
    # Env: a comma-separated list.
    http_cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)

    # -- observability -------------------------------------------------------------------------
    log_level: LogLevel = "INFO"
    log_format: Literal["console", "json"] = "console"
    # Prometheus scrape endpoint (HTTP); None turns it off, 0 picks a free port.
    metrics_port: int | None = Field(default=None, ge=0, le=65535)
    # Address of the metrics endpoint; defaults to `host`.
    metrics_host: str | None = None
    trace_exporter: Literal["none", "console", "otlp"] = "none"
    # OTLP/gRPC collector address; default: the exporter's own (OTEL_EXPORTER_OTLP_* env).
    otlp_endpoint: str | None = None
    service_name: str = Field(default="stepline", min_length=1)
    # The console links a run's trace id here: an http(s) URL with `{trace_id}` in it, e.g.
    # https://tracing.example/trace/{trace_id}. None: the trace id is shown without a link.
    trace_url_template: str | None = Field(
        default=None, pattern=r"^https?://[^\s]*\{trace_id\}[^\s]*$"
    )
    # How often the store is probed for the health status and the queue-depth gauge.
    health_probe_interval: float = Field(default=2.0, gt=0)

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("auth_tokens", mode="before")
    @classmethod
    def _split_tokens(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = value.split(",")
        if isinstance(value, list | tuple):
            return [token.strip() if isinstance(token, str) else token for token in value]
        return value

    @field_validator("http_cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [origin for origin in value.split(",") if origin.strip()]
        if isinstance(value, list | tuple):
            return [o.strip() if isinstance(o, str) else o for o in value]
        return value

    @field_validator("http_cors_origins")
    @classmethod
    def _valid_origins(cls, value: list[str]) -> list[str]:
        for origin in value:
            if origin != "*" and not _ORIGIN.fullmatch(origin):
                raise ValueError(
                    f"{origin!r} is not an origin: scheme://host[:port] without a path, or *"
                )
        return value

    @field_validator("auth_tokens")
    @classmethod
    def _non_empty_tokens(cls, value: list[SecretStr]) -> list[SecretStr]:
        for token in value:
            secret = token.get_secret_value()
            if not secret or any(c.isspace() for c in secret):
                raise ValueError("a token must be non-empty and contain no whitespace")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together: give both or neither")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("tls_client_ca needs tls_cert and tls_key (mutual TLS is TLS)")
        if self.tls_require_client_auth and self.tls_client_ca is None:
            raise ValueError("tls_require_client_auth needs tls_client_ca to check clients with")
        for name in ("tls_cert", "tls_key", "tls_client_ca", "auth_token_file"):
            path: Path | None = getattr(self, name)
            if path is not None and not path.is_file():
                raise ValueError(f"{name}: {str(path)!r} is not a readable file")
        return self

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None
