"""Where model artifacts live: a local path or an S3 object, and moving archives between them.

`ModelSource` names a location; `probe_version` tags the artifact's current version, `fetch` makes it a
local file and `publish` uploads a verified archive. The S3 client and the translation of its failures
into `StoreError` are in `s3`.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from .archive import ArtifactError, read_artifact, sha256_file
from .s3 import StoreError, s3_client, translated

DEFAULT_MAX_DOWNLOAD_BYTES = 2 * 1024**3
_CHUNK = 1024 * 1024


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
# Versions


def _s3_version(response: Mapping[str, Any]) -> str:
    etag = str(response.get("ETag", "")).strip('"')
    modified = response.get("LastModified")
    return f"{etag}@{modified.isoformat()}" if modified is not None else etag


def _local_version(path: Path) -> str:
    st = path.stat()
    return f"{st.st_mtime_ns}-{st.st_size}"


def _refine_head_error(client: Any, source: ModelSource, exc: StoreError) -> StoreError:
    """HEAD errors carry no body, so 403/404 cannot tell bad keys or a missing bucket apart.

    Only on that failure path, a 1-byte ranged GET gets the error code from the response body.
    """
    if exc.reason not in ("access_denied", "not_found"):
        return exc
    try:
        with translated(source.uri, "read"):
            client.get_object(Bucket=source.bucket, Key=source.key, Range="bytes=0-0")["Body"].close()
    except StoreError as refined:
        return refined
    return exc


def probe_version(source: ModelSource, *, client: Any = None) -> str:
    """A cheap tag that changes when the artifact does: S3 ETag@LastModified, local mtime_ns-size."""
    if not source.is_s3:
        with translated(source.uri, "stat"):
            return _local_version(_existing_file(source.path))
    client = client or s3_client()
    try:
        with translated(source.uri, "probe"):
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
        with translated(source.uri, "read"):
            path = _existing_file(source.path)
            return FetchedArtifact(path=path, version=_local_version(path), uri=source.uri)
    with translated(source.uri, "download"):
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
    with translated(str(path), "read"):
        digest, size = sha256_file(path), path.stat().st_size
    if validate:
        _validate(path, digest)
    client = client or s3_client()
    extra = {"Metadata": {"sha256": digest}, "ContentType": "application/gzip"}
    with translated(uri, "publish to"):
        if create_only:  # one PUT (not multipart): atomic, and the condition is checked by S3
            with path.open("rb") as body:
                client.put_object(Bucket=bucket, Key=key, Body=body, IfNoneMatch="*", **extra)
        else:
            client.upload_file(str(path), bucket, key, ExtraArgs=extra)
    return {"uri": uri, "etag": _etag_after_upload(client, bucket, key, uri), "sha256": digest, "bytes": size}


def _validate(path: Path, digest: str) -> None:
    try:
        read_artifact(path, expected_sha256=digest)
    except ArtifactError as exc:
        raise StoreError("invalid", f"refusing to publish {path}: {exc}") from exc


def _etag_after_upload(client: Any, bucket: str, key: str, uri: str) -> str | None:
    try:
        with translated(uri, "read back"):
            return str(client.head_object(Bucket=bucket, Key=key)["ETag"]).strip('"')
    except StoreError as exc:
        if exc.reason == "access_denied":
            return None
        raise
