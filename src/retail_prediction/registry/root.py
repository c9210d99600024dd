"""Where a registry lives: a local folder or ``s3://bucket/prefix``, behind one small interface.

The registry's operations only need: read a small JSON object, write one (create-only or replacing),
store a model archive (create-only or replacing, each atomic), fetch an archive as a local file, and
list the keys under a folder. Create-only is ``os.link`` of a finished temp file locally (fails if the
name exists) and a conditional PutObject (``If-None-Match: *``) on S3; a replacing write is a temp file
+ ``os.replace`` locally and one whole-object PutObject on S3: a reader sees the old or the new object,
never a mix. S3 errors are `artifact.s3`'s StoreError with its reason codes (``conflict`` when a
create-only write finds the object there).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlparse

from ..artifact.archive import sha256_file
from ..artifact.s3 import StoreError, s3_client, translated
from ..artifact.store import ModelSource, fetch, publish

MAX_JSON_BYTES = 1024 * 1024  # a record is a few hundred bytes: anything bigger is not ours


def _decode(uri: str, raw: bytes) -> dict[str, Any]:
    if len(raw) > MAX_JSON_BYTES:
        raise StoreError("invalid", f"{uri} is over {MAX_JSON_BYTES} bytes: not a registry record")
    try:
        value = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StoreError("invalid", f"{uri} is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise StoreError("invalid", f"{uri} is not a JSON object")
    return value


def _encode(record: dict[str, Any]) -> bytes:
    return (json.dumps(record, indent=2, sort_keys=True) + "\n").encode()


class Root(ABC):
    """A registry root. Paths are relative, ``/``-separated (``versions/<v>/model.tar.gz``)."""

    uri: str

    def describe(self, rel: str) -> str:
        """The full location of ``rel``, for messages."""
        return f"{self.uri.rstrip('/')}/{rel}"

    @abstractmethod
    def read_json(self, rel: str) -> dict[str, Any] | None:
        """The JSON object at ``rel``, or None if there is none."""

    @abstractmethod
    def write_json(self, rel: str, record: dict[str, Any], *, create_only: bool = False) -> None:
        """Write ``record`` at ``rel`` atomically; with ``create_only``, StoreError ``conflict`` if it exists."""

    @abstractmethod
    def put_archive(self, rel: str, path: Path, sha256: str, *, create_only: bool = False) -> None:
        """Store the archive at ``path`` (already verified) at ``rel``, atomically."""

    @abstractmethod
    def fetch_archive(self, rel: str, dest_dir: Path) -> Path:
        """A local file holding the archive at ``rel`` (StoreError ``not_found`` if there is none)."""

    @abstractmethod
    def recorded_sha256(self, rel: str) -> str | None:
        """The SHA-256 stored with the archive at ``rel`` (S3 object metadata), None if not recorded."""

    @abstractmethod
    def exists(self, rel: str) -> bool:
        """Whether an object is at ``rel``."""

    @abstractmethod
    def list(self, rel_dir: str) -> list[str]:
        """Every key under the folder ``rel_dir`` (recursively), relative to the root, sorted."""

    @abstractmethod
    def delete(self, rel: str) -> None:
        """Remove the object at ``rel`` (nothing if there is none)."""


def open_root(text: str) -> Root:
    """``s3://bucket[/prefix]`` -> `S3Root`; a path or ``file://`` URI -> `LocalRoot`. ValueError if malformed."""
    text = text.strip()
    if text.startswith("s3://"):
        parsed = urlparse(text)
        prefix = parsed.path.strip("/")
        if not parsed.netloc or "//" in prefix:
            raise ValueError(f"registry root {text!r} must be s3://bucket or s3://bucket/prefix")
        return S3Root(parsed.netloc, prefix)
    if not text:
        raise ValueError("registry root is empty: give a folder or s3://bucket/prefix")
    return LocalRoot(ModelSource.parse(text).path)


# --------------------------------------------------------------------------------------------------
# A local folder


