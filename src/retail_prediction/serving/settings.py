"""Service configuration from environment variables (pydantic-settings); see docs/api.md for the table."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from ..artifact.members import (
    DEFAULT_MAX_JSON_BYTES,
    DEFAULT_MAX_MEMBER_BYTES,
    DEFAULT_MAX_TOTAL_BYTES,
    ArtifactLimits,
)
from ..artifact.store import ModelSource

# What the README's run command trains to; the model used when no source is configured.
DEFAULT_LOCAL_MODEL = Path("models/model.tar.gz")

LogLevel = Literal["critical", "error", "warning", "info", "debug"]


class Settings(BaseSettings):
    """Every knob of the service. Field names are the environment variable names, case-insensitive."""

    model_config = SettingsConfigDict(case_sensitive=False, extra="ignore", protected_namespaces=())

    # ---- HTTP server
    port: int = Field(8000, ge=1, le=65535)
    host: str = "0.0.0.0"
    workers: int = Field(1, ge=1, le=64)
    log_level: LogLevel = "info"
    # Log lines as JSON (for collectors) or plain text (for a person); auto: text when stderr is a terminal.
    log_format: Literal["auto", "json", "text"] = "auto"
    # Comma-separated origins allowed by CORS; empty = no CORS headers at all.
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)

    # ---- HTTP limits: what one client can hold (memory, a connection slot, time); see serve.py
    # Request line + headers; over it the request gets 431 and the connection is closed.
    max_header_bytes: int = Field(16_384, ge=1024, le=1_048_576)
    # From a request's first byte to the end of its headers (slowloris), and from there to the end of the
    # body (a trickled upload): over either the connection is closed.
    header_timeout_seconds: float = Field(10.0, gt=0)
    body_timeout_seconds: float = Field(30.0, gt=0)
    # A connection with no request in progress (fresh, or between keep-alive requests) is closed after this.
    keep_alive_timeout_seconds: float = Field(5.0, gt=0)
    # Open connections; beyond it a new connection gets 503 and is closed. Sized for one 1-worker pod: at
    # worst each holds MAX_BODY_BYTES, so memory stays bounded by about MAX_CONNECTIONS x MAX_BODY_BYTES.
    max_connections: int = Field(256, ge=1, le=100_000)

    # ---- model source: MODEL_URI, or MODEL_BUCKET + MODEL_KEY, or the local default
    model_uri: str | None = None
    model_bucket: str | None = None
    model_key: str | None = None
    model_sha256: str | None = None
    model_poll_seconds: float = Field(60.0, ge=0)
    model_dir: Path = Path("/tmp/retail-prediction")
    # Backoff of the background load: first retry after the initial delay, doubling up to the max.
    model_retry_initial_seconds: float = Field(0.5, gt=0)
    model_retry_max_seconds: float = Field(30.0, gt=0)
    # Caps on an archive's *decompressed* bytes, counted while reading (a gzip bomb stops at the cap):
    # per member, in total, per JSON member. Sized from the real model; see docs/api.md.
    model_max_member_bytes: int = Field(DEFAULT_MAX_MEMBER_BYTES, ge=1024)
    model_max_total_bytes: int = Field(DEFAULT_MAX_TOTAL_BYTES, ge=1024)
    model_max_json_bytes: int = Field(DEFAULT_MAX_JSON_BYTES, ge=1024)

    # ---- input limits
    max_batch_size: int = Field(1000, ge=1)
    max_basket_lines: int = Field(500, ge=1)
    max_body_bytes: int = Field(1_048_576, ge=1024)
    max_string_length: int = Field(100, ge=1, le=10_000)

    # ---- prediction cache (entries; 0 = off). Default chosen from docs/benchmarks.md.
    cache_size: int = Field(0, ge=0)
    # How /predict runs the model: micro-batched on the event loop (default), inline per request, or in
    # the thread pool. A tuning knob, kept so docs/benchmarks.md can be reproduced.
    predict_execution: Literal["batched", "inline", "threadpool"] = "batched"

    # ---- shadow model: a candidate scored on a sample of live baskets after the answer, never answering
    shadow_model_uri: str | None = None
    shadow_model_bucket: str | None = None
    shadow_model_key: str | None = None
    shadow_model_sha256: str | None = None
    # Share of scoring calls (requests) whose baskets the shadow also scores.
    shadow_sample_rate: float = Field(1.0, ge=0.0, le=1.0)
    # Baskets waiting for the shadow; beyond it a sample is dropped (counted), never waited for.
    shadow_queue_baskets: int = Field(2000, ge=1, le=1_000_000)
    # The shadow's worker sleeps so that it scores at most this share of the time: its CPU stays bounded
    # whatever the traffic (what it cannot score is dropped and counted).
    shadow_max_cpu_share: float = Field(0.2, gt=0.0, le=1.0)

    # ---- monitoring: the drift gauges compare the latest this-many scored baskets with the model's
    # reference profile (0 = off). 2,000 baskets keep the PSI's sampling noise near 0.005.
    drift_window_baskets: int = Field(2000, ge=0, le=1_000_000)

    # ---- build metadata of the image, shown by /model/info
    git_commit: str | None = None
    git_branch: str | None = None
    build_date: str | None = None

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            return [origin.strip() for origin in value.split(",") if origin.strip()]
        return value

    @field_validator("model_uri", "model_bucket", "model_key", "model_sha256", "shadow_model_uri",
                     "shadow_model_bucket", "shadow_model_key", "shadow_model_sha256", "git_commit", "git_branch",
                     "build_date", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        # Deployment templates often render an unset variable as "": treat it as not given.
        return None if isinstance(value, str) and not value.strip() else value

    def artifact_limits(self) -> ArtifactLimits:
        return ArtifactLimits(self.model_max_member_bytes, self.model_max_total_bytes, self.model_max_json_bytes)

    def model_source(self) -> ModelSource:
        """Where to load the model from; ValueError when the variables contradict each other."""
        source = _source("MODEL", self.model_uri, self.model_bucket, self.model_key)
        return source or ModelSource.parse(str(DEFAULT_LOCAL_MODEL.resolve()))

    @property
    def shadow_configured(self) -> bool:
        return bool(self.shadow_model_uri or self.shadow_model_bucket or self.shadow_model_key)

    def shadow_source(self) -> ModelSource:
        """Where to load the shadow model from (only called when `shadow_configured`)."""
        source = _source("SHADOW_MODEL", self.shadow_model_uri, self.shadow_model_bucket, self.shadow_model_key)
        if source is None:
            raise ValueError("no shadow model source")
        return source


def _source(prefix: str, uri: str | None, bucket: str | None, key: str | None) -> ModelSource | None:
    """PREFIX_URI, or PREFIX_BUCKET + PREFIX_KEY; None when none is set; ValueError when they contradict."""
    if uri and (bucket or key):
        raise ValueError(f"set either {prefix}_URI or {prefix}_BUCKET + {prefix}_KEY, not both")
    if uri:
        return ModelSource.parse(uri)
    if bucket or key:
        if not (bucket and key):
            raise ValueError(f"{prefix}_BUCKET and {prefix}_KEY must be set together")
        return ModelSource.from_bucket_key(bucket, key)
    return None
