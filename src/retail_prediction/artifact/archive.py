"""The model artifact: a versioned, integrity-checked, pickle-free ``model.tar.gz``.

Layout: a gzip-compressed tar whose members are all flat regular files, ``manifest.json`` first, then
the payload files (``model.onnx``, ``tables.npz``, ``feature_spec.json``, ...) in name order.
``manifest.json`` records the format, its version and the SHA-256 and size of every payload file, so
a reader can prove that what it loads is exactly what was packed.

Reading never extracts to disk: members are read into memory from the tar stream under size caps
(`tarstream.py`), then the manifest is checked against its schema (`members.py`) and every
payload file against its hash.

Nothing here uses pickle; the payload is bytes and JSON only.
"""

from __future__ import annotations

import gzip
import hashlib
import hmac
import io
import json
import os
import re
import tarfile
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, BinaryIO

from .members import (
    DEFAULT_MAX_JSON_BYTES,
    DEFAULT_MAX_MEMBER_BYTES,
    DEFAULT_MAX_TOTAL_BYTES,
    ArtifactError,
    ArtifactLimits,
    FileEntry,
    Manifest,
    MiB,
    check_schema,
    parse_json,
)
from .tarstream import MANIFEST_NAME, NAME_RE, load_members

__all__ = ["DEFAULT_MAX_JSON_BYTES", "DEFAULT_MAX_MEMBER_BYTES", "DEFAULT_MAX_TOTAL_BYTES", "MANIFEST_NAME",
           "ArtifactError", "ArtifactLimits", "LoadedArtifact", "pack_artifact", "read_artifact", "sha256_file",
           "verify_archive_sha256"]

FORMAT_NAME = "retail-prediction-model"
FORMAT_VERSION = 1

_CHUNK = 1 * MiB
_HEX64_RE = re.compile(r"^[0-9a-f]{64}$")
_RESERVED_KEYS = frozenset({"format", "format_version", "files"})


@dataclass(frozen=True)
class LoadedArtifact:
    """A verified archive held in memory. ``files`` excludes ``manifest.json``."""

    files: dict[str, bytes]
    manifest: dict[str, Any]
    sha256: str
    path: Path

    @property
    def model_version(self) -> str | None:
        value = self.manifest.get("model_version")
        return None if value is None else str(value)

    def json(self, name: str) -> dict[str, Any]:
        """Parse the JSON object member ``name``, with an error naming it if absent or malformed."""
        if name not in self.files:
            raise ArtifactError(f"{self.path}: member {name!r} is not in the archive")
        return parse_json(self.path, name, self.files[name])


# --------------------------------------------------------------------------------------------------
# Hashing


def _hash_stream(fh: IO[bytes]) -> str:
    digest = hashlib.sha256()
    while chunk := fh.read(_CHUNK):
        digest.update(chunk)
    return digest.hexdigest()


def sha256_file(path: Path | str) -> str:
    """SHA-256 hex digest of a file, read in chunks (models can be large)."""
    with Path(path).open("rb") as fh:
        return _hash_stream(fh)


def _normalize_hex(expected_hex: str) -> str:
    value = expected_hex.strip().lower().removeprefix("sha256:")
    if not _HEX64_RE.match(value):
        raise ArtifactError(f"expected SHA-256 {expected_hex!r} is not 64 hexadecimal characters")
    return value


def _check_pin(path: Path, actual: str, expected_hex: str) -> None:
    expected = _normalize_hex(expected_hex)
    if not hmac.compare_digest(actual, expected):
        raise ArtifactError(
            f"{path}: archive SHA-256 is {actual}, but {expected} was expected (pinned); "
            "refusing to load a different archive"
        )


def verify_archive_sha256(path: Path | str, expected_hex: str) -> str:
    """Check the whole archive against a pinned SHA-256 (``hex`` or ``sha256:hex``); return it."""
    path = Path(path)
    actual = sha256_file(path)
    _check_pin(path, actual, expected_hex)
    return actual


# --------------------------------------------------------------------------------------------------
# Writing


