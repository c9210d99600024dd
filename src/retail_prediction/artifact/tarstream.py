"""Reading a model archive's tar stream: every member checked before it is read, and read in chunks.

Members are read into memory, never extracted. Their headers are checked first (name, type, size), and
the *actual* decompressed bytes are counted chunk by chunk against the caps of `ArtifactLimits` (per
member, per JSON member, in total), so a decompression bomb costs at most a cap's worth of memory.
Directory members are *refused*, like any other non-regular member: the format is flat and
`pack_artifact` never writes one, so a directory can only come from a hand-made or foreign archive.
"""

from __future__ import annotations

import gzip
import re
import tarfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from .members import ArtifactError, ArtifactLimits, MiB

MANIFEST_NAME = "manifest.json"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
# A model archive has a handful of files; a cap stops a header flood (millions of empty members)
# from eating memory before any size limit is reached.
MAX_MEMBERS = 256
# The tar end-of-archive marker plus record padding is at most a few KiB; anything much larger
# after it is not ours, and draining it unbounded would let a gzip bomb hide there.
_MAX_TRAILING_BYTES = 1 * MiB
_CHUNK = 1 * MiB
_GZIP_MAGIC = b"\x1f\x8b"


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
    if name != MANIFEST_NAME and not NAME_RE.match(name):
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


def load_members(path: Path, fh: BinaryIO, limits: ArtifactLimits) -> dict[str, bytes]:
    """Every member of the gzip tar ``fh`` by name, checked and read under ``limits``."""
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
