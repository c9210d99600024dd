"""The registry's operations: push a version, list versions, promote one to ``current/``, roll back.

Layout under a root (a folder or ``s3://bucket/prefix``)::

    versions/<version>/model.tar.gz   written once (create-only), never replaced
    versions/<version>/metrics.json   what push recorded: sha256, training weeks, validation figures
    current/model.tar.gz              what the servers load (MODEL_URI / MODEL_KEY point here)
    current/promotion.json            who promoted what, when (informational)
    history/<UTC time>-<version>.json one record per promotion or rollback (S3 has no append)
    locks/current.json                held while a promote or rollback runs: one at a time

Which version is current is read from ``current/model.tar.gz`` itself (its SHA-256 against the versions'
records), not from promotion.json or the history: a promote interrupted after the model was replaced but
before its records were written still reports the truth, and `rollback` still finds the version before.
"""

from __future__ import annotations

import getpass
import os
import re
import socket
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..artifact.archive import ArtifactError, ArtifactLimits, read_artifact, sha256_file
from ..artifact.s3 import StoreError
from ..serving.predictor import Predictor, load_predictor
from .gate import GateResult, run_gate
from .root import Root

CURRENT = "current/model.tar.gz"
LOCK = "locks/current.json"
PROMOTION = "current/promotion.json"
VERSION_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


