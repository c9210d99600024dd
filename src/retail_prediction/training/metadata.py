"""What a trained artifact says about itself: metadata.json (data, settings, candidates, versions, example
products) and the files packed beside the model."""

from __future__ import annotations

import hashlib
import json
import platform
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..features.tables import FeatureTables
from .evaluation import confusion_png, markdown_report


@dataclass(frozen=True)
class ProductFacts:
    """Per product row of the shipped tables: mean unit price and hierarchy codes (None: missing)."""

    price: np.ndarray
    hierarchy: list[list[str | None]]


def example_products(tables: FeatureTables, facts: ProductFacts, limit: int = 40) -> list[dict[str, Any]]:
    """The best-known products with a typical unit price and their hierarchy, for people trying the API."""
    products = tables.levels[0]
    evidence = products.counts.sum(axis=1)
    top = np.argsort(-evidence)[: limit * 3]
    shares = products.counts / np.maximum(evidence[:, None], 1e-12)
    out = []
    for r in top:
        best = int(shares[r].argmax())
        out.append({"product_id": str(products.vocab[r]), "price": round(float(facts.price[r]), 2),
                    "hierarchy": facts.hierarchy[r], "likely_class": tables.classes[best]})
    # A spread of classes makes a better demo than the 40 most common products of one class.
    out.sort(key=lambda e: (e["likely_class"]))
    per_class: dict[str, list[dict[str, Any]]] = {}
    for e in out:
        per_class.setdefault(e["likely_class"], []).append(e)
    mixed = [e for group in zip(*per_class.values(), strict=False) for e in group]
    return (mixed + [e for e in out if e not in mixed])[:limit]


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _library_versions() -> dict[str, str]:
    names = ["numpy", "pyarrow", "scikit-learn", "lightgbm", "onnx", "onnxruntime", "skl2onnx", "onnxmltools"]
    versions = {"python": platform.python_version()}
    for name in names:
        try:
            versions[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            continue
    return versions


def metadata(training: dict[str, Any], classes: list[str], chosen: str, learned: dict[str, int],
             comparison: list[dict[str, Any]], parity: float, tables: FeatureTables,
             examples: list[dict[str, Any]]) -> dict[str, Any]:
    now = datetime.now(UTC)
    digest = hashlib.sha256(tables.to_npz_bytes()).hexdigest()[:8]
    return {
        "model_version": f"{now:%Y%m%d%H%M%S}-{digest}",
        "created_at": now.isoformat(timespec="seconds"),
        "classes": classes,
        "chosen_model": chosen,
        "chosen_model_learned": learned,  # e.g. LightGBM's boosting rounds, found on held-out rows
        "training": training,
        "candidates": comparison,
        "onnx_parity_max_abs_diff": parity,
        "code_version": __version__,
        "git_commit": _git_commit(),
        "libraries": _library_versions(),
        "example_products": examples,
    }


def artifact_files(onnx_bytes: bytes, tables: FeatureTables, meta: dict[str, Any], validation: dict[str, Any],
                   comparison: list[dict[str, Any]]) -> dict[str, bytes]:
    title = f"Validation of {meta['chosen_model']} on weeks {meta['training']['validation_weeks']}"
    metrics = {"chosen": meta["chosen_model"], "validation": validation, "candidates": comparison}
    return {
        "model.onnx": onnx_bytes,
        "tables.npz": tables.to_npz_bytes(),
        "feature_spec.json": tables.spec_json(),
        "metadata.json": json.dumps(meta, indent=2).encode(),
        "metrics.json": json.dumps(metrics, indent=2).encode(),
        "report.md": markdown_report(validation, title=title,
                                     context={"model version": meta["model_version"]}).encode(),
        "confusion_matrix.png": confusion_png(validation, title),
    }
