"""Service configuration from environment variables (pydantic-settings); see docs/api.md for the table."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
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

# JWT signature algorithms AUTH_JWT_ALGORITHMS may name: public-key ones only (never "none" or HS*).
ASYMMETRIC_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")

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

    # ---- the Open Inference Protocol (KServe v2) routes: the model's name in /v2/models/{name}
    oip_model_name: str = Field("retail-prediction", pattern=r"^[A-Za-z0-9_.-]{1,64}$")

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
    shadow_max_cpu_share: float = Field(0.1, gt=0.0, le=1.0)

    # ---- monitoring: the drift gauges compare the latest this-many scored baskets with the model's
    # reference profile (0 = off). 2,000 baskets keep the PSI's sampling noise near 0.005.
    drift_window_baskets: int = Field(2000, ge=0, le=1_000_000)

    # ---- the sampled payload log (serving/payload_log.py; docs/operations.md): off unless the rate is > 0
    # The share of /predict and /predict/batch requests written to the log (0 = off, 1 = every request).
    payload_log_sample_rate: float = Field(0.0, ge=0.0, le=1.0)
    # Where parts go: a local directory or s3://bucket/prefix (needed when the rate is > 0).
    payload_log_uri: str | None = None
    # What a record keeps of the customer id: nothing (default), a keyed hash (HMAC-SHA256, so the same
    # customer can be followed over time without the id being recoverable), or the id itself.
    payload_log_customer_id: Literal["drop", "hash", "keep"] = "drop"
    # The HMAC key for `hash`, given directly or as a file (a mounted Kubernetes secret); never logged.
    payload_log_hash_key: SecretStr | None = None
    payload_log_hash_key_file: Path | None = None
    # Records (baskets) and their basket lines waiting for the writer: beyond either, records are dropped
    # and counted; they bound the log's memory whatever the sink does.
    payload_log_queue_records: int = Field(10_000, ge=1, le=1_000_000)
    payload_log_queue_lines: int = Field(200_000, ge=1, le=10_000_000)
    # A part is closed and written when it is this old, or holds this many bytes of JSON before gzip.
    payload_log_flush_seconds: float = Field(60.0, gt=0, le=3600)
    payload_log_part_bytes: int = Field(8_388_608, ge=1024, le=268_435_456)

    # ---- who may call (docs/api.md, "Authentication"): off (anyone who reaches the port), keys or jwt
    auth_mode: Literal["off", "keys", "jwt"] = "off"
    # keys: a file of `name:key` lines (a mounted Secret), re-read when it changes
    auth_keys_file: Path | None = None
    # jwt: tokens of this issuer for this audience, signed with one of these algorithms, checked against the
    # issuer's JWKS (from its OIDC discovery document, or AUTH_JWKS_URI)
    auth_jwt_issuer: str | None = None
    auth_jwt_audience: str | None = None
    auth_jwt_algorithms: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["RS256", "ES256"])
    auth_jwks_uri: str | None = None
    auth_jwks_timeout_seconds: float = Field(3.0, gt=0, le=30)
    # The JWKS is fetched again after this long; a token with an unknown kid fetches it at most this often.
    auth_jwks_refresh_seconds: float = Field(300.0, gt=0)
    auth_jwks_min_refresh_seconds: float = Field(30.0, ge=0)
    # Verified tokens remembered (until they expire), so a repeated token is not verified again.
    auth_token_cache_size: int = Field(4096, ge=0, le=1_000_000)
    # Distinct callers that get their own `caller` metric label; the rest are counted as "other".
    auth_caller_labels: int = Field(50, ge=1, le=1000)
    # /metrics and /model/info on this port only (0: on PORT with the rest); see serve.py
    metrics_port: int = Field(0, ge=0, le=65535)

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

    @field_validator("auth_jwt_algorithms", mode="before")
    @classmethod
    def _split_algorithms(cls, value: object) -> object:
        if isinstance(value, str):
            value = [name.strip() for name in value.split(",") if name.strip()]
        if isinstance(value, list):
            refused = [name for name in value if str(name) not in ASYMMETRIC_ALGORITHMS]
            if refused:  # "none" and the HMAC algorithms never: a JWKS holds public keys
                raise ValueError(f"AUTH_JWT_ALGORITHMS: {refused} not allowed; choose from {ASYMMETRIC_ALGORITHMS}")
            if not value:
                raise ValueError("AUTH_JWT_ALGORITHMS: at least one algorithm")
        return value

    @model_validator(mode="after")
    def _auth_complete(self) -> Settings:
        if self.auth_mode == "keys" and self.auth_keys_file is None:
            raise ValueError("AUTH_MODE=keys needs AUTH_KEYS_FILE")
        if self.auth_mode == "jwt" and not (self.auth_jwt_issuer and self.auth_jwt_audience):
            raise ValueError("AUTH_MODE=jwt needs AUTH_JWT_ISSUER and AUTH_JWT_AUDIENCE")
        if self.metrics_port and self.metrics_port == self.port:
            raise ValueError("METRICS_PORT must differ from PORT (0: serve /metrics on PORT)")
        if self.metrics_port and self.workers > 1:
            raise ValueError("METRICS_PORT needs WORKERS=1 (one process serves both ports)")
        return self

    @field_validator("model_uri", "model_bucket", "model_key", "model_sha256", "shadow_model_uri",
                     "shadow_model_bucket", "shadow_model_key", "shadow_model_sha256", "git_commit", "git_branch",
                     "build_date", "payload_log_uri", "payload_log_hash_key", "payload_log_hash_key_file",
                     "auth_keys_file", "auth_jwt_issuer", "auth_jwt_audience", "auth_jwks_uri",
                     mode="before")
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        # Deployment templates often render an unset variable as "": treat it as not given.
        return None if isinstance(value, str) and not value.strip() else value

    @model_validator(mode="after")
    def _payload_log_complete(self) -> Settings:
        if self.payload_log_sample_rate > 0 and not self.payload_log_uri:
            raise ValueError("PAYLOAD_LOG_SAMPLE_RATE > 0 needs PAYLOAD_LOG_URI (a directory or s3://bucket/prefix)")
        if self.payload_log_customer_id == "hash" and not (self.payload_log_hash_key or
                                                           self.payload_log_hash_key_file):
            raise ValueError("PAYLOAD_LOG_CUSTOMER_ID=hash needs PAYLOAD_LOG_HASH_KEY or PAYLOAD_LOG_HASH_KEY_FILE")
        return self

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
