"""Transaction files in S3: ``s3://bucket/prefix/``, an S3 glob or one object, read through Arrow's S3 filesystem.

Objects are streamed (Arrow reads ranges of the object as the CSV or Parquet reader asks for them), never
downloaded whole. Credentials come from boto3's default chain, as everywhere else in the package (keys, IRSA
web identity with ``AWS_ENDPOINT_URL_STS``, config files, instance metadata), refreshed before they expire and
handed to Arrow per opened object. The endpoint is ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL`` when set
(unless ``AWS_IGNORE_CONFIGURED_ENDPOINT_URLS=true``); the region ``AWS_REGION`` / ``AWS_DEFAULT_REGION`` or the
profile's. Every failure is a `DataError` naming the object or prefix.
"""

from __future__ import annotations

import fnmatch
import os
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pyarrow as pa
from pyarrow import fs

from .errors import DataError

_GLOB = re.compile(r"[*?\[]")
_BUFFER = 1 << 20  # bytes Arrow reads ahead per request of a CSV stream
_AWS_ERRORS = (  # Arrow's message fragment -> what to tell the user
    ("NO_SUCH_BUCKET", "no such bucket"),
    ("ACCESS_DENIED", "access denied (the identity's IAM policy does not allow it)"),
    ("INVALID_ACCESS_KEY_ID", "the AWS credentials are not valid here"),
    ("SIGNATURE_DOES_NOT_MATCH", "the AWS credentials are not valid here"),
    ("EXPIRED_TOKEN", "the AWS credentials have expired"),
    ("NETWORK_CONNECTION", "the S3 endpoint cannot be reached"),
    ("Could not resolve host", "the S3 endpoint cannot be reached"),
    ("Couldn't connect", "the S3 endpoint cannot be reached"),
)


@dataclass(frozen=True)
class S3Object:
    """One object of a bucket; `str()` is its ``s3://`` URI (what error messages and summaries name)."""

    bucket: str
    key: str

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    @property
    def name(self) -> str:
        return self.key.rsplit("/", 1)[-1]

    def __str__(self) -> str:
        return self.uri


Source = Path | S3Object


def is_s3(item: object) -> bool:
    return isinstance(item, S3Object) or (isinstance(item, str) and item.startswith("s3://"))


def resolve_s3(spec: str | S3Object, accept: Callable[[str], bool]) -> list[S3Object]:
    """``s3://bucket/prefix/`` (its data files, like a folder: not recursive), a glob or one object, sorted.

    `accept(name)` says which names in a prefix are transaction files; an object named exactly is taken as is.
    Only what a least-privilege policy grants is asked: a listing under the prefix (never of the bucket root or
    a HEAD of the prefix itself), and a HEAD of a named object.
    """
    if isinstance(spec, S3Object):
        return [spec]
    bucket, key = _split(spec)
    filesystem = filesystem_for(spec)
    if _GLOB.search(key):
        return _glob(filesystem, spec, bucket, key)
    with _translated(spec):
        listed = _listing(filesystem, bucket, key.rstrip("/"), recursive=False)
        named = listed is None and key and not key.endswith("/")
        if named and filesystem.get_file_info(f"{bucket}/{key}").type == fs.FileType.File:
            return [S3Object(bucket, key)]
    if listed is None:
        raise DataError(spec, "no such object or prefix")
    return sorted((_object(i) for i in listed if i.type == fs.FileType.File and accept(i.base_name)),
                  key=lambda o: o.key)


def _listing(filesystem: fs.S3FileSystem, bucket: str, prefix: str, recursive: bool) -> list[fs.FileInfo] | None:
    """What is under ``prefix/`` (None: nothing); a missing bucket or a denial raises Arrow's OSError."""
    try:
        return filesystem.get_file_info(fs.FileSelector(f"{bucket}/{prefix}".rstrip("/"), recursive=recursive))
    except FileNotFoundError:
        return None


def _split(uri: str) -> tuple[str, str]:
    parsed = urlparse(uri)
    if not parsed.netloc or parsed.query or parsed.fragment:
        raise DataError(uri, "is not s3://bucket/prefix/, s3://bucket/key or an S3 glob")
    return parsed.netloc, parsed.path.lstrip("/")


def _object(info: fs.FileInfo) -> S3Object:
    bucket, key = info.path.split("/", 1)
    return S3Object(bucket, key)


