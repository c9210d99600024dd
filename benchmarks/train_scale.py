"""`train` at scale: wall time, peak RSS, lines per second and validation figures, and their plot.

    python benchmarks/train_scale.py run DATA [--label after] [--python .venv/bin/python] [--results FILE]
                                         [--until-week W [--evaluate-weeks 4]]
    python benchmarks/train_scale.py plot [--results FILE] [--png docs/img/train_scale.png]

`run` trains on DATA with `/usr/bin/time -v` (the given interpreter: another clone's venv measures the code
before), prints one line of figures and appends it as JSON to the results file. With `--until-week W` it trains
on the files of the weeks up to W (DATA a folder of weekly files) and scores the next `--evaluate-weeks` weeks'
files with `evaluate` (accuracy on later weeks, as a user would check it); `plot` draws wall time and peak
RSS against lines for each label. Extra arguments after `--` go to `train` (e.g. `-- --memory-budget 4`).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

RESULTS = Path("benchmarks/train_scale.jsonl")


def _time_v(stderr: str, label: str) -> str:
    match = re.search(rf"{re.escape(label)}: (.+)", stderr)
    if not match:
        raise RuntimeError(f"no '{label}' in the output of /usr/bin/time -v:\n{stderr[-2000:]}")
    return match.group(1).strip()


def _seconds(clock: str) -> float:
    parts = [float(p) for p in clock.split(":")]
    return sum(p * 60 ** i for i, p in enumerate(reversed(parts)))


def _metadata(model: Path) -> dict[str, Any]:
    with tarfile.open(model) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith("metadata.json"))
        data = tar.extractfile(member)
        assert data is not None
        return json.loads(data.read())


def _week_files(data: str) -> list[tuple[int, str]]:
    """DATA's transaction files (a local folder) with their shop weeks, in week order."""
    found = ((re.match(r"transactions_(\d{6})\.", p.name), p) for p in Path(data).iterdir())
    return sorted((int(m.group(1)), str(p)) for m, p in found if m)


