"""Hostile model archives built for tests: members replaced after training, and decompression bombs
written by streaming (a GiB of zeros costs ~1 MB of disk and no memory to make)."""

from __future__ import annotations

import gzip
import hashlib
import json
import tarfile
from collections.abc import Iterator, Mapping
from functools import cache
from pathlib import Path
from typing import Any

from retail_prediction.artifact.archive import FORMAT_NAME, FORMAT_VERSION, MANIFEST_NAME, pack_artifact, read_artifact

_CHUNK = 1 << 20


def replace_members(source: Path, dest: Path, version: str, **changes: Any) -> Path:
    """A valid (hash-correct) archive of ``source`` with members replaced: bytes as given, anything
    else as its JSON. Keyword names use ``_`` for ``.`` (``metadata_json=...``)."""
    files = dict(read_artifact(source).files)
    for key, value in changes.items():
        name = key.replace("_json", ".json").replace("_onnx", ".onnx").replace("_npz", ".npz")
        files[name] = value if isinstance(value, bytes) else json.dumps(value).encode()
    pack_artifact(dest, files, metadata={"model_version": version})
    return dest


def edit_json(source: Path, name: str, **fields: Any) -> dict[str, Any]:
    """The JSON member ``name`` of ``source`` with ``fields`` set."""
    return {**json.loads(read_artifact(source).files[name]), **fields}


def _filler(size: int, fill: bytes, prefix: bytes, suffix: bytes) -> Iterator[bytes]:
    """``prefix``, then ``fill`` repeated up to ``size`` bytes in all, then ``suffix``, in 1 MiB chunks."""
    yield prefix
    left = size - len(prefix) - len(suffix)
    block = fill * _CHUNK
    while left > 0:
        yield block[:left]
        left -= len(block)
    yield suffix


@cache
def _filler_sha256(size: int, fill: bytes, prefix: bytes, suffix: bytes) -> str:
    digest = hashlib.sha256()
    for chunk in _filler(size, fill, prefix, suffix):
        digest.update(chunk)
    return digest.hexdigest()


def streamed_archive(path: Path, members: Mapping[str, tuple[int, bytes, bytes, bytes]]) -> Path:
    """A hash-correct model archive whose members are ``name: (size, fill, prefix, suffix)``, the tar
    stream written piece by piece: neither the data nor the archive is ever held in memory."""
    files = {name: {"sha256": _filler_sha256(*spec), "size": spec[0]} for name, spec in sorted(members.items())}
    manifest = json.dumps({"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "model_version": "bomb",
                           "files": files}).encode()
    entries = [(MANIFEST_NAME, len(manifest), iter([manifest])),
               *((name, spec[0], _filler(*spec)) for name, spec in sorted(members.items()))]
    # Each piece is its own gzip member (a gzip file may hold several; readers join them), so the
    # megabyte of fill is compressed once and repeated: seconds instead of a minute for a GiB.
    compressed: dict[bytes, bytes] = {}

    def piece(data: bytes) -> bytes:
        if data not in compressed:
            compressed[data] = gzip.compress(data, compresslevel=9, mtime=0)
        return compressed[data]

    with path.open("wb") as out:
        for name, size, chunks in entries:
            info = tarfile.TarInfo(name)
            info.size = size
            out.write(piece(info.tobuf(format=tarfile.USTAR_FORMAT)))
            for chunk in chunks:
                out.write(piece(chunk))
            out.write(piece(b"\0" * (-size % tarfile.BLOCKSIZE)))
        out.write(piece(b"\0" * (2 * tarfile.BLOCKSIZE)))
    return path


def zero_bomb(path: Path, members: int = 2, size: int = 500 << 20) -> Path:
    """``members`` members of ``size`` zero bytes each (default: two of 500 MiB, ~1 MB on disk)."""
    return streamed_archive(path, {f"model{i}.onnx": (size, b"\0", b"", b"") for i in range(members)})


def big_json(path: Path, size: int = 400 << 20) -> Path:
    """A metadata.json of ``size`` bytes (a valid JSON object padded with spaces)."""
    return streamed_archive(path, {"metadata.json": (size, b" ", b'{"model_version": "big"', b"}")})
