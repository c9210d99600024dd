"""model.tar.gz: round trip, determinism, and every refusal, on real crafted archives."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
import tracemalloc
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest

import retail_prediction.artifact.tarstream as artifact_tar
from archives import zero_bomb
from retail_prediction.artifact.archive import (
    FORMAT_NAME,
    MANIFEST_NAME,
    ArtifactError,
    build_manifest,
    pack_artifact,
    read_artifact,
    sha256_file,
    verify_archive_sha256,
)
from retail_prediction.artifact.members import ArtifactLimits, MiB
from retail_prediction.cli import main as cli_main
from retail_prediction.features.tables import FEATURE_SPEC_VERSION
from retail_prediction.serving.predictor import Predictor

FILES = {
    "model.onnx": b"\x08\x07onnx-bytes" * 100,
    "tables.npz": b"PK\x03\x04not-really-npz",
    "feature_spec.json": b'{"features": ["a", "b"]}',
    "metadata.json": b'{"classes": ["L", "M", "H"]}',
}
META = {"model_version": "2026.11.26-1", "created_at": "2026-11-26T00:00:00Z"}


# --------------------------------------------------------------------------------------------------
# Helpers: write arbitrary (including malicious) tars


def _reg(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def _special(name: str, kind: bytes, linkname: str = "") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    return info, b""


def _manifest_member(files: Mapping[str, bytes], /, **override: object) -> tuple[tarfile.TarInfo, bytes]:
    manifest = build_manifest(files, META) | override
    return _reg(MANIFEST_NAME, json.dumps(manifest).encode())


def write_tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes]]) -> Path:
    with tarfile.open(path, "w:gz", format=tarfile.GNU_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if info.isfile() else None)
    return path


def valid_members(files: Mapping[str, bytes] = FILES) -> list[tuple[tarfile.TarInfo, bytes]]:
    return [_manifest_member(files), *(_reg(n, d) for n, d in files.items())]


@pytest.fixture
def packed(tmp_path: Path) -> tuple[Path, str]:
    path = tmp_path / "model.tar.gz"
    return path, pack_artifact(path, FILES, metadata=META)


def refused(path: Path, *fragments: str, **kwargs: object) -> str:
    with pytest.raises(ArtifactError) as info:
        read_artifact(path, **kwargs)  # type: ignore[arg-type]
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, message
    return message


# --------------------------------------------------------------------------------------------------
# Writing and reading back


def test_round_trip(packed: tuple[Path, str]) -> None:
    path, digest = packed
    loaded = read_artifact(path, required=["model.onnx", "feature_spec.json"])
    assert loaded.files == FILES
    assert loaded.sha256 == digest == sha256_file(path) == hashlib.sha256(path.read_bytes()).hexdigest()
    assert loaded.path == path
    assert loaded.model_version == META["model_version"]
    assert loaded.manifest["format"] == FORMAT_NAME and loaded.manifest["format_version"] == 1
    assert loaded.manifest["created_at"] == META["created_at"]
    assert loaded.manifest["files"]["model.onnx"] == {
        "sha256": hashlib.sha256(FILES["model.onnx"]).hexdigest(), "size": len(FILES["model.onnx"]),
    }  # fmt: skip
    assert loaded.json("feature_spec.json") == {"features": ["a", "b"]}


def test_archive_layout_is_deterministic(tmp_path: Path, packed: tuple[Path, str]) -> None:
    path, digest = packed
    again = pack_artifact(tmp_path / "again.tar.gz", dict(reversed(FILES.items())), metadata=META)
    assert again == digest
    with tarfile.open(path) as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == [MANIFEST_NAME, *sorted(FILES)]
    for m in members:
        assert (m.mode, m.uid, m.gid, m.uname, m.gname) == (0o644, 0, 0, "", "")
        assert m.mtime == 1795651200  # 2026-11-26T00:00:00Z
    assert oct(path.stat().st_mode & 0o777) == oct(0o644)


def test_created_at_defaults_to_now_in_utc(tmp_path: Path) -> None:
    path = tmp_path / "m.tar.gz"
    pack_artifact(path, {"model.onnx": b"x"}, metadata={"model_version": "1"})
    assert read_artifact(path).manifest["created_at"].endswith("Z")


def test_write_is_atomic_and_leaves_no_temp_on_error(tmp_path: Path, packed: tuple[Path, str]) -> None:
    path, digest = packed
    with pytest.raises(ArtifactError, match="not JSON-serialisable"):
        pack_artifact(path, FILES, metadata={"model_version": object()})
    assert sha256_file(path) == digest  # the old archive is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.tar.gz"]


@pytest.mark.parametrize(
    ("files", "metadata", "fragment"),
    [
        ({"dir/model.onnx": b"x"}, {}, "flat name"),
        ({"../model.onnx": b"x"}, {}, "flat name"),
        ({MANIFEST_NAME: b"{}"}, {}, "written by pack_artifact"),
        ({"model.onnx": "text"}, {}, "must be bytes"),
        ({"model.onnx": b"x"}, {"format_version": 2}, "reserved"),
        ({"model.onnx": b"x"}, {"created_at": "yesterday"}, "ISO-8601"),
        ({"model.onnx": b"x"}, {"created_at": "2026-01-01T00:00:00"}, "timezone-aware"),
    ],
)
def test_pack_refuses_bad_input(tmp_path: Path, files: dict, metadata: dict, fragment: str) -> None:
    with pytest.raises(ArtifactError, match=fragment):
        pack_artifact(tmp_path / "m.tar.gz", files, metadata=metadata)
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------------------
# Integrity


def test_tampered_byte_names_the_file(tmp_path: Path) -> None:
    good = valid_members()
    tampered = dict(FILES, **{"tables.npz": b"PK\x03\x04not-really-npZ"})  # same size, one byte off
    members = [good[0], *(_reg(n, d) for n, d in tampered.items())]
    message = refused(write_tar(tmp_path / "t.tar.gz", members), "'tables.npz'", "integrity check")
    assert "model.onnx" not in message


def test_size_mismatch_names_the_file(tmp_path: Path) -> None:
    members = [valid_members()[0], *(_reg(n, d + b"!" if n == "model.onnx" else d) for n, d in FILES.items())]
    refused(write_tar(tmp_path / "t.tar.gz", members), "'model.onnx'", "manifest says")


def test_unlisted_member(tmp_path: Path) -> None:
    members = [*valid_members(), _reg("extra.bin", b"surprise")]
    refused(write_tar(tmp_path / "t.tar.gz", members), "extra.bin", "not listed")


def test_listed_member_missing(tmp_path: Path) -> None:
    members = [m for m in valid_members() if m[0].name != "tables.npz"]
    refused(write_tar(tmp_path / "t.tar.gz", members), "tables.npz", "missing")


def test_missing_manifest(tmp_path: Path) -> None:
    refused(write_tar(tmp_path / "t.tar.gz", valid_members()[1:]), MANIFEST_NAME, "missing")


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ({"format": "something-else"}, "unknown archive format"),
        ({"format_version": 2}, "unsupported format_version 2"),
        ({"format_version": "1"}, "unsupported format_version '1'"),
        ({"files": ["model.onnx"]}, "$.files"),
    ],
)
def test_unknown_format_or_version(tmp_path: Path, override: dict, fragment: str) -> None:
    members = [_manifest_member(FILES, **override), *valid_members()[1:]]
    refused(write_tar(tmp_path / "t.tar.gz", members), fragment)


def test_manifest_not_json(tmp_path: Path) -> None:
    members = [_reg(MANIFEST_NAME, b"{not json"), *valid_members()[1:]]
    refused(write_tar(tmp_path / "t.tar.gz", members), MANIFEST_NAME, "not valid JSON")


def test_required_file_missing(packed: tuple[Path, str]) -> None:
    refused(packed[0], "report.md", "required", required=["model.onnx", "report.md"])


def test_pin(packed: tuple[Path, str]) -> None:
    path, digest = packed
    assert verify_archive_sha256(path, digest.upper()) == digest
    assert verify_archive_sha256(path, f"sha256:{digest}") == digest
    assert read_artifact(path, expected_sha256=digest).sha256 == digest
    wrong = "0" * 64
    with pytest.raises(ArtifactError, match=f"{digest}, but {wrong} was expected"):
        verify_archive_sha256(path, wrong)
    refused(path, "pinned", expected_sha256=wrong)
    with pytest.raises(ArtifactError, match="64 hexadecimal"):
        verify_archive_sha256(path, "abc")


# --------------------------------------------------------------------------------------------------
# Unsafe members: refused, and nothing ever lands on disk


def _with_extra(member: tuple[tarfile.TarInfo, bytes]) -> list[tuple[tarfile.TarInfo, bytes]]:
    return [*valid_members(), member]


UNSAFE: dict[str, tuple[Callable[[], tuple[tarfile.TarInfo, bytes]], str]] = {
    "absolute": (lambda: _reg("/tmp/evil.txt", b"pwned"), "absolute path"),
    "parent": (lambda: _reg("../evil.txt", b"pwned"), "'..' path component"),
    "nested-parent": (lambda: _reg("a/../../evil.txt", b"pwned"), "'..' path component"),
    "symlink": (lambda: _special("link.onnx", tarfile.SYMTYPE, "/etc/passwd"), "symbolic link"),
    "hardlink": (lambda: _special("hard.onnx", tarfile.LNKTYPE, "model.onnx"), "hard link"),
    "directory": (lambda: _special("sub", tarfile.DIRTYPE), "directory"),
    "device": (lambda: _special("null", tarfile.CHRTYPE), "character device"),
    "fifo": (lambda: _special("pipe", tarfile.FIFOTYPE), "FIFO"),
    "nested": (lambda: _reg("sub/model.onnx", b"x"), "not a flat file name"),
}


@pytest.mark.parametrize("case", sorted(UNSAFE))
def test_unsafe_member_refused_without_touching_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    make, fragment = UNSAFE[case]
    archive = write_tar(tmp_path / "evil.tar.gz", _with_extra(make()))
    workdir = tmp_path / "a" / "b"
    workdir.mkdir(parents=True)
    monkeypatch.chdir(workdir)  # a '../' extraction relative to cwd would land in tmp_path/a
    before = sorted(tmp_path.rglob("*"))
    refused(archive, fragment, repr(make()[0].name))
    assert sorted(tmp_path.rglob("*")) == before
    assert not Path("/tmp/evil.txt").exists()


def test_duplicate_member(tmp_path: Path) -> None:
    members = [*valid_members(), _reg("model.onnx", FILES["model.onnx"])]
    refused(write_tar(tmp_path / "t.tar.gz", members), "'model.onnx'", "more than once")


# --------------------------------------------------------------------------------------------------
# Size limits


def test_oversized_member_refused_from_its_header(packed: tuple[Path, str]) -> None:
    limit = len(FILES["model.onnx"]) - 1
    refused(packed[0], "'model.onnx'", f"{limit}-byte limit", max_member_bytes=limit)


def test_total_size_capped(packed: tuple[Path, str]) -> None:
    refused(packed[0], "add up to more than the 1000-byte limit", max_total_bytes=1000)


def _raw_member(info: tarfile.TarInfo, data: bytes) -> bytes:
    return info.tobuf(format=tarfile.GNU_FORMAT) + data + b"\0" * (-len(data) % 512)


def test_header_size_is_checked_before_reading(tmp_path: Path) -> None:
    # Claims 1 TiB in its header but holds nothing: refusal must come from the header, not a read.
    info = tarfile.TarInfo("model.onnx")
    info.size = 1 << 40
    path = tmp_path / "huge.tar.gz"
    path.write_bytes(gzip.compress(_raw_member(*_manifest_member(FILES)) + _raw_member(info, b"")))
    refused(path, "'model.onnx'", f"is {1 << 40} bytes, over the")


def test_json_member_has_its_own_cap(tmp_path: Path) -> None:
    files = {**FILES, "metadata.json": b'{"pad": "' + b" " * 5000 + b'"}'}
    path = tmp_path / "m.tar.gz"
    pack_artifact(path, files, metadata=META)
    assert read_artifact(path).files["metadata.json"] == files["metadata.json"]
    error = refused(path, "'metadata.json'", "over the 4096-byte limit", max_json_bytes=4096)
    assert "'model.onnx'" not in error


def test_decompression_bomb_refused_with_bounded_memory(tmp_path: Path) -> None:
    # Two 500 MiB members of zeros, 1 MB on disk, correct hashes: refused before anything is inflated.
    path = zero_bomb(tmp_path / "bomb.tar.gz")
    assert path.stat().st_size < 2 * MiB
    tracemalloc.start()
    try:
        with pytest.raises(ArtifactError) as info:
            read_artifact(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert info.value.reason == "too_large" and "'model0.onnx'" in str(info.value)
    assert peak < 16 * MiB, peak


def test_actual_bytes_are_counted_not_only_headers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A reader that trusted the header would accept this: the header check is skipped, the count trips.
    path = zero_bomb(tmp_path / "bomb.tar.gz", members=1, size=200 * MiB)
    calls: list[int] = []
    real = artifact_tar._check_sizes

    def header_blind(path: Path, name: str, size: int, total: int, limits: ArtifactLimits) -> None:
        calls.append(size)
        if len(calls) > 2:  # the manifest's header and the member's header pass unchecked
            real(path, name, size, total, limits)

    monkeypatch.setattr(artifact_tar, "_check_sizes", header_blind)
    tracemalloc.start()
    try:
        refused(path, "'model0.onnx'", f"over the {64 * MiB}-byte limit")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 80 * MiB, peak


# --------------------------------------------------------------------------------------------------
# JSON members and model content: the server's validation, which `inspect` shares

SPEC = {"feature_spec_version": FEATURE_SPEC_VERSION, "classes": ["LA", "MM"], "levels": ["product"],
        "hierarchy": [], "evidence_power": 2.0, "prior_strength": 1.0, "feature_names": ["a"], "extra": {}}
METADATA = {"model_version": "m1", "example_products": [{"product_id": "P1", "price": 1.5}],
            "candidates": [{"name": "lightgbm", "macro_f1": float("nan")}], "a_future_field": {"x": 1}}

# member -> (content, reason, fragments of the message)
MALFORMED: dict[str, tuple[str, bytes, str, tuple[str, ...]]] = {
    "spec-is-a-list": ("feature_spec.json", b"[]", "bad_json", ("must be a JSON object",)),
    "spec-missing-key": ("feature_spec.json", json.dumps({k: v for k, v in SPEC.items() if k != "classes"}).encode(),
                         "bad_json", ("missing required field `classes`",)),
    "spec-wrong-type": ("feature_spec.json", json.dumps({**SPEC, "levels": "product"}).encode(), "bad_json",
                        ("$.levels",)),
    "spec-version": ("feature_spec.json", json.dumps({**SPEC, "feature_spec_version": 99}).encode(), "unsupported",
                     ("feature spec version 99",)),
    "metadata-examples-int": ("metadata.json", b'{"example_products": 5}', "bad_json", ("$.example_products",)),
    "metadata-example-no-id": ("metadata.json", b'{"example_products": [{"price": 1}]}', "bad_json",
                               ("product_id", "$.example_products[0]")),
    "metadata-candidate-str": ("metadata.json", b'{"candidates": ["x"]}', "bad_json", ("$.candidates[0]",)),
    "metadata-not-json": ("metadata.json", b"{nope", "bad_json", ("not valid JSON",)),
    "metadata-too-deep": ("metadata.json", b"[" * 100_000, "bad_json", ("nested too deeply",)),
    "tables-not-npz": ("tables.npz", b"PK-not-a-zip", "bad_model", ("not a valid .npz",)),
}


def _model_archive(tmp_path: Path, **members: bytes) -> Path:
    files = {**FILES, "feature_spec.json": json.dumps(SPEC).encode(), "metadata.json": json.dumps(METADATA).encode()}
    path = tmp_path / "model.tar.gz"
    pack_artifact(path, {**files, **members}, metadata=META)
    return path


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_member_refused_with_reason_and_field(tmp_path: Path, case: str,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    name, content, reason, fragments = MALFORMED[case]
    path = _model_archive(tmp_path, **{name: content})
    with pytest.raises(ArtifactError) as info:
        Predictor.from_artifact(read_artifact(path))
    assert info.value.reason == reason
    for fragment in (repr(name), *fragments):
        assert fragment in str(info.value)
    # `inspect` refuses it the same way: exit code 2, the member and the field named, no traceback.
    assert cli_main(["inspect", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    for fragment in (repr(name), *fragments):
        assert fragment in err


def test_valid_json_members_pass_with_unknown_fields(tmp_path: Path) -> None:
    # Unknown fields (forward compatibility) and NaN (what training writes) are accepted; the fake
    # tables are what refuses this archive, after both JSON members passed.
    with pytest.raises(ArtifactError, match=r"tables\.npz"):
        Predictor.from_artifact(read_artifact(_model_archive(tmp_path)))


def test_npz_that_would_inflate_past_the_cap(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("price_edges.npy", b"\0" * (3 * MiB))
    path = _model_archive(tmp_path, **{"tables.npz": buf.getvalue()})
    with pytest.raises(ArtifactError, match=r"'tables\.npz' holds 3145728 bytes") as info:
        Predictor.from_artifact(read_artifact(path, max_member_bytes=2 * MiB), limits=ArtifactLimits(2 * MiB))
    assert info.value.reason == "too_large"


def test_missing_json_member_is_named(tmp_path: Path) -> None:
    path = tmp_path / "m.tar.gz"
    pack_artifact(path, {k: v for k, v in FILES.items() if k != "metadata.json"}, metadata=META)
    assert cli_main(["inspect", str(path)]) == 2


# --------------------------------------------------------------------------------------------------
# Not an archive / damaged archive


def test_truncated_gzip(packed: tuple[Path, str], tmp_path: Path) -> None:
    data = packed[0].read_bytes()
    for cut in (len(data) // 2, len(data) - 4):  # mid-data, and inside the gzip trailer
        path = tmp_path / f"cut{cut}.tar.gz"
        path.write_bytes(data[:cut])
        refused(path, "truncated")


def test_tar_cut_inside_a_member(tmp_path: Path) -> None:
    # A complete gzip stream whose tar ends in the middle of a member's data.
    manifest, model = valid_members()[:2]
    assert model[0].name == "model.onnx" and model[0].size > 600
    raw = _raw_member(*manifest) + _raw_member(*model)
    path = tmp_path / "cut.tar.gz"
    path.write_bytes(gzip.compress(raw[: len(_raw_member(*manifest)) + 512 + 600]))
    refused(path, "truncated")


def test_corrupt_compressed_data(packed: tuple[Path, str], tmp_path: Path) -> None:
    data = bytearray(packed[0].read_bytes())
    data[-8] ^= 0xFF  # CRC32 in the gzip trailer
    path = tmp_path / "crc.tar.gz"
    path.write_bytes(bytes(data))
    refused(path, "corrupt")


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b"", "empty file"),
        (b"PK\x03\x04 this is a zip", "not gzip-compressed"),
        (gzip.compress(b"just some text, not a tar" * 50), "not a model archive"),
    ],
)
def test_not_a_model_archive(tmp_path: Path, content: bytes, fragment: str) -> None:
    path = tmp_path / "x.tar.gz"
    path.write_bytes(content)
    refused(path, "not a model archive", fragment)


def test_plain_uncompressed_tar_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "plain.tar"
    with tarfile.open(path, "w") as tar:
        for info, data in valid_members():
            tar.addfile(info, io.BytesIO(data))
    refused(path, "not gzip-compressed")


def test_missing_file(tmp_path: Path) -> None:
    refused(tmp_path / "nope.tar.gz", "cannot read model archive")


def test_no_pickle_anywhere() -> None:
    import retail_prediction.artifact.archive as artifact
    import retail_prediction.artifact.members as artifact_schema
    import retail_prediction.artifact.s3 as s3
    import retail_prediction.artifact.store as store

    for module in (artifact, artifact_tar, artifact_schema, s3, store):
        source = Path(module.__file__ or "").read_text()
        for banned in ("import pickle", "joblib", "allow_pickle=True", "np.load("):
            assert banned not in source, f"{module.__name__} uses {banned}"