def _evaluate(python: str, files: list[tuple[int, str]], model: Path, tmp: str) -> dict[str, Any]:
    out, weeks = Path(tmp) / "eval.json", [w for w, _ in files]
    proc = subprocess.run(["/usr/bin/time", "-v", python, "-m", "retail_prediction.cli", "evaluate",
                           "--model", str(model), "--data", *[f for _, f in files], "--json", str(out)],
                          capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"evaluate failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    result = json.loads(out.read_text())
    return {"eval_weeks": f"{weeks[0]}-{weeks[-1]}", "eval_baskets": result["n_baskets"],
            "eval_accuracy": round(result["accuracy"], 5), "eval_macro_f1": round(result["macro_f1"], 5),
            "eval_wall_s": round(_seconds(_time_v(proc.stderr, "Elapsed (wall clock) time (h:mm:ss or m:ss)")), 1)}


def run(data: str, label: str, python: str, results: Path, extra: list[str], until_week: int | None = None,
        evaluate_weeks: int = 4, keep_model: Path | None = None) -> dict[str, Any]:
    # With a cut, the files are listed: train reads only the weeks up to it, evaluate only the next ones.
    weeks = _week_files(data) if until_week else []
    train_data = [f for w, f in weeks if w <= until_week] if until_week else [data]  # type: ignore[operator]
    later = [(w, f) for w, f in weeks if w > until_week][:evaluate_weeks]  # type: ignore[operator]
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "model.tar.gz"
        proc = subprocess.run(["/usr/bin/time", "-v", python, "-m", "retail_prediction.cli", "train", "--data",
                               *train_data, "--out", str(model), *extra], capture_output=True, text=True)
        if proc.returncode:
            raise SystemExit(f"train failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
        meta = _metadata(model)
        if keep_model is not None:
            shutil.copyfile(model, keep_model)
        progress = [line for line in proc.stderr.splitlines() if line.startswith("[")]
        print("\n".join(progress), flush=True)  # train's progress lines: where the time went
        try:
            held_out = _evaluate(python, later, model, tmp) if later else {}
        except SystemExit as exc:  # the training figures stand on their own
            print(exc, flush=True)
            held_out = {"eval_error": str(exc)[:200]}
    wall = _seconds(_time_v(proc.stderr, "Elapsed (wall clock) time (h:mm:ss or m:ss)"))
    chosen = next(c for c in meta["candidates"] if c["name"] == meta["chosen_model"])
    row = {
        "label": label, "data": data, "lines": meta["training"]["rows"], "baskets": meta["training"]["baskets"],
        "wall_s": round(wall, 1), "peak_rss_gb": round(int(_time_v(proc.stderr, "Maximum resident set size (kbytes)"))
                                                       / 1e6, 3),
        "user_s": float(_time_v(proc.stderr, "User time (seconds)")),
        "sys_s": float(_time_v(proc.stderr, "System time (seconds)")),
        "chosen": meta["chosen_model"], "accuracy": round(chosen["accuracy"], 5),
        "macro_f1": round(chosen["macro_f1"], 5),
        "extra": extra, "until_week": until_week, **held_out,
    }
    row["lines_per_s"] = round(row["lines"] / wall)
    print(f"{label}: {row['lines']:,} lines in {wall:.1f} s ({row['lines_per_s']:,} lines/s, "
          f"{row['user_s']:.0f} s user + {row['sys_s']:.0f} s sys), peak RSS {row['peak_rss_gb']:.2f} GB, "
          f"{row['chosen']} accuracy {row['accuracy']:.4f} macro-F1 {row['macro_f1']:.4f}"
          + (f"; weeks {row['eval_weeks']} ({row['eval_baskets']:,} baskets): accuracy {row['eval_accuracy']:.4f} "
             f"macro-F1 {row['eval_macro_f1']:.4f}" if "eval_weeks" in held_out else ""), flush=True)
    with results.open("a") as out:
        out.write(json.dumps(row) + "\n")
    return row


def plot(results: Path, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in results.read_text().splitlines() if line.strip()]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for label in sorted({r["label"] for r in rows}):
        mine = sorted((r for r in rows if r["label"] == label), key=lambda r: r["lines"])
        lines = [r["lines"] / 1e6 for r in mine]
        left.plot(lines, [r["wall_s"] / 60 for r in mine], "o-", label=label)
        right.plot(lines, [r["peak_rss_gb"] for r in mine], "o-", label=label)
    left.set(xlabel="lines (millions)", ylabel="wall time (min)", title="train: wall time")
    right.set(xlabel="lines (millions)", ylabel="peak RSS (GB)", title="train: peak memory")
    right.axhline(8, color="grey", linestyle=":", label="8 GB pod")
    for ax, where in ((left, "upper left"), (right, "center right")):
        ax.grid(alpha=0.3)
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=7, loc=where)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    print(f"wrote {png}")


def main() -> None:
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run")
    r.add_argument("data")
    r.add_argument("--label", default="after")
    r.add_argument("--python", default=sys.executable)
    r.add_argument("--results", type=Path, default=RESULTS)
    r.add_argument("--until-week", type=int, help="train on the weeks up to this one, score the next ones")
    r.add_argument("--evaluate-weeks", type=int, default=4)
    r.add_argument("--keep-model", type=Path, help="copy the trained model.tar.gz here")
    p = sub.add_parser("plot")
    p.add_argument("--results", type=Path, default=RESULTS)
    p.add_argument("--png", type=Path, default=Path("docs/img/train_scale.png"))
    args = parser.parse_args(argv)
    if args.command == "run":
        run(args.data, args.label, args.python, args.results, extra, args.until_week, args.evaluate_weeks,
            args.keep_model)
    else:
        plot(args.results, args.png)


if __name__ == "__main__":
    main()
