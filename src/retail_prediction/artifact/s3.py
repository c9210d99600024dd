"""The S3 client and the translation of its failures into `StoreError`, shared by everything that talks to S3.

Kept apart from `store` (model sources, fetch, publish) so the registry and the payload log can use the
client, the error codes and the small object helpers (`put_bytes`, `list_keys`, `open_object`) without
the artifact-fetching logic.

The S3 client uses boto3's default credential chain (env keys, IRSA web identity via
``AWS_ROLE_ARN`` + ``AWS_WEB_IDENTITY_TOKEN_FILE``, config files, instance metadata) and boto3's own
endpoint overrides (``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``, and ``AWS_ENDPOINT_URL_STS`` for
the web-identity exchange; honoured since boto3 1.28, verified with the pinned 1.44).

Addressing style: ``AWS_S3_ADDRESSING_STYLE`` (``path``/``virtual``/``auto``) when set; otherwise
``path`` when an endpoint override is set (S3-compatible stores such as SeaweedFS or MinIO rarely
have wildcard DNS for ``bucket.host``; boto3 1.44 already picks path style there, this pins it), and
boto3's default against AWS itself.

Every failure surfaces as `StoreError` with a short ``reason`` code (see `REASONS`) and a message
naming the URI, so callers can report health and log without knowing botocore.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import boto3
from boto3.exceptions import S3UploadFailedError
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    CredentialRetrievalError,
    HTTPClientError,
    IncompleteReadError,
    NoCredentialsError,
    PartialCredentialsError,
    ReadTimeoutError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError

# reason codes carried by StoreError
REASONS = (
    "not_found",  # no such key / local file
    "no_such_bucket",
    "access_denied",  # credentials valid but not allowed
    "bad_credentials",  # missing, unknown, wrong or expired credentials
    "unreachable",  # cannot connect, timed out, or the store answered 5xx
    "too_large",  # object over the download limit
    "invalid",  # bad S3 settings, or refusing to publish something that is not a model archive
    "io",  # local file system error, or an S3 error with no better code
    "conflict",  # a create-only write found the object already there (If-None-Match: *)
)

CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 30.0
MAX_ATTEMPTS = 3

_CODE_REASONS: Mapping[str, str] = {
    "NoSuchBucket": "no_such_bucket",
    "NoSuchKey": "not_found",
    "NotFound": "not_found",
    "404": "not_found",
    "AccessDenied": "access_denied",
    "Forbidden": "access_denied",
    "403": "access_denied",
    "AllAccessDisabled": "access_denied",
    "InvalidAccessKeyId": "bad_credentials",
    "SignatureDoesNotMatch": "bad_credentials",
    "ExpiredToken": "bad_credentials",
    "InvalidToken": "bad_credentials",
    "TokenRefreshRequired": "bad_credentials",
    "PreconditionFailed": "conflict",
    "ConditionalRequestConflict": "conflict",
    "412": "conflict",
}


class StoreError(Exception):
    """Reading or writing an artifact location failed. ``reason`` is a short code from `REASONS`."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


# --------------------------------------------------------------------------------------------------
# S3 client


_client_lock = threading.Lock()
_client: Any = None


