"""`retail-prediction monitor`: a payload log written by the real writer from a later generated week (three
hours as served, three with every price x10) -> the drift report; malformed lines and parts, S3, a model
without a reference profile."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from payloads import part_files, write_log
from retail_prediction.artifact.archive import pack_artifact, read_artifact
from retail_prediction.cli import main
from retail_prediction.data.requests import sample_baskets
from s3server import S3Server

HOURS = 3
BASKETS = 900  # 300 an hour: enough for a PSI over ~10 bins to be mostly signal
PNG = b"\x89PNG\r\n\x1a\n"


def shifted(bodies: list[dict[str, Any]], factor: float) -> list[dict[str, Any]]:
    return [{**b, "basket_items": [{**line, "price": line["price"] * factor} for line in b["basket_items"]]}
            for b in bodies]


@pytest.fixture(scope="module")
def log_dir(tmp_path_factory: pytest.TempPathFactory, trained_model: Path, weeks: Any) -> Path:
    """HOURS hours of a later week's baskets as served, then HOURS hours of the same baskets priced x10."""
    root = tmp_path_factory.mktemp("payload-log")
    bodies = sample_baskets(weeks.later[-1], BASKETS, seed=1)
    first = 3600 * (int(time.time()) // 3600) - 24 * 3600
    write_log(root, trained_model, bodies, first, HOURS)
    write_log(root, trained_model, shifted(bodies, 10.0), first + HOURS * 3600, HOURS)
    return root


@pytest.fixture(scope="module")
def report(log_dir: Path, trained_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("report")
    assert main(["monitor", "--log", str(log_dir), "--model", str(trained_model), "--out", str(out)]) == 0
    return out


def test_the_report_files(report: Path) -> None:
    summary = json.loads((report / "summary.json").read_text())
    pictures = ["psi_over_time.png", "class_mix.png",
                *(f"histogram_{name}.png" for name in summary["overall"]["psi"])]
    assert set(summary["overall"]["psi"]) == {"lines", "spend", "mean_unit_price", "unknown_share"}
    for name in pictures:
        assert (report / name).read_bytes().startswith(PNG), name
    markdown, page = (report / "report.md").read_text(), (report / "report.html").read_text()
    assert all(f"]({name})" in markdown for name in pictures)
    assert page.count('src="data:image/png;base64,') == len(pictures) and "http" not in page.split("<body>")[1]


def test_the_figures_are_sane(report: Path) -> None:
    summary = json.loads((report / "summary.json").read_text())
    hours, overall = summary["hours"], summary["overall"]
    assert [h["baskets"] for h in hours] == [BASKETS // HOURS] * (2 * HOURS)
    assert overall["baskets"] == 2 * BASKETS and summary["read"]["malformed_lines"] == 0
    assert overall["served_agreement"] == 1.0  # the log was served by this very model
    assert sum(overall["class_shares"].values()) == pytest.approx(1.0)
    for hour in hours:
        assert all(0 <= v < 50 for v in (*hour["psi"].values(), hour["prediction_psi"]))
    served, priced_up = hours[:HOURS], hours[HOURS:]
    for name in ("spend", "mean_unit_price"):  # prices x10: these move, and far
        calm = max(h["psi"][name] for h in served)
        assert calm < 0.25 and min(h["psi"][name] for h in priced_up) > max(0.25, 4 * calm), name
    for served_hour, priced_hour in zip(served, priced_up, strict=True):  # the same baskets: same line counts
        assert priced_hour["psi"]["lines"] == pytest.approx(served_hour["psi"]["lines"])
    histogram = summary["histograms"]["spend"]
    assert len(histogram["live"]) == len(histogram["reference"]) == len(histogram["edges"]) + 1
    assert sum(histogram["live"]) == pytest.approx(1.0)


def _write_part(path: Path, lines: list[bytes]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(b"".join(line + b"\n" for line in lines)))


def test_malformed_lines_and_parts_are_counted_and_named(log_dir: Path, trained_model: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    good = gzip.decompress(part_files(log_dir)[0].read_bytes()).splitlines()[:40]
    bad_price = json.loads(good[1])
    bad_price["basket"]["basket_items"][0]["price"] = -1
    bad_time = {**json.loads(good[2]), "time": "yesterday"}
    lines = [*good[:10], b"{not json", json.dumps(bad_price).encode(), json.dumps(bad_time).encode(), *good[10:]]
    log = tmp_path / "log" / "dt=2026-01-01" / "hour=00"
    _write_part(log / "part-a.jsonl.gz", lines)
    (log / "part-b.jsonl.gz").write_bytes(gzip.compress(b"\n".join(good))[:-40])  # truncated
    out = tmp_path / "report"
    assert main(["monitor", "--log", str(tmp_path / "log"), "--model", str(trained_model), "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["read"]["malformed_lines"] == 3 and summary["read"]["unreadable_parts"] == 1
    assert summary["overall"]["baskets"] >= len(good)  # part-a's good lines and what part-b had before its end
    problems = "\n".join(summary["read"]["problems"])
    for number in (11, 12, 13):
        assert f"part-a.jsonl.gz, line {number}:" in problems
    assert "part-b.jsonl.gz: unreadable" in problems and "price" in problems
    assert "part-a.jsonl.gz, line 11" in capsys.readouterr().err  # said where it was run, too
    assert "Reading problems" in (out / "report.md").read_text()


def test_nothing_to_read_is_an_error_naming_the_log(trained_model: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty").mkdir()
    for log in ("empty", "missing"):
        code = main(["monitor", "--log", str(tmp_path / log), "--model", str(trained_model),
                     "--out", str(tmp_path / "out")])
        assert code == 2 and str(tmp_path / log) in capsys.readouterr().err


def test_a_model_without_profile_gives_the_class_mix(log_dir: Path, trained_model: Path, tmp_path: Path) -> None:
    files = dict(read_artifact(trained_model).files)
    assert files.pop("profile.json", None) is not None
    old = tmp_path / "old-model.tar.gz"
    pack_artifact(old, files, metadata={"model_version": "before-profiles"})
    out = tmp_path / "report"
    assert main(["monitor", "--log", str(log_dir), "--model", str(old), "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert not summary["has_profile"] and "psi" not in summary["overall"]
    assert (out / "class_mix.png").exists() and not list(out.glob("histogram_*.png"))
    assert "no reference profile" in (out / "report.md").read_text()


def test_a_log_in_s3_by_a_separate_process(log_dir: Path, trained_model: Path, tmp_path: Path, s3_server: S3Server,
                                           s3_env: Callable[..., dict[str, str]]) -> None:
    client = s3_server.client()
    prefix = f"monitor-{tmp_path.name}"
    for path in part_files(log_dir):
        client.put_object(Bucket="models", Key=f"{prefix}/{path.relative_to(log_dir)}", Body=path.read_bytes())
    out = tmp_path / "report"
    done = subprocess.run([sys.executable, "-m", "retail_prediction.cli", "monitor", "--log",
                           f"s3://models/{prefix}/", "--model", str(trained_model), "--out", str(out)],
                          env=s3_env(s3_server.reader), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    printed = json.loads(done.stdout)
    assert printed["baskets"] == 2 * BASKETS and printed["hours"] == 2 * HOURS
    assert (out / "report.html").exists()


def test_without_matplotlib_the_command_says_what_to_install(trained_model: Path, tmp_path: Path) -> None:
    """As in the serving image: no matplotlib."""
    code = ("import sys; sys.modules['matplotlib'] = None; from retail_prediction.cli import main; "
            f"sys.exit(main(['monitor', '--log', {str(tmp_path)!r}, '--model', {str(trained_model)!r}, "
            f"'--out', {str(tmp_path / 'out')!r}]))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "pip install 'retail-prediction[monitor]'" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_store_error_is_named(trained_model: Path, tmp_path: Path, s3_use_identity: Callable[..., None],
                                capsys: pytest.CaptureFixture[str]) -> None:
    from retail_prediction.artifact.s3 import reset_s3_client

    s3_use_identity()
    reset_s3_client()
    try:
        code = main(["monitor", "--log", "s3://no-such-bucket/payloads/", "--model", str(trained_model),
                     "--out", str(tmp_path / "out")])
    finally:
        reset_s3_client()
    assert code == 2
    assert "error: cannot list s3://no-such-bucket/payloads/: no such bucket" in capsys.readouterr().err


def test_records_are_featurized_in_bounded_chunks() -> None:
    from retail_prediction.contract import Basket, BasketLine
    from retail_prediction.monitoring import report
    from retail_prediction.monitoring.payloads import Record

    big = Record("2026-01-01T00:00:00Z", Basket([BasketLine("P", 1, 1)] * (report.CHUNK_LINES // 2)))
    small = Record("2026-01-01T00:00:00Z", Basket([BasketLine("P", 1, 1)]))
    sizes = [len(c) for c in report._chunks([("h", big)] * 5)]
    assert sizes == [2, 2, 1]  # by lines
    assert [len(c) for c in report._chunks([("h", small)] * (report.CHUNK + 1))] == [report.CHUNK, 1]
