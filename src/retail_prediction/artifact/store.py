"""Where model artifacts live: a local path or an S3 object.

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

import hashlib
import os
import tempfile
import threading
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

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

from .archive import ArtifactError, read_artifact, sha256_file

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
DEFAULT_MAX_DOWNLOAD_BYTES = 2 * 1024**3
_CHUNK = 1024 * 1024

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
# Sources


@dataclass(frozen=True)
class ModelSource:
    """An artifact location: ``s3://bucket/key`` or a local file path."""

    uri: str

    @classmethod
    def parse(cls, text: str) -> ModelSource:
        """Accept ``s3://bucket/key``, ``file:///abs/path`` or a plain path; ValueError if malformed."""
        text = text.strip()
        if not text:
            raise ValueError("model source is empty: give s3://bucket/key or a file path")
        if text.startswith("s3://"):
            parsed = urlparse(text)
            key = parsed.path.lstrip("/")
            if not parsed.netloc or not key or key.endswith("/"):
                raise ValueError(f"model source {text!r} must be s3://bucket/key naming one object")
            return cls.from_bucket_key(parsed.netloc, key)
        if "://" in text and not text.startswith("file://"):
            raise ValueError(f"model source {text!r}: only s3:// URIs and local paths are supported")
        return cls(uri=str(_local_path(text)))

    @classmethod
    def from_bucket_key(cls, bucket: str, key: str) -> ModelSource:
        if not bucket or not key or "/" in bucket:
            raise ValueError(f"an S3 model source needs a bucket and a key (got {bucket!r}, {key!r})")
        return cls(uri=f"s3://{bucket}/{key}")

    @property
    def is_s3(self) -> bool:
        return self.uri.startswith("s3://")

    @property
    def bucket(self) -> str:
        self._require_s3()
        return self.uri[5:].split("/", 1)[0]

    @property
    def key(self) -> str:
        self._require_s3()
        return self.uri[5:].split("/", 1)[1]

    @property
    def path(self) -> Path:
        if self.is_s3:
            raise ValueError(f"{self.uri} is an S3 source, not a local path")
        return Path(self.uri)

    def _require_s3(self) -> None:
        if not self.is_s3:
            raise ValueError(f"{self.uri} is a local path, not an S3 source")

    def __str__(self) -> str:
        return self.uri


def _local_path(text: str) -> Path:
    if text.startswith("file://"):
        parsed = urlparse(text)
        if parsed.netloc not in ("", "localhost"):
            raise ValueError(f"model source {text!r}: file:// URIs must not name a remote host")
        text = unquote(parsed.path)
    return Path(text).expanduser()


@dataclass(frozen=True)
class FetchedArtifact:
    """A local copy (or the original local file) of an artifact, and the version it was at."""

    path: Path
    version: str
    uri: str


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
def _translated(uri: str, action: str) -> Iterator[None]:
    """Re-raise botocore/OS failures as StoreError naming ``uri`` and what was being done."""
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


def translated(uri: str, action: str) -> AbstractContextManager[None]:
    """Public form of the translation, for code that calls the S3 client itself (the registry)."""
    return _translated(uri, action)


def _refine_head_error(client: Any, source: ModelSource, exc: StoreError) -> StoreError:
    """HEAD errors carry no body, so 403/404 cannot tell bad keys or a missing bucket apart.

    Only on that failure path, a 1-byte ranged GET gets the error code from the response body.
    """
    if exc.reason not in ("access_denied", "not_found"):
        return exc
    try:
        with _translated(source.uri, "read"):
            client.get_object(Bucket=source.bucket, Key=source.key, Range="bytes=0-0")["Body"].close()
    except StoreError as refined:
        return refined
    return exc


# --------------------------------------------------------------------------------------------------
# Versions


def _s3_version(response: Mapping[str, Any]) -> str:
    etag = str(response.get("ETag", "")).strip('"')
    modified = response.get("LastModified")
    return f"{etag}@{modified.isoformat()}" if modified is not None else etag


def _local_version(path: Path) -> str:
    st = path.stat()
    return f"{st.st_mtime_ns}-{st.st_size}"


def probe_version(source: ModelSource, *, client: Any = None) -> str:
    """A cheap tag that changes when the artifact does: S3 ETag@LastModified, local mtime_ns-size."""
    if not source.is_s3:
        with _translated(source.uri, "stat"):
            return _local_version(_existing_file(source.path))
    client = client or s3_client()
    try:
        with _translated(source.uri, "probe"):
            return _s3_version(client.head_object(Bucket=source.bucket, Key=source.key))
    except StoreError as exc:
        raise _refine_head_error(client, source, exc) from exc.__cause__


def _existing_file(path: Path) -> Path:
    if path.is_dir():
        raise StoreError("io", f"{path} is a directory, not a model archive")
    if not path.exists():
        raise FileNotFoundError(path)
    return path


# --------------------------------------------------------------------------------------------------
# Fetch


def _local_name(source: ModelSource) -> str:
    # One stable file per source; the URI hash keeps two sources with the same basename apart.
    tag = hashlib.sha256(source.uri.encode()).hexdigest()[:12]
    base = Path(source.key).name or "model.tar.gz"
    return f"{tag}-{base}"


def _stream_to(body: Any, out: Any, expected: int | None, uri: str, max_bytes: int) -> int:
    written = 0
    for chunk in body.iter_chunks(_CHUNK):
        written += len(chunk)
        if written > max_bytes:  # also enforced here: a response need not declare its length
            raise StoreError("too_large", f"{uri} is over the {max_bytes}-byte download limit")
        out.write(chunk)
    if expected is not None and written != expected:
        raise StoreError("unreachable", f"download of {uri} ended after {written} of {expected} bytes")
    return written


