"""The promotion gate on real models and generated weeks: a clearly worse candidate is refused (and the current
model keeps serving), an equal one passes, gate weeks the candidate was trained on are refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import Weeks
from retail_prediction.artifact.archive import sha256_file
from retail_prediction.data.errors import DataError
from retail_prediction.registry import operations as ops
from retail_prediction.registry.root import LocalRoot, Root

from .conftest import Models


def test_gate_refuses_a_worse_model_and_passes_an_equal_one(root: Root, models: Models, worse_model: Path,
                                                             weeks: Weeks, tmp_path: Path) -> None:
    for archive in (models.v1, models.v2, worse_model):
        ops.push(root, archive)
    first = ops.promote(root, "v1", tmp_path, gate_data=weeks.later)
    assert first["gate"]["passed"] and first["gate"]["current"] is None
    assert "no current model yet" in first["gate"]["reason"]

    with pytest.raises(ops.GateRefused) as refused:
        ops.promote(root, "worse", tmp_path, gate_data=[weeks.folder / w.name for w in weeks.later])
    result = refused.value.result
    assert refused.value.exit_code == 3 and not result.passed
    assert result.current is not None and result.candidate["accuracy"] < result.current["accuracy"] - 0.002
    assert result.weeks == sorted({int(w.name[13:19]) for w in weeks.later})
    table = result.table()
    assert "REFUSED" in table and f"{result.current['accuracy']:.4f}" in table
    assert f"{result.candidate['macro_f1']:.4f}" in table
    assert sha256_file(root.fetch_archive(ops.CURRENT, tmp_path / "after")) == sha256_file(models.v1)
    assert len(root.list("history")) == 1

    equal = ops.promote(root, "v2", tmp_path, gate_data=weeks.later, max_drop=0.0)
    assert equal["gate"]["passed"] and equal["gate"]["drop"] == {"accuracy": 0.0, "macro_f1": 0.0}
    assert equal["gate"]["candidate"] == equal["gate"]["current"]
    assert sha256_file(root.fetch_archive(ops.CURRENT, tmp_path / "after2")) == sha256_file(models.v2)


def test_gate_weeks_the_candidate_was_trained_on_are_refused(tmp_path: Path, models: Models, weeks: Weeks) -> None:
    root = LocalRoot(tmp_path / "registry")
    ops.push(root, models.v1)
    with pytest.raises(DataError, match=r"gate weeks \[200615, 200616\] overlap the candidate's training weeks "
                                        r"200607-200616"):
        ops.promote(root, "v1", tmp_path, gate_data=[*weeks.train[-2:], *weeks.later])
    assert not root.exists(ops.CURRENT)
