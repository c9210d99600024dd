"""The training pipeline end to end on generated weeks (and on real ones when present): artifact, evaluation,
batch scoring, CLI."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import numpy as np
import pytest

from conftest import Weeks
from retail_prediction.artifact.archive import read_artifact
from retail_prediction.serving.predictor import REQUIRED_FILES, Predictor
from retail_prediction.training.candidates import LightGBMCandidate


def _cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "retail_prediction.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_artifact_holds_everything_and_no_pickle(trained_model: Path, weeks: Weeks) -> None:
    art = read_artifact(trained_model)
    for name in (*REQUIRED_FILES, "metrics.json", "report.md", "confusion_matrix.png"):
        assert name in art.files
    assert set(art.manifest["files"]) == set(art.files)
    with tarfile.open(trained_model) as tar:
        names = tar.getnames()
    assert not [n for n in names if n.endswith((".pkl", ".pickle", ".joblib"))]
    for name, data in art.files.items():
        # A pickle stream starts with PROTO (0x80); none of our members may be one.
        assert not data.startswith(b"\x80"), name
    meta = json.loads(art.files["metadata.json"])
    assert meta["onnx_parity_max_abs_diff"] <= 1e-5
    assert meta["chosen_model"] in {"lightgbm", "logistic_regression"}
    assert {c["name"] for c in meta["candidates"]} == {"majority", "logistic_regression", "lightgbm"}
    trained = weeks.train_weeks
    assert meta["training"]["weeks"] == [trained[0], trained[-1]]
    # Time-based validation: the held-out weeks are the latest ones.
    assert meta["training"]["validation_weeks"] == [trained[-2], trained[-1]]
    assert {"numpy", "lightgbm", "onnxruntime", "python"} <= set(meta["libraries"])


def test_model_beats_the_baseline_on_held_out_weeks(trained_model: Path) -> None:
    meta = json.loads(read_artifact(trained_model).files["metadata.json"])
    scores = {c["name"]: c["macro_f1"] for c in meta["candidates"]}
    assert scores[meta["chosen_model"]] == max(scores.values())
    assert scores[meta["chosen_model"]] > scores["majority"] + 0.5


def test_lightgbm_learns_its_number_of_rounds(trained_model: Path) -> None:
    """The rounds are found on held-out training rows, recorded for the comparison and the shipped model."""
    meta = json.loads(read_artifact(trained_model).files["metadata.json"])
    compared = next(c for c in meta["candidates"] if c["name"] == "lightgbm")
    assert 1 <= compared["rounds"] < LightGBMCandidate().max_rounds
    if meta["chosen_model"] == "lightgbm":
        assert 1 <= meta["chosen_model_learned"]["rounds"] < LightGBMCandidate().max_rounds


def test_lightgbm_stops_when_held_out_loss_stops_improving() -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(4000, 5)).astype(np.float32)
    y = (X[:, 0] > 0).astype(np.int64) + (X[:, 1] > 1).astype(np.int64)  # 3 classes, noise-free
    noisy = np.where(rng.random(y.size) < 0.2, rng.integers(0, 3, y.size), y)  # the rest cannot be learned
    model = LightGBMCandidate(max_rounds=300, patience=5)
    model.fit(X, noisy, 3)
    assert 1 <= model.rounds < 300  # boosting on label noise only hurts the held-out log loss
    tiny = LightGBMCandidate(max_rounds=7)
    tiny.fit(X[:100], y[:100], 3)  # 10 held-out rows say nothing: the cap is used
    assert tiny.rounds == 7


def _evaluate(model: Path, week: Path, out: Path) -> dict:
    proc = _cli("evaluate", "--model", str(model), "--data", str(week), "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    return json.loads(out.read_text())


def test_evaluate_writes_json_png_and_report(trained_model: Path, weeks: Weeks, tmp_path: Path) -> None:
    out = tmp_path / "eval.json"
    report = _evaluate(trained_model, weeks.later[-1], out)
    for key in ("accuracy", "macro_f1", "per_class", "confusion_matrix", "log_loss", "n_baskets", "unseen_products"):
        assert key in report
    for key in ("accuracy", "macro_f1", "per_class", "confusion_matrix", "log_loss", "n_baskets"):
        assert key in report["unseen_products"]
    assert report["accuracy"] > 0.8  # 8 training weeks; the majority class alone scores about 0.5
    assert set(report["per_class"]["MM"]) == {"precision", "recall", "f1", "support"}
    assert sum(map(sum, report["confusion_matrix"])) == report["n_baskets"]
    assert out.with_suffix(".png").read_bytes().startswith(b"\x89PNG")
    assert "| all baskets |" in out.with_suffix(".md").read_text()


def test_evaluate_streams_chunk_by_chunk_with_the_same_report(trained_model: Path, weeks: Weeks,
                                                              tmp_path: Path) -> None:
    from retail_prediction.training.scoring import evaluate

    files = weeks.later[:3]
    assert len(files) == 3
    whole = evaluate(trained_model, files, tmp_path / "whole.json", chunk_bytes=1 << 40)  # one chunk
    by_file = evaluate(trained_model, files, tmp_path / "by_file.json", chunk_bytes=1)  # a chunk per file
    assert by_file == whole and whole["n_baskets"] > 0
    middle = int(files[1].name[13:19])
    alone = evaluate(trained_model, [files[1]], tmp_path / "alone.json")
    chosen = evaluate(trained_model, files, tmp_path / "chosen.json", first_week=middle, last_week=middle,
                      chunk_bytes=1)  # the other files' lines are dropped chunk by chunk
    assert chosen == alone and chosen["weeks"] == [middle, middle]


@pytest.mark.real_data
def test_accuracy_on_a_later_real_week(real_model: Path, real_weeks: Weeks, tmp_path: Path) -> None:
    report = _evaluate(real_model, real_weeks.later[0], tmp_path / "eval.json")
    assert report["accuracy"] > 0.85  # 8 real training weeks; the majority class alone scores about 0.5


def test_predict_scores_every_basket_through_the_predictor(trained_model: Path, weeks: Weeks, tmp_path: Path) -> None:
    week = weeks.later[0]
    out = tmp_path / "pred.csv"
    proc = _cli("predict", "--model", str(trained_model), "--data", str(week), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    with out.open() as f:
        rows = list(csv.DictReader(f))
    predictor = Predictor.load(trained_model)
    assert list(rows[0]) == ["basket_id", "label", *[f"p_{c}" for c in predictor.classes]]
    assert len({r["basket_id"] for r in rows}) == len(rows) > 1000
    probs = np.array([[float(r[f"p_{c}"]) for c in predictor.classes] for r in rows])
    np.testing.assert_allclose(probs.sum(axis=1), 1, atol=1e-5)
    assert all(r["label"] == predictor.classes[int(np.argmax(p))] for r, p in zip(rows, probs, strict=True))
    assert not (tmp_path / "pred.explanations.jsonl").exists()  # only with --explain


def test_predict_explain_writes_each_baskets_explanation(trained_model: Path, weeks: Weeks, tmp_path: Path) -> None:
    out = tmp_path / "pred.csv"
    proc = _cli("predict", "--model", str(trained_model), "--data", str(weeks.later[0]), "--out", str(out), "--explain")
    assert proc.returncode == 0, proc.stderr
    with out.open() as f:
        rows = list(csv.DictReader(f))
    explained = [json.loads(line) for line in (tmp_path / "pred.explanations.jsonl").read_text().splitlines()]
    assert [(e["basket_id"], e["label"]) for e in explained] == [(r["basket_id"], r["label"]) for r in rows]
    tables = Predictor.load(trained_model).tables
    for e in explained:
        why = e["explanation"]
        assert why["class"] == e["label"] and why["lines"]
        assert sum(line["contribution"] for line in why["lines"]) == pytest.approx(why["evidence"] - why["prior"])
        assert {line["source"] for line in why["lines"]} <= set(tables.source_names)


def test_inspect_and_refusal_of_a_tampered_archive(trained_model: Path, tmp_path: Path) -> None:
    proc = _cli("inspect", str(trained_model))
    assert proc.returncode == 0 and json.loads(proc.stdout)["metadata"]["chosen_model"]
    bad = tmp_path / "bad.tar.gz"
    with tarfile.open(trained_model) as src, tarfile.open(bad, "w:gz") as dst:
        for member in src.getmembers():
            data = src.extractfile(member).read()
            if member.name == "tables.npz":
                data = data[:-1] + bytes([data[-1] ^ 1])
            member.size = len(data)
            import io

            dst.addfile(member, io.BytesIO(data))
    proc = _cli("inspect", str(bad))
    assert proc.returncode == 2 and "tables.npz" in proc.stderr and "Traceback" not in proc.stderr


def test_train_cli_until_week(weeks: Weeks, tmp_path: Path) -> None:
    files = [str(f) for f in weeks.train[:6]]
    trained = weeks.train_weeks
    out = tmp_path / "m.tar.gz"
    proc = _cli("train", "--data", *files, "--out", str(out), "--until-week", str(trained[4]),
                "--validation-weeks", "1", "--threads", "1")
    assert proc.returncode == 0, proc.stderr
    assert "fitting lightgbm" in proc.stderr and "ONNX export checked" in proc.stderr
    meta = json.loads(read_artifact(out).files["metadata.json"])
    assert meta["training"]["weeks"] == [trained[0], trained[4]]
    assert meta["training"]["threads"] == 1


def test_train_cli_refuses_a_thread_count_below_one(tmp_path: Path) -> None:
    proc = _cli("train", "--data", str(tmp_path), "--out", str(tmp_path / "m.tar.gz"), "--threads", "0")
    assert proc.returncode == 2 and "--threads" in proc.stderr and "Traceback" not in proc.stderr


def test_cpu_budget_follows_the_cpus_the_process_may_use() -> None:
    """Pinned to one CPU (as a cgroup limit or affinity would), training sizes its pools to one thread."""
    code = "import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); " \
           "from retail_prediction.cpus import cpu_budget; print(cpu_budget())"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "1"


def test_the_onnx_export_has_the_same_bytes_whatever_the_string_hashing() -> None:
    """The converters list the opset imports in a set's order; the export sorts them, so the same trees give the
    same model bytes (and archive hash) in every process."""
    code = textwrap.dedent("""
        import hashlib
        import numpy as np
        from retail_prediction.training.candidates import LightGBMCandidate, LogisticCandidate
        rng = np.random.default_rng(0)
        X, y = rng.random((300, 4)).astype(np.float32), rng.integers(0, 3, 300)
        for model in (LogisticCandidate(), LightGBMCandidate(max_rounds=5)):
            model.fit(X, y, 3)
            print(hashlib.sha256(model.to_onnx(4)).hexdigest())
    """)
    digests = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                              env={**os.environ, "PYTHONHASHSEED": str(seed)}).stdout for seed in range(6)}
    assert len(digests) == 1 and len(next(iter(digests)).split()) == 2
