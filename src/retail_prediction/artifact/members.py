"""Schemas of a model archive's JSON members and the caps on what an archive may hold.

An archive that passes its hash checks is still hostile input: its JSON members are parsed under a size
cap and then checked against msgspec structs, so a member of the wrong shape is refused with a message
naming the member and the field (`$.example_products`) instead of failing later with an AttributeError.
Unknown extra fields are allowed (newer writers may add some); the types of the fields read are checked.
"""

from __future__ import annotations

import io
import itertools
import json
import math
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypeVar

import msgspec

MiB = 1024 * 1024
# Sized from the real model (model.onnx 445 KB, tables.npz 239 KB, metadata.json 10 KB, trained on all
# 2.5 M lines) with two orders of magnitude of headroom for larger training sets; see docs/api.md.
DEFAULT_MAX_MEMBER_BYTES = 64 * MiB
DEFAULT_MAX_TOTAL_BYTES = 128 * MiB
DEFAULT_MAX_JSON_BYTES = 1 * MiB

T = TypeVar("T")


class ArtifactError(Exception):
    """A model archive cannot be written or is not safe/valid to load. The message is user-facing.

    ``reason`` is a short code for metrics and logs: ``bad_archive`` (structure, integrity, pin),
    ``too_large`` (over a size cap), ``bad_json`` (a JSON member malformed or of the wrong shape),
    ``unsupported`` (a format or spec version this reader does not know), ``bad_model`` (the tables or
    the ONNX graph cannot be used).
    """

    def __init__(self, message: str, reason: str = "bad_archive") -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class ArtifactLimits:
    """Caps on the *decompressed* bytes of one member, of all members, and of one JSON member."""

    max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES
    max_total_bytes: int = DEFAULT_MAX_TOTAL_BYTES
    max_json_bytes: int = DEFAULT_MAX_JSON_BYTES

    @property
    def max_download_bytes(self) -> int:
        """An archive larger than its decompressed cap plus tar/gzip overhead cannot be valid."""
        return self.max_total_bytes + self.max_total_bytes // 32 + MiB

    def member_cap(self, name: str) -> int:
        return min(self.max_json_bytes, self.max_member_bytes) if name.endswith(".json") else self.max_member_bytes


# --------------------------------------------------------------------------------------------------
# Schemas (unknown fields are ignored by msgspec unless a struct forbids them)


class FileEntry(msgspec.Struct):
    sha256: str
    size: int


class Manifest(msgspec.Struct):
    format: str
    format_version: int
    files: dict[str, FileEntry]
    model_version: str | None = None
    created_at: str | None = None


class FeatureSpec(msgspec.Struct):
    feature_spec_version: int
    classes: Annotated[list[str], msgspec.Meta(min_length=1)]
    levels: Annotated[list[str], msgspec.Meta(min_length=1)]
    hierarchy: list[str]
    evidence_power: float
    prior_strength: float
    feature_names: list[str]
    extra: dict[str, Any] = msgspec.field(default_factory=dict)


class ExampleProduct(msgspec.Struct):
    product_id: str
    price: float | None = None
    hierarchy: Annotated[list[str | None], msgspec.Meta(max_length=4)] = msgspec.field(default_factory=list)
    likely_class: str | None = None


class Candidate(msgspec.Struct):
    name: str


class Metadata(msgspec.Struct):
    model_version: str | None = None
    created_at: str | None = None
    chosen_model: str | None = None
    training: dict[str, Any] = msgspec.field(default_factory=dict)
    validation: dict[str, Any] | None = None
    candidates: list[Candidate] = msgspec.field(default_factory=list)
    example_products: list[ExampleProduct] = msgspec.field(default_factory=list)


class FeatureProfile(msgspec.Struct):
    """One basket feature's reference distribution: `column` of the feature matrix, interior bin edges
    (bin = searchsorted(edges, x, side="right")) and the reference share of each of the len(edges)+1 bins."""

    column: str
    edges: Annotated[list[float], msgspec.Meta(max_length=64)]
    shares: Annotated[list[float], msgspec.Meta(min_length=1, max_length=65)]


class Profile(msgspec.Struct):
    """profile.json: what the model saw on weeks it was not trained on, for drift monitoring (optional)."""

    version: int
    baskets: int
    weeks: list[int]
    features: Annotated[dict[str, FeatureProfile], msgspec.Meta(max_length=16)]
    classes: list[str]
    class_shares: list[float]


PROFILE_VERSION = 1


# --------------------------------------------------------------------------------------------------
# Parsing