def _check_name(name: str) -> None:
    if name == MANIFEST_NAME:
        raise ArtifactError(f"{MANIFEST_NAME!r} is written by pack_artifact; do not pass it in files")
    if not NAME_RE.match(name):
        raise ArtifactError(
            f"file name {name!r} is not allowed in a model archive: use a flat name of letters, "
            "digits, '.', '_' or '-' (no directories)"
        )


def _created_at(metadata: Mapping[str, Any]) -> datetime:
    """The archive timestamp: ``metadata['created_at']`` when given (reproducible builds), else now."""
    value = metadata.get("created_at")
    if value is None:
        return datetime.now(UTC).replace(microsecond=0)
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError as exc:
            raise ArtifactError(f"metadata created_at {value!r} is not an ISO-8601 timestamp") from exc
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise ArtifactError("metadata created_at must be a timezone-aware ISO-8601 timestamp")
    return value.astimezone(UTC).replace(microsecond=0)


def build_manifest(files: Mapping[str, bytes], metadata: Mapping[str, Any]) -> dict[str, Any]:
    """The manifest for ``files``: format fields, per-file hash and size, plus the metadata fields."""
    clash = _RESERVED_KEYS & set(metadata)
    if clash:
        raise ArtifactError(f"metadata may not set reserved manifest keys: {sorted(clash)}")
    manifest: dict[str, Any] = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION}
    manifest.update(metadata)
    manifest["created_at"] = _created_at(metadata).isoformat().replace("+00:00", "Z")
    manifest["files"] = {
        name: {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
        for name, data in sorted(files.items())
    }
    return manifest


def _tar_member(name: str, size: int, mtime: int) -> tarfile.TarInfo:
    # Fixed owner/mode/mtime so the same inputs give a byte-identical archive.
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, mtime, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    return info


def _write_tar(raw: BinaryIO, members: list[tuple[str, bytes]], mtime: int) -> None:
    # GzipFile with an empty filename and fixed mtime: tarfile's "w:gz" would embed both.
    with (
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=mtime, compresslevel=6) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.USTAR_FORMAT) as tar,
    ):
        for name, data in members:
            tar.addfile(_tar_member(name, len(data), mtime), io.BytesIO(data))


