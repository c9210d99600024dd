"""The registry on a local folder and on a real S3 server (SeaweedFS): push once, list, promote, roll back,
concurrent pushes of one version, and a promote interrupted before the serving object is replaced."""

from __future__ import annotations

import io
import tarfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from retail_prediction.artifact.archive import ArtifactError, sha256_file
from retail_prediction.artifact.s3 import StoreError
from retail_prediction.registry import operations as ops
from retail_prediction.registry.root import LocalRoot, Root, S3Root
from s3server import S3Server

from .conftest import Models, reversion


def current_sha(root: Root, tmp_path: Path) -> str:
    return sha256_file(root.fetch_archive(ops.CURRENT, tmp_path / "check"))


def test_push_list_promote_rollback(root: Root, models: Models, tmp_path: Path) -> None:
    record = ops.push(root, models.v1, by="ci")
    assert record["version"] == "v1" and record["sha256"] == sha256_file(models.v1)
    assert record["training_weeks"] == [200607, 200616] and record["pushed_by"] == "ci"
    assert 0 < record["validation"]["accuracy"] <= 1 and 0 < record["validation"]["macro_f1"] <= 1
    ops.push(root, models.v2)
    assert root.read_json(ops.record_key("v2"))["sha256"] == sha256_file(models.v2)

    rows = ops.list_versions(root, tmp_path)
    assert [(r["version"], r["current"], r["promoted_at"]) for r in rows] == [("v1", False, None), ("v2", False, None)]
    assert not root.exists(ops.CURRENT)

    first = ops.promote(root, "v1", tmp_path, by="alice")
    assert (first["version"], first["previous"], first["kind"], first["by"]) == ("v1", None, "promote", "alice")
    assert current_sha(root, tmp_path) == sha256_file(models.v1)
    second = ops.promote(root, "v2", tmp_path)
    assert (second["version"], second["previous"]) == ("v2", "v1")
    assert current_sha(root, tmp_path) == sha256_file(models.v2)
    rows = ops.list_versions(root, tmp_path)
    assert [r["version"] for r in rows if r["current"]] == ["v2"]
    assert all(r["promoted_at"] for r in rows)
    assert root.read_json(ops.PROMOTION)["version"] == "v2"

    back = ops.rollback(root, tmp_path, by="bob")
    assert (back["kind"], back["version"], back["previous"], back["gate"]) == ("rollback", "v1", "v2", None)
    assert current_sha(root, tmp_path) == sha256_file(models.v1)
    history = [root.read_json(k) for k in root.list("history")]
    assert [(h["kind"], h["version"]) for h in history] == [("promote", "v1"), ("promote", "v2"), ("rollback", "v1")]
    with pytest.raises(ops.RegistryError, match=r"nothing to roll back to.*v1 is the first version"):
        ops.rollback(root, tmp_path)
    with pytest.raises(ops.RegistryError, match="v1 is already current") as already:
        ops.promote(root, "v1", tmp_path)
    assert already.value.exit_code == 0


def test_a_version_is_pushed_once(root: Root, models: Models, tmp_path: Path) -> None:
    ops.push(root, models.v1)
    other = reversion(models.v2, tmp_path / "other-bytes.tar.gz", "v1")  # the same version, other bytes
    assert sha256_file(other) != sha256_file(models.v1)
    for archive in (models.v1, other):
        with pytest.raises(ops.RegistryError, match=r"version v1 already exists in .*pushed once"):
            ops.push(root, archive)
    assert sha256_file(root.fetch_archive(ops.archive_key("v1"), tmp_path / "got")) == sha256_file(models.v1)