def _addressing_style() -> str | None:
    style = os.environ.get("AWS_S3_ADDRESSING_STYLE", "").strip().lower()
    if style:
        if style not in ("path", "virtual", "auto"):
            raise StoreError("invalid", f"AWS_S3_ADDRESSING_STYLE={style!r}: use path, virtual or auto")
        return style
    ignored = os.environ.get("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "").lower() == "true"
    overridden = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    return "path" if overridden and not ignored else None


def make_s3_client(
    *,
    connect_timeout: float = CONNECT_TIMEOUT_S,
    read_timeout: float = READ_TIMEOUT_S,
    max_attempts: int = MAX_ATTEMPTS,
    **session_kwargs: Any,
) -> Any:
    """A new S3 client from a fresh session (default credential chain unless keys are passed)."""
    style = _addressing_style()
    config = Config(
        retries={"max_attempts": max_attempts, "mode": "standard"},
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        s3={"addressing_style": style} if style else None,
    )
    # A fresh Session per client: the default session is shared global state and not thread-safe.
    return boto3.session.Session(**session_kwargs).client("s3", config=config)


def s3_client() -> Any:
    """The process-wide S3 client, created once (clients are thread-safe; creating them is not)."""
    global _client
    with _client_lock:
        if _client is None:
            _client = make_s3_client()
        return _client


def reset_s3_client() -> None:
    """Forget the cached client, e.g. after the environment (endpoint, credentials) changed."""
    global _client
    with _client_lock:
        _client = None


# --------------------------------------------------------------------------------------------------
# Error translation


def _client_error(uri: str, action: str, exc: ClientError) -> StoreError:
    error = exc.response.get("Error", {})
    code = str(error.get("Code", ""))
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    detail = error.get("Message") or code or f"HTTP {status}"
    if exc.operation_name.startswith("AssumeRole") and status < 500:
        # The credential chain's STS exchange (IRSA web identity, assumed role) was refused: whatever
        # STS's code, the fix is on the credentials side, not the object's permissions.
        message = f"cannot {action} {uri}: {exc.operation_name} refused the credentials ({code}: {detail})"
        return StoreError("bad_credentials", message)
    reason = _CODE_REASONS.get(code) or ("unreachable" if status >= 500 else "io")
    return StoreError(reason, f"cannot {action} {uri}: {reason.replace('_', ' ')} ({code}: {detail})")


def _botocore_error(uri: str, action: str, exc: BotoCoreError) -> StoreError:
    if isinstance(exc, NoCredentialsError | PartialCredentialsError | CredentialRetrievalError):
        return StoreError("bad_credentials", f"cannot {action} {uri}: no usable AWS credentials ({exc})")
    if isinstance(exc, BotoConnectionError | HTTPClientError | ReadTimeoutError | IncompleteReadError):
        return StoreError("unreachable", f"cannot {action} {uri}: S3 endpoint unreachable ({exc})")
    return StoreError("io", f"cannot {action} {uri}: {exc}")


@contextmanager
def translated(uri: str, action: str) -> Iterator[None]:
    """Re-raise botocore/OS failures as StoreError naming ``uri`` and what was being done.

    For every call to the S3 client (here, `store`, the registry) and the local file reads beside them.
    """
    try:
        yield
    except StoreError:
        raise
    except ClientError as exc:
        raise _client_error(uri, action, exc) from exc
    except S3UploadFailedError as exc:
        # boto3 wraps the ClientError of a failed upload; the original is its implicit context.
        cause = exc.__context__
        if isinstance(cause, ClientError):
            raise _client_error(uri, action, cause) from exc
        raise StoreError("io", f"cannot {action} {uri}: {exc}") from exc
    except BotoCoreError as exc:
        raise _botocore_error(uri, action, exc) from exc
    except FileNotFoundError as exc:
        raise StoreError("not_found", f"cannot {action} {uri}: no such file") from exc
    except PermissionError as exc:
        raise StoreError("access_denied", f"cannot {action} {uri}: permission denied ({exc})") from exc
    except OSError as exc:
        raise StoreError("io", f"cannot {action} {uri}: {exc.strerror or exc}") from exc


# --------------------------------------------------------------------------------------------------
# Whole objects


def put_bytes(bucket: str, key: str, data: bytes, *, client: Any, content_type: str) -> None:
    """Write one object whole (the payload log's parts), failures as StoreError like every call here."""
    with translated(f"s3://{bucket}/{key}", "write"):
        client.put_object(Bucket=bucket, Key=key, Body=data, ContentType=content_type)


def list_keys(bucket: str, prefix: str, *, client: Any = None) -> Iterator[str]:
    """The keys under s3://bucket/prefix in key order (the payload log's parts), StoreError on failure."""
    client = client or s3_client()
    with translated(f"s3://{bucket}/{prefix}", "list"):
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            yield from (entry["Key"] for entry in page.get("Contents", []))


def open_object(bucket: str, key: str, *, client: Any = None) -> Any:
    """One object's body as a stream to read in chunks and close, StoreError on failure."""
    with translated(f"s3://{bucket}/{key}", "read"):
        return (client or s3_client()).get_object(Bucket=bucket, Key=key)["Body"]