def _temp_in(dest_dir: Path, final_name: str) -> tuple[int, str]:
    # Local failures get their own message: "access denied" here is about the disk, not S3.
    try:
        dest_dir.mkdir(parents=True, exist_ok=True)
        return tempfile.mkstemp(prefix=f".{final_name}.", suffix=".part", dir=dest_dir)
    except OSError as exc:
        detail = exc.strerror or exc
        raise StoreError("io", f"cannot write to download directory {dest_dir}: {detail}") from exc


def _download(client: Any, source: ModelSource, dest_dir: Path, max_bytes: int) -> FetchedArtifact:
    response = client.get_object(Bucket=source.bucket, Key=source.key)
    body, size = response["Body"], response.get("ContentLength")
    if size is not None and size > max_bytes:
        body.close()
        raise StoreError("too_large", f"{source.uri} is {size} bytes, over the {max_bytes}-byte limit")
    final = dest_dir / _local_name(source)
    try:
        fd, tmp_name = _temp_in(dest_dir, final.name)
    except StoreError:
        body.close()  # do not leave the connection half-read
        raise
    try:
        # No fsync: dest_dir is a scratch dir (e.g. /tmp) and a lost copy is simply fetched again.
        with os.fdopen(fd, "wb") as out, body:
            _stream_to(body, out, size, source.uri, max_bytes)
        os.replace(tmp_name, final)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return FetchedArtifact(path=final, version=_s3_version(response), uri=source.uri)


def fetch(
    source: ModelSource,
    dest_dir: Path,
    *,
    client: Any = None,
    max_bytes: int = DEFAULT_MAX_DOWNLOAD_BYTES,
) -> FetchedArtifact:
    """Make the artifact available as a local file and say which version it is.

    Local sources are returned in place (no copy). S3 objects are streamed to a temp file in
    ``dest_dir`` (created if missing) and renamed into place atomically; the version is taken from
    the GET response itself, so it describes exactly the bytes downloaded even if the object is
    replaced meanwhile.
    """
    if not source.is_s3:
        with _translated(source.uri, "read"):
            path = _existing_file(source.path)
            return FetchedArtifact(path=path, version=_local_version(path), uri=source.uri)
    with _translated(source.uri, "download"):
        return _download(client or s3_client(), source, Path(dest_dir), max_bytes)


# --------------------------------------------------------------------------------------------------
# Publish


def publish(
    path: Path,
    bucket: str,
    key: str,
    *,
    client: Any = None,
    validate: bool = True,
    create_only: bool = False,
) -> dict[str, Any]:
    """Upload a model archive to ``s3://bucket/key`` with its SHA-256 in the object metadata.

    With ``validate`` (default) the archive is fully verified first, so a broken file is never
    published. With ``create_only`` the upload is one conditional PutObject (``If-None-Match: *``):
    StoreError ``conflict`` if the key already exists, so a version is written once. Returns
    ``{"uri", "etag", "sha256", "bytes"}``; ``etag`` is None if the identity may write but not read back.
    """
    path = Path(path)
    uri = ModelSource.from_bucket_key(bucket, key).uri
    with _translated(str(path), "read"):
        digest, size = sha256_file(path), path.stat().st_size
    if validate:
        _validate(path, digest)
    client = client or s3_client()
    extra = {"Metadata": {"sha256": digest}, "ContentType": "application/gzip"}
    with _translated(uri, "publish to"):
        if create_only:  # one PUT (not multipart): atomic, and the condition is checked by S3
            with path.open("rb") as body:
                client.put_object(Bucket=bucket, Key=key, Body=body, IfNoneMatch="*", **extra)
        else:
            client.upload_file(str(path), bucket, key, ExtraArgs=extra)
    return {"uri": uri, "etag": _etag_after_upload(client, bucket, key, uri), "sha256": digest, "bytes": size}


def put_bytes(bucket: str, key: str, data: bytes, *, client: Any, content_type: str) -> None:
    """Write one object whole (the payload log's parts), failures as StoreError like every call here."""
    with _translated(f"s3://{bucket}/{key}", "write"):
        client.put_object(Bucket=bucket, Key=key, Body=data, ContentType=content_type)


def list_keys(bucket: str, prefix: str, *, client: Any = None) -> Iterator[str]:
    """The keys under s3://bucket/prefix in key order (the payload log's parts), StoreError on failure."""
    client = client or s3_client()
    with _translated(f"s3://{bucket}/{prefix}", "list"):
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            yield from (entry["Key"] for entry in page.get("Contents", []))


def open_object(bucket: str, key: str, *, client: Any = None) -> Any:
    """One object's body as a stream to read in chunks and close, StoreError on failure."""
    with _translated(f"s3://{bucket}/{key}", "read"):
        return (client or s3_client()).get_object(Bucket=bucket, Key=key)["Body"]


def _validate(path: Path, digest: str) -> None:
    try:
        read_artifact(path, expected_sha256=digest)
    except ArtifactError as exc:
        raise StoreError("invalid", f"refusing to publish {path}: {exc}") from exc


def _etag_after_upload(client: Any, bucket: str, key: str, uri: str) -> str | None:
    try:
        with _translated(uri, "read back"):
            return str(client.head_object(Bucket=bucket, Key=key)["ETag"]).strip('"')
    except StoreError as exc:
        if exc.reason == "access_denied":
            return None
        raise