class LocalRoot(Root):
    """A folder. Writes go to a temp file in the target's folder first, then link (create-only) or replace."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder).resolve()
        self.uri = str(self.folder)

    def _path(self, rel: str) -> Path:
        return self.folder.joinpath(*rel.split("/"))

    @contextmanager
    def _temp(self, final: Path) -> Iterator[tuple[IO[bytes], Path]]:
        with translated(str(final), "write"):
            final.parent.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".part", dir=final.parent)
        tmp = Path(name)
        try:
            with translated(str(final), "write"), os.fdopen(fd, "wb") as out:
                yield out, tmp
        finally:
            tmp.unlink(missing_ok=True)

    def _commit(self, tmp: Path, final: Path, create_only: bool) -> None:
        with translated(str(final), "write"):
            if not create_only:
                os.replace(tmp, final)
                return
            try:
                os.link(tmp, final)  # atomic, fails if the name exists: exactly one writer wins
            except FileExistsError:
                raise StoreError("conflict", f"{final} already exists") from None

    def _write(self, rel: str, fill: Callable[[IO[bytes]], None], create_only: bool) -> None:
        final = self._path(rel)
        if create_only and final.exists():  # fail early; the link below is what decides a race
            raise StoreError("conflict", f"{final} already exists")
        with self._temp(final) as (out, tmp):
            fill(out)
            out.flush()
            os.fsync(out.fileno())
            out.close()
            self._commit(tmp, final, create_only)

    def read_json(self, rel: str) -> dict[str, Any] | None:
        path = self._path(rel)
        try:
            with translated(str(path), "read"), path.open("rb") as fh:
                raw = fh.read(MAX_JSON_BYTES + 1)
        except StoreError as exc:
            if exc.reason == "not_found":
                return None
            raise
        return _decode(str(path), raw)

    def write_json(self, rel: str, record: dict[str, Any], *, create_only: bool = False) -> None:
        self._write(rel, lambda out: out.write(_encode(record)), create_only)

    def put_archive(self, rel: str, path: Path, sha256: str, *, create_only: bool = False) -> None:
        def copy(out: IO[bytes]) -> None:
            digest = hashlib.sha256()
            with translated(str(path), "read"), Path(path).open("rb") as src:
                while chunk := src.read(1024 * 1024):
                    digest.update(chunk)
                    out.write(chunk)
            if digest.hexdigest() != sha256:  # the file changed between verification and the copy
                raise StoreError("invalid", f"{path} changed while it was copied to {self.describe(rel)}")

        self._write(rel, copy, create_only)

    def fetch_archive(self, rel: str, dest_dir: Path) -> Path:
        return fetch(ModelSource(uri=str(self._path(rel))), dest_dir).path

    def recorded_sha256(self, rel: str) -> str | None:
        return None  # a file has no metadata: the version's record holds the hash

    def exists(self, rel: str) -> bool:
        return self._path(rel).is_file()

    def list(self, rel_dir: str) -> list[str]:
        base = self._path(rel_dir)
        with translated(str(base), "list"):
            if not base.is_dir():
                return []
            found = [p for p in base.rglob("*") if p.is_file() and not p.name.startswith(".")]
        return sorted(p.relative_to(self.folder).as_posix() for p in found)

    def delete(self, rel: str) -> None:
        path = self._path(rel)
        with translated(str(path), "write"):
            path.unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------------
# S3


class S3Root(Root):
    """``s3://bucket/prefix`` through `artifact.s3`'s client (default credential chain, IRSA)."""

    def __init__(self, bucket: str, prefix: str, *, client: Any = None) -> None:
        self.bucket, self.prefix = bucket, prefix.strip("/")
        self.uri = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        self._client = client

    @property
    def client(self) -> Any:
        return self._client or s3_client()

    def key(self, rel: str) -> str:
        return f"{self.prefix}/{rel}" if self.prefix else rel

    def read_json(self, rel: str) -> dict[str, Any] | None:
        uri = self.describe(rel)
        try:
            with translated(uri, "read"):
                response = self.client.get_object(Bucket=self.bucket, Key=self.key(rel))
                with response["Body"] as body:
                    raw = body.read(MAX_JSON_BYTES + 1)
        except StoreError as exc:
            if exc.reason == "not_found":
                return None
            raise
        return _decode(uri, raw)

    def write_json(self, rel: str, record: dict[str, Any], *, create_only: bool = False) -> None:
        condition = {"IfNoneMatch": "*"} if create_only else {}
        with translated(self.describe(rel), "write"):
            self.client.put_object(Bucket=self.bucket, Key=self.key(rel), Body=_encode(record),
                                   ContentType="application/json", **condition)

    def put_archive(self, rel: str, path: Path, sha256: str, *, create_only: bool = False) -> None:
        with translated(str(path), "read"):
            changed = sha256_file(path) != sha256
        if changed:  # the file changed since it was verified: never upload what was not checked
            raise StoreError("invalid", f"{path} changed since it was verified; not uploaded to {self.describe(rel)}")
        publish(path, self.bucket, self.key(rel), client=self.client, validate=False, create_only=create_only)

    def fetch_archive(self, rel: str, dest_dir: Path) -> Path:
        source = ModelSource.from_bucket_key(self.bucket, self.key(rel))
        return fetch(source, dest_dir, client=self.client).path

    def _head(self, rel: str) -> dict[str, Any] | None:
        try:
            with translated(self.describe(rel), "read"):
                return dict(self.client.head_object(Bucket=self.bucket, Key=self.key(rel)))
        except StoreError as exc:
            if exc.reason == "not_found":
                return None
            raise

    def recorded_sha256(self, rel: str) -> str | None:
        head = self._head(rel)
        return None if head is None else head.get("Metadata", {}).get("sha256")

    def exists(self, rel: str) -> bool:
        return self._head(rel) is not None

    def list(self, rel_dir: str) -> list[str]:
        start = self.key(rel_dir.rstrip("/") + "/")
        keys: list[str] = []
        with translated(self.describe(rel_dir), "list"):
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=start):
                keys.extend(obj["Key"] for obj in page.get("Contents", []))
        cut = len(self.key(""))
        return sorted(k[cut:] for k in keys)

    def delete(self, rel: str) -> None:
        with translated(self.describe(rel), "write"):
            self.client.delete_object(Bucket=self.bucket, Key=self.key(rel))
