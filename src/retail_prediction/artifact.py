"""The model artifact: a versioned, integrity-checked, pickle-free ``model.tar.gz``.

Layout: a gzip-compressed tar whose members are all flat regular files, ``manifest.json`` first, then
the payload files (``model.onnx``, ``tables.npz``, ``feature_spec.json``, ...) in name order.
``manifest.json`` records the format, its version and the SHA-256 and size of every payload file, so
a reader can prove that what it loads is exactly what was packed.

Reading never extracts to disk: members are read into memory from the tar stream, after their
headers have been checked (name, type, size), in chunks whose *actual* decompressed bytes are counted
against the caps of `ArtifactLimits` (per member, per JSON member, in total), so a decompression bomb
costs at most a cap's worth of memory before it is refused. Directory members are *refused*, like any other
non-regular member: the format is flat and `pack_artifact` never writes one, so a directory can
only come from a hand-made or foreign archive.

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
import zlib
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, BinaryIO

from .artifact_schema import (
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

__all__ = ["DEFAULT_MAX_JSON_BYTES", "DEFAULT_MAX_MEMBER_BYTES", "DEFAULT_MAX_TOTAL_BYTES", "ArtifactError",
           "ArtifactLimits", "LoadedArtifact", "pack_artifact", "read_artifact", "sha256_file",
           "verify_archive_sha256"]

FORMAT_NAME = "retail-prediction-model"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"

# A model archive has a handful of files; a cap stops a header flood (millions of empty members)
# from eating memory before any size limit is reached.
MAX_MEMBERS = 256
# The tar end-of-archive marker plus record padding is at most a few KiB; anything much larger
# after it is not ours, and draining it unbounded would let a gzip bomb hide there.
_MAX_TRAILING_BYTES = 1 * MiB

_CHUNK = 1 * MiB
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_HEX64_RE = re.compile(r"^[0-9a-f]{64}$")
_RESERVED_KEYS = frozenset({"format", "format_version", "files"})
_GZIP_MAGIC = b"\x1f\x8b"


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
    if not _NAME_RE.match(name):
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
# Reading


def _member_kind(member: tarfile.TarInfo) -> str:
    kinds = [
        (member.issym, "a symbolic link"),
        (member.islnk, "a hard link"),
        (member.isdir, "a directory"),
        (member.ischr, "a character device"),
        (member.isblk, "a block device"),
        (member.isfifo, "a FIFO"),
        (member.issparse, "a sparse file"),
    ]
    return next((label for check, label in kinds if check()), f"of unsupported tar type {member.type!r}")


def _check_member(path: Path, member: tarfile.TarInfo, seen: set[str]) -> None:
    name = member.name
    where = f"{path}: member {name!r}"
    if name.startswith("/") or name.startswith("\\") or re.match(r"^[A-Za-z]:", name):
        raise ArtifactError(f"{where} has an absolute path; refusing the archive")
    if ".." in re.split(r"[/\\]", name):
        raise ArtifactError(f"{where} contains a '..' path component; refusing the archive")
    if not member.isfile() or member.issparse():
        raise ArtifactError(f"{where} is {_member_kind(member)}; only regular files are allowed")
    if name != MANIFEST_NAME and not _NAME_RE.match(name):
        raise ArtifactError(f"{where} is not a flat file name; model archives have no directories")
    if name in seen:
        raise ArtifactError(f"{where} appears more than once; refusing an ambiguous archive")


def _check_sizes(path: Path, name: str, size: int, total: int, limits: ArtifactLimits) -> None:
    # Called with the header size before any data is read (a huge member costs nothing to refuse), and
    # again with the bytes actually decompressed so far, which is what bounds the memory spent.
    cap = limits.member_cap(name)
    if size > cap:
        raise ArtifactError(f"{path}: member {name!r} is {size} bytes, over the {cap}-byte limit", "too_large")
    if total + size > limits.max_total_bytes:
        raise ArtifactError(
            f"{path}: members add up to more than the {limits.max_total_bytes}-byte limit (at {name!r})",
            "too_large",
        )


def _read_member(path: Path, tar: tarfile.TarFile, member: tarfile.TarInfo, total: int,
                 limits: ArtifactLimits) -> bytes:
    stream = tar.extractfile(member)
    chunks: list[bytes] = []
    size = 0
    while stream is not None and (chunk := stream.read(_CHUNK)):
        size += len(chunk)
        _check_sizes(path, member.name, size, total, limits)
        chunks.append(chunk)
    if size != member.size:
        raise ArtifactError(f"{path}: archive is truncated inside member {member.name!r}")
    return b"".join(chunks)


def _read_members(path: Path, tar: tarfile.TarFile, limits: ArtifactLimits) -> dict[str, bytes]:
    members: dict[str, bytes] = {}
    total = 0
    while (member := tar.next()) is not None:
        if len(members) >= MAX_MEMBERS:
            raise ArtifactError(f"{path}: more than {MAX_MEMBERS} members; not a model archive")
        _check_member(path, member, set(members))
        _check_sizes(path, member.name, member.size, total, limits)
        members[member.name] = _read_member(path, tar, member, total, limits)
        total += member.size
    return members


def _drain_trailer(path: Path, gz: gzip.GzipFile) -> None:
    # tarfile stops at the end-of-archive marker; reading the gzip stream to its end makes gzip
    # check its CRC and length trailer, which is what catches an archive cut short in the padding.
    remaining = _MAX_TRAILING_BYTES
    while chunk := gz.read(min(_CHUNK, remaining + 1)):
        remaining -= len(chunk)
        if remaining < 0:
            raise ArtifactError(f"{path}: unexpected data after the end of the tar archive")


@contextmanager
def _archive_errors(path: Path) -> Iterator[None]:
    """Turn gzip/tar/zlib failures into ArtifactError with a plain-words diagnosis."""
    try:
        yield
    except EOFError as exc:
        raise ArtifactError(f"{path}: archive is truncated (compressed stream ends early)") from exc
    except gzip.BadGzipFile as exc:
        raise ArtifactError(f"{path}: archive is corrupt (bad gzip data: {exc})") from exc
    except zlib.error as exc:
        raise ArtifactError(f"{path}: archive is corrupt (bad compressed data: {exc})") from exc
    except tarfile.ReadError as exc:
        if "unexpected end" in str(exc):
            raise ArtifactError(f"{path}: archive is truncated (tar data ends early)") from exc
        raise ArtifactError(f"{path}: not a model archive (gzip does not hold a valid tar: {exc})") from exc
    except tarfile.TarError as exc:
        raise ArtifactError(f"{path}: not a model archive ({exc})") from exc


def _load_members(path: Path, fh: BinaryIO, limits: ArtifactLimits) -> dict[str, bytes]:
    magic = fh.read(2)
    if magic != _GZIP_MAGIC:
        detail = "empty file" if not magic else "not gzip-compressed"
        raise ArtifactError(f"{path}: not a model archive ({detail})")
    fh.seek(0)
    with _archive_errors(path), gzip.GzipFile(fileobj=fh, mode="rb") as gz:
        # Stream mode ("r|") reads strictly forward: members are consumed as they come, nothing is
        # extracted, and no seek can revisit data.
        with tarfile.open(fileobj=gz, mode="r|") as tar:
            members = _read_members(path, tar, limits)
        _drain_trailer(path, gz)
    return members


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
            members = _load_members(path, fh, limits)
    except OSError as exc:
        raise ArtifactError(f"{path}: cannot read model archive: {exc.strerror or exc}") from exc
    manifest, listing = _parse_manifest(path, members)
    payload = {name: data for name, data in members.items() if name != MANIFEST_NAME}
    _check_listing(path, listing.files, payload)
    for name, data in payload.items():
        _check_file_integrity(path, name, listing.files[name], data)
    _check_required(path, payload, required)
    return LoadedArtifact(files=payload, manifest=manifest, sha256=archive_sha, path=path)