def test_concurrent_pushes_of_one_version(root: Root, models: Models, tmp_path: Path) -> None:
    """Six pushers of version v1 (two different archives) reach the write together: one wins, five are told."""
    rival = reversion(models.v2, tmp_path / "rival.tar.gz", "v1")
    pushers = 6
    barrier = threading.Barrier(pushers)
    put = root.put_archive

    def put_together(*args: Any, **kwargs: Any) -> None:
        barrier.wait(timeout=60)  # every pusher has verified its archive: the writes race
        put(*args, **kwargs)

    root.put_archive = put_together  # type: ignore[method-assign]
    outcomes: list[tuple[str, str]] = []

    def push(archive: Path) -> None:
        try:
            outcomes.append(("won", str(ops.push(root, archive)["sha256"])))
        except ops.RegistryError as exc:
            outcomes.append(("refused", str(exc)))

    threads = [threading.Thread(target=push, args=(models.v1 if i % 2 else rival,)) for i in range(pushers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    won = [detail for kind, detail in outcomes if kind == "won"]
    refused = [detail for kind, detail in outcomes if kind == "refused"]
    assert len(won) == 1 and len(refused) == pushers - 1, outcomes
    assert all("version v1 already exists" in message for message in refused)
    stored = sha256_file(root.fetch_archive(ops.archive_key("v1"), tmp_path / "stored"))
    assert stored == won[0] == root.read_json(ops.record_key("v1"))["sha256"]
    if isinstance(root, LocalRoot):
        # no temp file of a losing pusher is left behind
        assert sorted(p.name for p in (root.folder / "versions" / "v1").iterdir()) == ["metrics.json", "model.tar.gz"]


def test_interrupted_promote_leaves_current_serving(root: Root, models: Models, tmp_path: Path,
                                                    request: pytest.FixtureRequest) -> None:
    """The candidate is downloaded and verified, then replacing current/ fails midway: current/ is untouched,
    nothing is recorded, and a later promote works."""
    for archive in (models.v1, models.v2):
        ops.push(root, archive)
    ops.promote(root, "v1", tmp_path)
    put = root.put_archive

    def fail_midway(rel: str, path: Path, sha256: str, *, create_only: bool = False) -> None:
        if rel != ops.CURRENT:
            return put(rel, path, sha256, create_only=create_only)
        if isinstance(root, S3Root):  # the S3 server goes away under the upload
            server: S3Server = request.getfixturevalue("s3_running")
            server.stop()
            try:
                return put(rel, path, sha256, create_only=create_only)
            finally:
                server.start()
        assert isinstance(root, LocalRoot)

        def half_then_crash(out: Any) -> None:  # the process dies half-way through the copy
            data = path.read_bytes()
            out.write(data[: len(data) // 2])
            raise OSError("simulated crash half-way through the copy")

        root._write(rel, half_then_crash, create_only)

    root.put_archive = fail_midway  # type: ignore[method-assign]
    with pytest.raises(StoreError) as failed:
        ops.promote(root, "v2", tmp_path)
    assert failed.value.reason in ("unreachable", "io")
    root.put_archive = put  # type: ignore[method-assign]
    assert current_sha(root, tmp_path) == sha256_file(models.v1)
    assert [r["version"] for r in ops.list_versions(root, tmp_path) if r["current"]] == ["v1"]
    assert len(root.list("history")) == 1 and root.read_json(ops.PROMOTION)["version"] == "v1"
    if isinstance(root, LocalRoot):
        assert sorted(p.name for p in (root.folder / "current").iterdir()) == ["model.tar.gz", "promotion.json"]
    ops.promote(root, "v2", tmp_path)
    assert current_sha(root, tmp_path) == sha256_file(models.v2)


def test_promote_interrupted_after_the_swap_is_still_rolled_back(root: Root, models: Models, tmp_path: Path) -> None:
    """Killed after current/ was replaced but before anything was recorded: list tells the truth (read from
    current/ itself) and rollback still returns to the version before."""
    for archive in (models.v1, models.v2):
        ops.push(root, archive)
    ops.promote(root, "v1", tmp_path)
    root.put_archive(ops.CURRENT, models.v2, sha256_file(models.v2))  # the swap, and nothing after it
    assert [r["version"] for r in ops.list_versions(root, tmp_path) if r["current"]] == ["v2"]
    assert ops.rollback(root, tmp_path)["version"] == "v1"
    assert current_sha(root, tmp_path) == sha256_file(models.v1)


def test_refusals_name_what_is_wrong(root: Root, models: Models, tmp_path: Path, tampered: Path) -> None:
    with pytest.raises(ArtifactError, match="tampered"):
        ops.push(root, tampered)
    assert root.list("versions") == []
    ops.push(root, models.v1)
    with pytest.raises(ops.RegistryError, match=r"no version v9 in .* \(versions: v1\)"):
        ops.promote(root, "v9", tmp_path)
    with pytest.raises(ops.RegistryError, match="not a usable name"):
        ops.promote(root, "../v1", tmp_path)
    with pytest.raises(ops.RegistryError, match=r"nothing to roll back.*no current version"):
        ops.rollback(root, tmp_path)


def test_a_version_changed_behind_the_registry_is_not_promoted(root: Root, models: Models, tmp_path: Path) -> None:
    """Someone with write access replaced versions/v1/model.tar.gz: its hash no longer matches the push record."""
    ops.push(root, models.v1)
    ops.push(root, models.v2)
    if isinstance(root, LocalRoot):
        (root.folder / "versions" / "v1" / "model.tar.gz").write_bytes(models.v2.read_bytes())
    else:
        root.client.put_object(Bucket=root.bucket, Key=root.key(ops.archive_key("v1")), Body=models.v2.read_bytes())
    with pytest.raises(ops.RegistryError, match="does not match the SHA-256 recorded at push"):
        ops.promote(root, "v1", tmp_path)
    assert not root.exists(ops.CURRENT)


@pytest.fixture(scope="module")
def tampered(models: Models, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """v1 with metadata.json edited after packing (same length): the manifest's hash no longer matches."""
    out = tmp_path_factory.mktemp("tampered") / "tampered.tar.gz"
    with tarfile.open(models.v1, "r:gz") as src, tarfile.open(out, "w:gz") as dst:
        for member in src.getmembers():
            data = src.extractfile(member).read()  # type: ignore[union-attr]
            if member.name == "metadata.json":
                data = data.replace(b'"model_version": "v1"', b'"model_version": "v0"', 1)
            dst.addfile(member, io.BytesIO(data))
    return out


def test_s3_create_only_is_enforced_by_the_server(make_s3_root: Callable[..., S3Root], models: Models) -> None:
    """SeaweedFS honours If-None-Match: * (as AWS S3 does since 2024): the second create is a conflict."""
    root = make_s3_root()
    root.write_json("probe.json", {"n": 1}, create_only=True)
    with pytest.raises(StoreError) as conflict:
        root.write_json("probe.json", {"n": 2}, create_only=True)
    assert conflict.value.reason == "conflict"
    assert root.read_json("probe.json") == {"n": 1}
    root.write_json("probe.json", {"n": 3})  # a replacing write is allowed
    assert root.read_json("probe.json") == {"n": 3}


def test_one_promote_at_a_time(root: Root, models: Models, tmp_path: Path) -> None:
    """While v3 is being fetched and verified, another promote (or rollback) is refused, naming the one that
    holds the registry, and writes nothing; v3's promote then completes and the lock is gone."""
    v3 = reversion(models.v1, tmp_path / "v3.tar.gz", "v3")
    for archive in (models.v1, models.v2, v3):
        ops.push(root, archive)
    ops.promote(root, "v1", tmp_path / "first")
    fetch = root.fetch_archive
    refused: list[str] = []

    def fetch_while_another_promotes(rel: str, dest_dir: Path) -> Path:
        if rel == ops.archive_key("v3"):
            for other in (lambda: ops.promote(root, "v2", tmp_path / "other", by="bob"),
                          lambda: ops.rollback(root, tmp_path / "other", by="bob")):
                with pytest.raises(ops.RegistryError) as held:
                    other()
                refused.append(str(held.value))
        return fetch(rel, dest_dir)

    root.fetch_archive = fetch_while_another_promotes  # type: ignore[method-assign]
    ops.promote(root, "v3", tmp_path / "mine", by="alice")
    assert len(refused) == 2 and all("another promote (v3, by alice" in m and "registry unlock" in m for m in refused)
    assert current_sha(root, tmp_path) == sha256_file(v3)
    assert [root.read_json(k)["version"] for k in root.list("history")] == ["v1", "v3"]
    assert not root.exists(ops.LOCK)


def test_a_lock_is_released_on_failure_and_a_dead_ones_is_removed(root: Root, models: Models,
                                                                   tmp_path: Path) -> None:
    ops.push(root, models.v1)
    with pytest.raises(ops.RegistryError, match="no version v9"):
        ops.promote(root, "v9", tmp_path)
    assert not root.exists(ops.LOCK)
    root.write_json(ops.LOCK, {"kind": "promote", "version": "v1", "by": "ci", "host": "pod-1", "at": "2026-12-01"})
    with pytest.raises(ops.RegistryError, match=r"another promote \(v1, by ci on pod-1, since 2026-12-01\)"):
        ops.promote(root, "v1", tmp_path)
    assert ops.unlock(root) == {"kind": "promote", "version": "v1", "by": "ci", "host": "pod-1", "at": "2026-12-01"}
    assert ops.unlock(root) is None
    ops.promote(root, "v1", tmp_path)
    assert not root.exists(ops.LOCK)


def test_a_promote_that_lost_a_race_writes_nothing(root: Root, models: Models, tmp_path: Path) -> None:
    """A writer that ignores the lock replaces current/ while v3 is being checked: v3's promote then refuses
    instead of silently replacing what the other one wrote."""
    v3 = reversion(models.v1, tmp_path / "v3.tar.gz", "v3")
    for archive in (models.v1, models.v2, v3):
        ops.push(root, archive)
    ops.promote(root, "v1", tmp_path / "first")
    fetch = root.fetch_archive

    def fetch_while_another_writes(rel: str, dest_dir: Path) -> Path:
        if rel == ops.archive_key("v3"):
            root.put_archive(ops.CURRENT, models.v2, sha256_file(models.v2))
        return fetch(rel, dest_dir)

    root.fetch_archive = fetch_while_another_writes  # type: ignore[method-assign]
    with pytest.raises(ops.RegistryError, match="changed while version v3 was being checked"):
        ops.promote(root, "v3", tmp_path / "mine")
    assert current_sha(root, tmp_path) == sha256_file(models.v2)
    assert [root.read_json(k)["version"] for k in root.list("history")] == ["v1"]
    assert not root.exists(ops.LOCK)