def parse_json(path: Path, name: str, data: bytes) -> dict[str, Any]:
    """The JSON object in member ``name`` (stdlib json: it accepts the NaN that training may write)."""
    try:
        value = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{path}: member {name!r} is not valid JSON: {exc}", "bad_json") from exc
    except RecursionError as exc:
        raise ArtifactError(f"{path}: member {name!r} is nested too deeply", "bad_json") from exc
    if not isinstance(value, dict):
        raise ArtifactError(f"{path}: member {name!r} must be a JSON object, not {type(value).__name__}",
                            "bad_json")
    return value


def check_schema(path: Path, name: str, value: dict[str, Any], schema: type[T]) -> T:
    """``value`` converted to ``schema``; ArtifactError naming the member and the field if it does not fit."""
    try:
        return msgspec.convert(value, schema)
    except msgspec.ValidationError as exc:
        raise ArtifactError(f"{path}: member {name!r} does not match its schema: {exc}", "bad_json") from exc


def member(path: Path, files: dict[str, bytes], name: str) -> bytes:
    if name not in files:
        raise ArtifactError(f"{path}: member {name!r} is not in the archive")
    return files[name]


def feature_spec(path: Path, files: dict[str, bytes], version: int) -> dict[str, Any]:
    """feature_spec.json as a dict, its version and field types checked."""
    name = "feature_spec.json"
    spec = parse_json(path, name, member(path, files, name))
    found = spec.get("feature_spec_version")
    if found != version or type(found) is not int:
        raise ArtifactError(f"{path}: member {name!r}: the model was built with feature spec version {found!r}; "
                            f"this version serves version {version}: retrain it with `retail-prediction train`",
                            "unsupported")
    check_schema(path, name, spec, FeatureSpec)
    return spec


def metadata(path: Path, files: dict[str, bytes]) -> dict[str, Any]:
    """metadata.json as a dict, the types of the fields the service reads checked."""
    name = "metadata.json"
    meta = parse_json(path, name, member(path, files, name))
    check_schema(path, name, meta, Metadata)
    return meta


def check_npz(path: Path, name: str, data: bytes, limits: ArtifactLimits) -> None:
    """Refuse an .npz whose arrays would decompress past the member cap (a zip bomb inside the archive).

    zipfile never yields more than an entry's declared size, so capping the declared sizes bounds the
    bytes NumPy can read.
    """
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            total = sum(info.file_size for info in zf.infolist())
    except (zipfile.BadZipFile, ValueError, EOFError) as exc:
        raise ArtifactError(f"{path}: member {name!r} is not a valid .npz file: {exc}", "bad_model") from exc
    if total > limits.max_member_bytes:
        raise ArtifactError(f"{path}: member {name!r} holds {total} bytes of arrays, over the "
                            f"{limits.max_member_bytes}-byte limit", "too_large")


def profile(path: Path, files: dict[str, bytes], classes: tuple[str, ...]) -> Profile | None:
    """profile.json checked (edges ascending, one share per bin, shares summing to 1, the model's classes),
    or None when the archive has none (models trained before drift monitoring)."""
    name = "profile.json"
    if name not in files:
        return None
    found = check_schema(path, name, parse_json(path, name, files[name]), Profile)
    problems = [f"feature {key!r}: {problem}" for key, feature in found.features.items()
                if (problem := _distribution_problem(feature.edges, feature.shares))]
    if found.version != PROFILE_VERSION:
        problems.append(f"version {found.version} (this code reads {PROFILE_VERSION})")
    if tuple(found.classes) != classes:
        problems.append(f"classes {found.classes} are not the model's {list(classes)}")
    elif problem := _distribution_problem(None, found.class_shares, len(classes)):
        problems.append(f"class_shares: {problem}")
    if problems:
        raise ArtifactError(f"{path}: member {name!r}: {'; '.join(problems)}", "bad_json")
    return found


def _distribution_problem(edges: list[float] | None, shares: list[float], bins: int | None = None) -> str | None:
    expected = len(edges) + 1 if edges is not None else bins
    if len(shares) != expected:
        return f"{len(shares)} shares for {expected} bins"
    if edges is not None and not all(math.isfinite(e) for e in edges):
        return "edges must be finite numbers"
    if edges is not None and any(b <= a for a, b in itertools.pairwise(edges)):
        return "edges must be strictly ascending"
    if not all(math.isfinite(s) and s >= 0 for s in shares) or abs(sum(shares) - 1) > 1e-6:
        return "shares must be non-negative and sum to 1"
    return None