class RegistryError(Exception):
    """A registry operation was refused; ``exit_code`` is what the CLI exits with."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class GateRefused(RegistryError):
    """The candidate scored worse than the current model on the gate data (exit 3)."""

    def __init__(self, message: str, result: GateResult) -> None:
        super().__init__(message, exit_code=3)
        self.result = result


def archive_key(version: str) -> str:
    return f"versions/{version}/model.tar.gz"


def record_key(version: str) -> str:
    return f"versions/{version}/metrics.json"


def _now() -> datetime:
    return datetime.now(UTC)


def _who(by: str | None) -> str:
    if by:
        return by
    try:
        return os.environ.get("USER") or getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (containers)
        return "unknown"


def _check_version(version: str, where: str) -> str:
    if not VERSION_RE.fullmatch(version):
        raise RegistryError(f"{where}: model version {version!r} is not a usable name (letters, digits, '.', "
                            "'_', '-'; at most 128 characters)")
    return version


# --------------------------------------------------------------------------------------------------
# push


def _record(predictor: Predictor, metrics: dict[str, Any], size: int, by: str) -> dict[str, Any]:
    meta, training = predictor.metadata, predictor.metadata.get("training", {})
    validation = metrics.get("validation", {}) if isinstance(metrics.get("validation"), dict) else {}
    return {"version": predictor.version, "sha256": predictor.sha256, "bytes": size,
            "pushed_at": _now().isoformat(), "pushed_by": by, "created_at": meta.get("created_at"),
            "chosen_model": meta.get("chosen_model"), "training_weeks": training.get("weeks"),
            "validation_weeks": training.get("validation_weeks"),
            "validation": {k: validation[k] for k in ("accuracy", "macro_f1", "log_loss", "n_baskets")
                           if k in validation}}


def push(root: Root, archive: Path, *, by: str | None = None, limits: ArtifactLimits | None = None) -> dict[str, Any]:
    """Verify ``archive`` as the server would and store it under its version, once. RegistryError if that
    version is already there (whoever wins a concurrent push of one version, the others get this)."""
    archive = Path(archive)
    predictor = load_predictor(archive, limits=limits)
    version = _check_version(predictor.version, str(archive))
    # the same bytes again (pinned), for the validation figures train stored next to the model
    artifact = read_artifact(archive, limits=limits, expected_sha256=predictor.sha256)
    metrics = artifact.json("metrics.json") if "metrics.json" in artifact.files else {}
    record = _record(predictor, metrics, archive.stat().st_size, _who(by))
    try:
        root.put_archive(archive_key(version), archive, predictor.sha256, create_only=True)
    except StoreError as exc:
        if exc.reason == "conflict":
            raise RegistryError(f"version {version} already exists in {root.uri}: a version is pushed once "
                                "(train a new model for a new version)") from exc
        raise
    root.write_json(record_key(version), record, create_only=True)
    return record


# --------------------------------------------------------------------------------------------------
# list


@dataclass
class State:
    """What the registry holds: version records, the history (oldest first), the version serving now."""

    records: dict[str, dict[str, Any]]
    history: list[dict[str, Any]]
    current: str | None
    current_sha256: str | None = None
    unknown_current: bool = False  # current/ holds an archive no version record matches
    incomplete: list[str] = field(default_factory=list)  # an archive without its record (push interrupted)


def _current_sha256(root: Root, workdir: Path) -> str | None:
    if not root.exists(CURRENT):
        return None
    recorded = root.recorded_sha256(CURRENT)
    return recorded or sha256_file(root.fetch_archive(CURRENT, workdir))


def read_state(root: Root, workdir: Path) -> State:
    records: dict[str, dict[str, Any]] = {}
    archives: set[str] = set()
    for key in root.list("versions"):
        parts = key.split("/")
        if len(parts) == 3 and parts[2] == "model.tar.gz":
            archives.add(parts[1])
        elif len(parts) == 3 and parts[2] == "metrics.json":
            record = root.read_json(key)
            if record is not None:
                records[parts[1]] = record
    history = [r for r in (root.read_json(k) for k in root.list("history") if k.endswith(".json")) if r]
    history.sort(key=lambda r: str(r.get("at", "")))
    sha = _current_sha256(root, workdir)
    current = next((v for v, r in records.items() if sha is not None and r.get("sha256") == sha), None)
    return State(records, history, current, sha, sha is not None and current is None,
                 sorted(archives - set(records)))


def list_versions(root: Root, workdir: Path) -> list[dict[str, Any]]:
    """One row per version, oldest push first: its record, when it was last promoted, whether it is current."""
    state = read_state(root, workdir)
    promoted: dict[str, str] = {}
    for entry in state.history:
        promoted[str(entry.get("version"))] = str(entry.get("at"))
    rows = [{**record, "promoted_at": promoted.get(version), "current": version == state.current}
            for version, record in state.records.items()]
    rows += [{"version": v, "incomplete": True, "promoted_at": promoted.get(v), "current": False}
             for v in state.incomplete]
    return sorted(rows, key=lambda r: (str(r.get("pushed_at") or ""), r["version"]))


# --------------------------------------------------------------------------------------------------
# promote, rollback


def _serving_stack(state: State) -> list[str]:
    """The versions that served, replayed from the history: a promote pushes, a rollback pops."""
    stack: list[str] = []
    for entry in state.history:
        version = str(entry.get("version"))
        if entry.get("kind") == "rollback" and len(stack) >= 2 and stack[-2] == version:
            stack.pop()
        elif not stack or stack[-1] != version:
            stack.append(version)
    if state.current is not None and (not stack or stack[-1] != state.current):
        stack.append(state.current)  # a promote that replaced the model but did not get to record it
    return stack


def _verified_candidate(root: Root, version: str, state: State, workdir: Path,
                        limits: ArtifactLimits | None) -> Path:
    record = state.records.get(version)
    if record is None:
        known = ", ".join(sorted(state.records)) or "none"
        raise RegistryError(f"no version {version} in {root.uri} (versions: {known})")
    path = root.fetch_archive(archive_key(version), workdir / "candidate")
    recorded = root.recorded_sha256(archive_key(version))
    for expected in {record.get("sha256"), recorded} - {None}:
        if sha256_file(path) != expected:
            raise RegistryError(f"{root.describe(archive_key(version))} does not match the SHA-256 recorded at "
                                f"push ({expected}): refusing to promote it")
    try:
        predictor = load_predictor(path, limits=limits, expected_sha256=str(record["sha256"]))
    except ArtifactError as exc:
        raise RegistryError(f"version {version} fails verification: {exc}") from exc
    if predictor.version != version:
        raise RegistryError(f"{root.describe(archive_key(version))} holds model version {predictor.version}, "
                            f"not {version}")
    return path


def promote(root: Root, version: str, workdir: Path, *, gate_data: Sequence[str | Path] = (),
            max_drop: float = 0.002, by: str | None = None, limits: ArtifactLimits | None = None) -> dict[str, Any]:
    """Verify version ``version``, gate it (if gate data is given) against what serves now, then replace
    ``current/model.tar.gz`` in one atomic write and record the promotion, holding the registry's lock. Any
    failure before that write leaves the current model serving untouched. Returns the history record."""
    _check_version(version, root.uri)
    with _exclusive(root, "promote", version, by):
        return _promote(root, version, workdir, gate_data=gate_data, max_drop=max_drop, by=by, limits=limits)


@contextmanager
def _exclusive(root: Root, kind: str, version: str | None, by: str | None) -> Iterator[None]:
    """One promote or rollback at a time: a lock object written create-only (If-None-Match on S3, a hard link
    in a folder), removed when done. A lock left by a process that died is removed by `unlock`."""
    entry = {"kind": kind, "version": version, "by": _who(by), "at": _now().isoformat(),
             "host": socket.gethostname(), "pid": os.getpid()}
    try:
        root.write_json(LOCK, entry, create_only=True)
    except StoreError as exc:
        if exc.reason != "conflict":
            raise
        held = root.read_json(LOCK) or {}
        raise RegistryError(
            f"another {held.get('kind', 'promote')} ({held.get('version')}, by {held.get('by')} on "
            f"{held.get('host')}, since {held.get('at')}) holds {root.describe(LOCK)}: nothing was written; wait "
            f"for it, or if it died, `retail-prediction registry unlock --root {root.uri}`") from None
    try:
        yield
    finally:
        root.delete(LOCK)


def unlock(root: Root) -> dict[str, Any] | None:
    """Remove the lock a promote or rollback that died left behind; returns what it said (None: no lock)."""
    held = root.read_json(LOCK)
    root.delete(LOCK)
    return held


def _promote(root: Root, version: str, workdir: Path, *, gate_data: Sequence[str | Path] = (),
             max_drop: float = 0.002, by: str | None = None, limits: ArtifactLimits | None = None,
             kind: str = "promote") -> dict[str, Any]:
    state = read_state(root, workdir)
    if state.current == version:
        raise RegistryError(f"version {version} is already current in {root.uri}", exit_code=0)
    candidate = _verified_candidate(root, version, state, workdir, limits)
    gate: GateResult | None = None
    if gate_data:
        current = root.fetch_archive(CURRENT, workdir / "current") if state.current_sha256 else None
        gate = run_gate(candidate, current, gate_data, max_drop=max_drop, workdir=workdir, limits=limits)
        if not gate.passed:
            raise GateRefused(f"version {version} refused by the gate: {gate.reason}", gate)
    sha256 = str(state.records[version]["sha256"])
    if _current_sha256(root, workdir / "recheck") != state.current_sha256:  # narrows, does not close, the race
        raise RegistryError(f"{root.describe(CURRENT)} changed while version {version} was being checked (another "
                            "promote or rollback?): nothing was written; look at `registry list` and run it again")
    root.put_archive(CURRENT, candidate, sha256)  # the one step the servers see; atomic
    at = _now()
    entry = {"kind": kind, "version": version, "previous": state.current, "sha256": sha256,
             "by": _who(by), "at": at.isoformat(), "gate": gate.as_dict() if gate else None}
    root.write_json(PROMOTION, entry)
    root.write_json(f"history/{at:%Y%m%dT%H%M%S%fZ}-{version}.json", entry, create_only=True)
    return entry


def rollback(root: Root, workdir: Path, *, by: str | None = None,
             limits: ArtifactLimits | None = None) -> dict[str, Any]:
    """Re-promote the version that served before the current one, without a gate."""
    with _exclusive(root, "rollback", None, by):
        state = read_state(root, workdir)
        if state.current is None:
            raise RegistryError(f"nothing to roll back in {root.uri}: no current version" + (
                " (current/ holds an archive no version matches)" if state.unknown_current else ""))
        stack = _serving_stack(state)
        if len(stack) < 2:
            raise RegistryError(f"nothing to roll back to in {root.uri}: {state.current} is the first version "
                                "promoted")
        return _promote(root, stack[-2], workdir, by=by, limits=limits, kind="rollback")