@contextmanager
def _atomic_output(out_path: Path) -> Iterator[BinaryIO]:
    """Yield a temp file beside ``out_path``; on success fsync it and rename over ``out_path``."""
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out_path.name}.", suffix=".tmp", dir=out_path.parent)
    try:
        with os.fdopen(fd, "wb") as raw:
            yield raw
            raw.flush()
            os.fsync(raw.fileno())
        os.chmod(tmp_name, 0o644)  # mkstemp makes 0600; the serving user may differ from the packer
        os.replace(tmp_name, out_path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def pack_artifact(out_path: Path, files: Mapping[str, bytes], *, metadata: Mapping[str, Any]) -> str:
    """Write ``files`` plus a manifest as a deterministic gzip tar at ``out_path``; return its SHA-256.

    ``metadata`` fields (e.g. ``model_version``) are copied into the manifest; ``created_at``, if
    given, fixes both the manifest timestamp and every member's mtime, so repacking is reproducible.
    """
    for name, data in files.items():
        _check_name(name)
        if not isinstance(data, bytes | bytearray | memoryview):
            raise ArtifactError(f"file {name!r} must be bytes, got {type(data).__name__}")
    blobs = {name: bytes(data) for name, data in files.items()}
    manifest = build_manifest(blobs, metadata)
    try:
        manifest_bytes = json.dumps(manifest, indent=2, sort_keys=True).encode() + b"\n"
    except (TypeError, ValueError) as exc:
        raise ArtifactError(f"metadata is not JSON-serialisable: {exc}") from exc
    mtime = int(datetime.fromisoformat(manifest["created_at"]).timestamp())
    members = [(MANIFEST_NAME, manifest_bytes), *sorted(blobs.items())]
    out_path = Path(out_path)
    with _atomic_output(out_path) as raw:
        _write_tar(raw, members, mtime)
    return sha256_file(out_path)


# --------------------------------------------------------------------------------------------------
# Reading (the tar stream itself: tarstream.py)


def _parse_manifest(path: Path, members: dict[str, bytes]) -> tuple[dict[str, Any], Manifest]:
    if MANIFEST_NAME not in members:
        raise ArtifactError(f"{path}: {MANIFEST_NAME} is missing; not a model archive")
    manifest = parse_json(path, MANIFEST_NAME, members[MANIFEST_NAME])
    fmt, version = manifest.get("format"), manifest.get("format_version")
    if fmt != FORMAT_NAME:
        raise ArtifactError(f"{path}: unknown archive format {fmt!r} (expected {FORMAT_NAME!r})", "unsupported")
    if type(version) is not int or version != FORMAT_VERSION:
        raise ArtifactError(
            f"{path}: unsupported format_version {version!r}; this reader understands {FORMAT_VERSION}",
            "unsupported",
        )
    return manifest, check_schema(path, MANIFEST_NAME, manifest, Manifest)


def _check_listing(path: Path, listing: dict[str, FileEntry], payload: dict[str, bytes]) -> None:
    unlisted = sorted(set(payload) - set(listing))
    if unlisted:
        raise ArtifactError(f"{path}: member(s) {unlisted} are not listed in {MANIFEST_NAME}")
    missing = sorted(set(listing) - set(payload))
    if missing:
        raise ArtifactError(f"{path}: file(s) {missing} are listed in {MANIFEST_NAME} but missing")


def _check_file_integrity(path: Path, name: str, entry: FileEntry, data: bytes) -> None:
    size, digest = entry.size, entry.sha256
    if not _HEX64_RE.match(digest):
        raise ArtifactError(f"{path}: {MANIFEST_NAME} entry for {name!r} has no valid sha256")
    if len(data) != size:
        raise ArtifactError(f"{path}: {name!r} is {len(data)} bytes but the manifest says {size}")
    actual = hashlib.sha256(data).hexdigest()
    if not hmac.compare_digest(actual, digest):
        raise ArtifactError(
            f"{path}: {name!r} fails its integrity check (SHA-256 {actual}, manifest says {digest}); "
            "the archive is corrupt or was modified"
        )


def _check_required(path: Path, payload: dict[str, bytes], required: Iterable[str]) -> None:
    missing = sorted(set(required) - set(payload))
    if missing:
        raise ArtifactError(f"{path}: required file(s) {missing} are missing from the archive")


def read_artifact(
    path: Path,
    *,
    max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES,
    max_total_bytes: int = DEFAULT_MAX_TOTAL_BYTES,
    max_json_bytes: int = DEFAULT_MAX_JSON_BYTES,
    limits: ArtifactLimits | None = None,
    required: Iterable[str] = (),
    expected_sha256: str | None = None,
) -> LoadedArtifact:
    """Read and fully verify a model archive into memory, without extracting anything to disk.

    ``limits`` (else the three ``max_*`` caps) bound the decompressed bytes held in memory.
    ``expected_sha256`` optionally pins the whole archive; it is checked on the same open file that
    is then read, so the file cannot be swapped between the check and the load.
    Raises ArtifactError naming the file/member and the problem.
    """
    path = Path(path)
    limits = limits or ArtifactLimits(max_member_bytes, max_total_bytes, max_json_bytes)
    try:
        with path.open("rb") as fh:
            archive_sha = _hash_stream(fh)
            if expected_sha256 is not None:
                _check_pin(path, archive_sha, expected_sha256)
            fh.seek(0)
            members = load_members(path, fh, limits)
    except OSError as exc:
        raise ArtifactError(f"{path}: cannot read model archive: {exc.strerror or exc}") from exc
    manifest, listing = _parse_manifest(path, members)
    payload = {name: data for name, data in members.items() if name != MANIFEST_NAME}
    _check_listing(path, listing.files, payload)
    for name, data in payload.items():
        _check_file_integrity(path, name, listing.files[name], data)
    _check_required(path, payload, required)
    return LoadedArtifact(files=payload, manifest=manifest, sha256=archive_sha, path=path)
