"""The promotion gate: score the candidate and the current model on labelled weeks the candidate was not
trained on, and refuse a candidate whose accuracy or macro-F1 falls more than ``max_drop`` below the
current model's.

Scoring is `training.scoring.evaluate`, the same path as ``retail-prediction evaluate`` (which scores
through serving's PredictionService), so the gate's figures are the ones an operator can reproduce.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..artifact.archive import ArtifactLimits, read_artifact
from ..data import lgsr
from ..data.reading import DataError, read_transactions
from ..training.scoring import evaluate

METRICS = ("accuracy", "macro_f1")


@dataclass(frozen=True)
class GateResult:
    """Both models' figures on the gate weeks and the verdict."""

    weeks: list[int]
    candidate: dict[str, float]
    current: dict[str, float] | None
    max_drop: float
    passed: bool
    reason: str

    def drops(self) -> dict[str, float]:
        if self.current is None:
            return {}
        return {m: self.current[m] - self.candidate[m] for m in METRICS}

    def as_dict(self) -> dict[str, Any]:
        return {"weeks": [self.weeks[0], self.weeks[-1]] if self.weeks else [], "n_weeks": len(self.weeks),
                "candidate": self.candidate, "current": self.current, "drop": self.drops(),
                "max_drop": self.max_drop, "passed": self.passed, "reason": self.reason}

    def table(self) -> str:
        return format_gate(self.as_dict())


def format_gate(gate: dict[str, Any]) -> str:
    """A gate's figures (`GateResult.as_dict`) as a small table for the terminal: both models, the drop."""
    first, last = (gate["weeks"] or ["?", "?"])
    rows = [f"gate weeks {first}-{last} ({gate['n_weeks']} weeks), max drop {gate['max_drop']}",
            f"{'metric':<10} {'current':>9} {'candidate':>10} {'drop':>8}"]
    current, drops = gate.get("current"), gate.get("drop") or {}
    for m in METRICS:
        cur = f"{current[m]:.4f}" if current else "-"
        drop = f"{drops[m]:+.4f}" if m in drops else "-"
        rows.append(f"{m:<10} {cur:>9} {gate['candidate'][m]:>10.4f} {drop:>8}")
    rows.append(("PASS: " if gate["passed"] else "REFUSED: ") + gate["reason"])
    return "\n".join(rows)


def gate_weeks(data: Sequence[str | Path]) -> list[int]:
    """The shop weeks in the gate files (only that column is read)."""
    table = read_transactions(list(data), columns=(lgsr.SHOP_WEEK,))
    return sorted(int(w) for w in np.unique(table[lgsr.SHOP_WEEK].to_numpy()))


def training_weeks(model: Path, limits: ArtifactLimits | None) -> tuple[int, int] | None:
    """[first, last] shop week the model was trained on (metadata.json training.weeks), None if absent."""
    weeks = read_artifact(model, limits=limits).json("metadata.json").get("training", {}).get("weeks")
    if isinstance(weeks, list) and len(weeks) == 2 and all(isinstance(w, int) for w in weeks):
        return weeks[0], weeks[1]
    return None


def check_no_overlap(weeks: list[int], trained: tuple[int, int] | None, data: Sequence[str | Path]) -> None:
    """DataError naming the weeks if the candidate was trained on any gate week (its figures would flatter it)."""
    where = ", ".join(str(d) for d in data)
    if trained is None:
        raise DataError(where, "the candidate's metadata does not say which weeks it was trained on: "
                        "cannot prove the gate weeks are unseen")
    seen = [w for w in weeks if trained[0] <= w <= trained[1]]
    if seen:
        raise DataError(where, f"gate weeks {seen} overlap the candidate's training weeks "
                        f"{trained[0]}-{trained[1]}: gate on weeks it was not trained on")


def _score(model: Path, data: Sequence[str | Path], out: Path, limits: ArtifactLimits | None) -> dict[str, float]:
    report = evaluate(model, list(data), out, limits=limits)
    return {"accuracy": float(report["accuracy"]), "macro_f1": float(report["macro_f1"]),
            "n_baskets": float(report["n_baskets"])}


def run_gate(candidate: Path, current: Path | None, data: Sequence[str | Path], *, max_drop: float,
             workdir: Path, limits: ArtifactLimits | None = None) -> GateResult:
    """Score both models on ``data`` (after the overlap check) and compare them."""
    if not 0 <= max_drop < 1:
        raise ValueError(f"max drop {max_drop} must be in [0, 1)")
    weeks = gate_weeks(data)
    check_no_overlap(weeks, training_weeks(candidate, limits), data)
    cand = _score(candidate, data, workdir / "gate" / "candidate.json", limits)
    if current is None:
        return GateResult(weeks, cand, None, max_drop, True, "no current model yet: nothing to compare with")
    cur = _score(current, data, workdir / "gate" / "current.json", limits)
    worse = [m for m in METRICS if cur[m] - cand[m] > max_drop]
    if worse:
        detail = ", ".join(f"{m} {cand[m]:.4f} vs current {cur[m]:.4f}" for m in worse)
        return GateResult(weeks, cand, cur, max_drop, False, f"{detail} (drop over {max_drop})")
    return GateResult(weeks, cand, cur, max_drop, True, f"no metric falls more than {max_drop} below current")
