"""GET /model/info: what serves, where it came from, how it was trained, how the image was built."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from ..contract import HIERARCHY_FIELDS, label_name
from ..serving.model_manager import LoadedModel, LoadStatus
from ..serving.settings import Settings
from .schemas import CONTEXT_FIELDS

# Line fields the featurization reads (via encode_clients) and the request fields it ignores.
_LINE_INPUTS = ["product_id", "quantity", "price", "category", *HIERARCHY_FIELDS]


def _validation(metadata: dict[str, Any]) -> dict[str, Any] | None:
    """The chosen model's validation metrics (training records every candidate it compared)."""
    if isinstance(metadata.get("validation"), dict):
        return metadata["validation"]
    chosen = metadata.get("chosen_model")
    return next((c for c in metadata.get("candidates", []) if c.get("name") == chosen), None)


def _drift(model: LoadedModel) -> dict[str, Any] | None:
    """The drift window's PSI figures and what they are measured against; None when the model has no
    reference profile (archives from before drift monitoring) or DRIFT_WINDOW_BASKETS is 0."""
    window = model.drift
    if window is None:
        return None
    snap, reference = window.snapshot(), window.profile
    return {"window_baskets": snap.baskets, "window_size": window.size,
            "input_psi": {k: round(v, 4) for k, v in snap.input.items()},
            "prediction_psi": round(snap.prediction, 4),
            "reference": {"weeks": reference.weeks, "baskets": reference.baskets,
                          "class_shares": dict(zip(reference.classes, reference.class_shares, strict=True))},
            "reading": "PSI < 0.1 stable, 0.1-0.25 moderate shift, > 0.25 major shift"}


def _iso(at: datetime | None) -> str | None:
    return at.isoformat() if at else None


def model_info(model: LoadedModel, status: LoadStatus, settings: Settings,
               shadow: dict[str, Any] | None = None) -> dict[str, Any]:
    p = model.predictor
    meta = p.metadata
    return {
        "model_version": p.version,
        "source_uri": model.source_uri,
        "source_version": model.source_version,
        "sha256": p.sha256,
        "sha256_pinned": settings.model_sha256 is not None,
        "loaded_at": model.loaded_at.isoformat(),
        "load_seconds": round(model.load_seconds, 3),
        "created_at": meta.get("created_at"),
        "chosen_model": meta.get("chosen_model"),
        "training": meta.get("training", {}),
        "validation": _validation(meta),
        "classes": [{"label": c, "name": label_name(c)} for c in p.classes],
        "features": {
            "model_inputs": p.feature_names,
            "line_inputs": _LINE_INPUTS,
            "hierarchy_levels": list(p.tables.hierarchy_names),
            # Accepted and validated, but the current model was not trained on them.
            "unused_context": list(CONTEXT_FIELDS),
        },
        "example_products": p.example_products(40),
        "reload": {
            "poll_seconds": settings.model_poll_seconds,
            "last_check_at": _iso(status.last_check_at),
            "last_check_ok": status.last_check_ok,
            "last_success_at": _iso(status.last_success_at),
            "last_error": status.last_error,
            "refused_version": status.refused_version,
            "last_reload": status.last_reload or None,
        },
        "drift": _drift(model),
        "shadow": shadow,  # the shadow model and how it compares, when SHADOW_MODEL_* is set
        "build": {"commit": settings.git_commit, "branch": settings.git_branch, "date": settings.build_date},
    }