def _glob(filesystem: fs.S3FileSystem, spec: str, bucket: str, pattern: str) -> list[S3Object]:
    """Keys matching `pattern` (``*`` and ``?`` do not cross ``/``, as in a shell)."""
    literal = pattern[: _GLOB.search(pattern).start()]  # type: ignore[union-attr]
    base = literal.rsplit("/", 1)[0] if "/" in literal else ""
    recursive = "/" in pattern[len(base) + 1 if base else 0:]
    depth = pattern.count("/")
    with _translated(spec):
        listed = _listing(filesystem, bucket, base, recursive) or []
    found = [_object(i) for i in listed if i.type == fs.FileType.File]
    return sorted((o for o in found if o.key.count("/") == depth and fnmatch.fnmatchcase(o.key, pattern)),
                  key=lambda o: o.key)


# --------------------------------------------------------------------------------------------------
# Opening


def open_stream(source: Source) -> pa.NativeFile:
    """A sequential stream of the file, decompressed by its suffix (.gz): a local path or an S3 object."""
    if not isinstance(source, S3Object):
        return pa.input_stream(str(source), compression="detect")
    with _translated(source.uri):
        return filesystem_for(source.uri).open_input_stream(f"{source.bucket}/{source.key}", compression="detect",
                                                           buffer_size=_BUFFER)


def open_file(source: Source) -> pa.NativeFile | str:
    """A random-access file (Parquet reads its footer, then the column chunks it needs, as ranged GETs)."""
    if not isinstance(source, S3Object):
        return str(source)
    with _translated(source.uri):
        return filesystem_for(source.uri).open_input_file(f"{source.bucket}/{source.key}")


@contextmanager
def _translated(uri: str) -> Iterator[None]:
    """Arrow's S3 errors (OSError with the AWS error code in the text) as a `DataError` naming `uri`."""
    try:
        yield
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError(uri, "no such object") from None
    except (OSError, pa.ArrowException) as exc:
        raise DataError(uri, describe(exc)) from None


def describe(exc: BaseException) -> str:
    """A short reason for an S3 failure, with Arrow's own message for anything unrecognised."""
    text = str(exc)
    for fragment, reason in _AWS_ERRORS:
        if fragment in text:
            return f"{reason} ({text.split(': ', 1)[-1][:200]})"
    return f"cannot be read ({text[:300]})"


# --------------------------------------------------------------------------------------------------
# The filesystem: boto3's credential chain, Arrow's S3 client

_lock = threading.Lock()
_session: Any = None
_cached: tuple[tuple[Any, ...], fs.S3FileSystem] | None = None


def _endpoint() -> tuple[str | None, str]:
    """(host[:port] or None for AWS, scheme) from AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL."""
    if os.environ.get("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "").lower() == "true":
        return None, "https"
    url = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if not url:
        return None, "https"
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise DataError("AWS_ENDPOINT_URL_S3", f"{url!r} is not an http(s):// URL")
    return parsed.netloc, parsed.scheme


def filesystem_for(uri: str) -> fs.S3FileSystem:
    """Arrow's S3 filesystem with the chain's current credentials (one instance while they stay the same)."""
    global _session, _cached
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    endpoint, scheme = _endpoint()
    with _lock:
        if _session is None:
            _session = boto3.session.Session()
        session = _session
    try:
        credentials = session.get_credentials()
        frozen = credentials.get_frozen_credentials() if credentials is not None else None
    except (BotoCoreError, ClientError) as exc:
        raise DataError(uri, f"no usable AWS credentials ({exc})") from None
    if frozen is None or not frozen.access_key:
        raise DataError(uri, "no AWS credentials found (environment, web identity, config files or instance "
                             "metadata)")
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or session.region_name
    settings = (frozen.access_key, frozen.secret_key, frozen.token, endpoint, scheme, region)
    with _lock:
        if _cached is None or _cached[0] != settings:
            options: dict[str, Any] = {"access_key": frozen.access_key, "secret_key": frozen.secret_key,
                                       "session_token": frozen.token, "scheme": scheme}
            if endpoint:
                options["endpoint_override"] = endpoint
            if region:
                options["region"] = region
            _cached = (settings, fs.S3FileSystem(**options))
        return _cached[1]


def reset() -> None:
    """Forget the session and filesystem, e.g. after the environment (endpoint, credentials) changed."""
    global _session, _cached
    with _lock:
        _session, _cached = None, None
