"""Full-scale `generate` and `predict`: wall time, peak memory of every process, lines/s and baskets/s.

    python benchmarks/scale.py generate OUT --customers 500000 --weeks 4 [--format parquet]
    python benchmarks/scale.py predict --model model.tar.gz --data DIR [--out predictions.csv]

Runs the real command line as a child process and samples /proc every 0.2 s: each process's high-water RSS
(VmHWM: the parent, and the largest worker) and the sum of the tree's RSS; the tree's CPU seconds too,
since on a shared machine wall time says more about the neighbours than about the code. Lines and baskets come from the
command's own closing line (generate) or from the files read back (predict: output rows; lines counted with
Arrow when `--count-lines`).
"""

from __future__ import annotations

import argparse
import re
import resource
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

CLI = [sys.executable, "-m", "retail_prediction.cli"]


@dataclass
class Peaks:
    parent_kb: int = 0
    child_kb: int = 0  # the largest descendant's own high-water mark
    tree_kb: int = 0  # the largest sum of the tree's current RSS seen
    seen: set[int] = field(default_factory=set)


def _status(pid: int) -> dict[str, str]:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)


def _children(pid: int) -> list[int]:
    try:
        tasks = Path(f"/proc/{pid}/task").iterdir()
        found = [int(c) for t in tasks for c in (t / "children").read_text().split()]
    except OSError:
        return []
    return found + [g for c in found for g in _children(c)]


def _kb(status: dict[str, str], key: str) -> int:
    return int(status.get(key, "0 kB").split()[0])


def run_measured(argv: list[str]) -> tuple[float, Peaks, str]:
    """Run `argv`, sampling memory until it exits; returns (wall seconds, peaks, stderr)."""
    peaks = Peaks()
    started = time.monotonic()
    with subprocess.Popen(argv, stderr=subprocess.PIPE, text=True) as proc:
        stderr_lines: list[str] = []
        reader = threading.Thread(target=lambda: stderr_lines.extend(proc.stderr or []), daemon=True)
        reader.start()
        while proc.poll() is None:
            parent = _status(proc.pid)
            peaks.parent_kb = max(peaks.parent_kb, _kb(parent, "VmHWM"))
            tree = _kb(parent, "VmRSS")
            for pid in _children(proc.pid):
                status = _status(pid)
                peaks.seen.add(pid)
                peaks.child_kb = max(peaks.child_kb, _kb(status, "VmHWM"))
                tree += _kb(status, "VmRSS")
            peaks.tree_kb = max(peaks.tree_kb, tree)
            time.sleep(0.2)
        reader.join()
    wall = time.monotonic() - started
    stderr = "".join(stderr_lines)
    if proc.returncode:
        sys.exit(f"{' '.join(argv)} failed ({proc.returncode}):\n{stderr[-3000:]}")
    return wall, peaks, stderr


def _report(wall: float, peaks: Peaks, **figures: float) -> None:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # the command and every process it waited for
    cpu = usage.ru_utime + usage.ru_stime
    with open("/proc/loadavg") as fh:
        load = fh.read().split()[:3]
    print(f"wall {wall:.1f} s, CPU {cpu:.1f} s (user + sys of the whole tree), load average now {' '.join(load)}")
    print(f"peak RSS: parent {peaks.parent_kb / 1e6:.2f} GB, largest child {peaks.child_kb / 1e6:.2f} GB "
          f"({len(peaks.seen)} children), whole tree {peaks.tree_kb / 1e6:.2f} GB")
    for name, value in figures.items():
        print(f"{name}: {value:,.0f}")
        if name in ("lines", "baskets"):
            print(f"{name} per CPU second: {value / cpu:,.0f}")


def generate(args: argparse.Namespace) -> None:
    argv = [*CLI, "generate", "--out", str(args.out), "--customers", str(args.customers), "--weeks",
            str(args.weeks), "--seed", str(args.seed), "--format", args.format]
    wall, peaks, stderr = run_measured(argv)
    match = re.search(r"wrote ([\d,]+) lines in ([\d,]+) baskets", stderr)
    assert match, stderr
    lines, baskets = (int(g.replace(",", "")) for g in match.groups())
    size = sum(p.stat().st_size for p in Path(args.out).iterdir())
    _report(wall, peaks, lines=lines, baskets=baskets, **{"lines/s": lines / wall, "MB written": size / 1e6})


def predict(args: argparse.Namespace) -> None:
    argv = [*CLI, "predict", "--model", str(args.model), "--data", *args.data, "--out", str(args.out)]
    wall, peaks, _ = run_measured(argv)
    with open(args.out, "rb") as fh:
        baskets = sum(1 for _ in fh) - 1
    figures = {"baskets": float(baskets), "baskets/s": baskets / wall}
    if args.count_lines:
        from retail_prediction.data.reading import read_transactions, resolve_files

        lines = sum(read_transactions([f], columns=["BASKET_ID"], required=()).num_rows
                    for f in resolve_files(args.data))
        figures |= {"lines": float(lines), "lines/s": lines / wall}
    _report(wall, peaks, **figures)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate")
    g.add_argument("out", type=Path)
    g.add_argument("--customers", type=int, default=500_000)
    g.add_argument("--weeks", type=int, default=4)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--format", choices=("csv.gz", "parquet"), default="parquet")
    p = sub.add_parser("predict")
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--data", nargs="+", required=True)
    p.add_argument("--out", type=Path, default=Path("/tmp/predict_scale.csv"))
    p.add_argument("--count-lines", action="store_true")
    args = parser.parse_args()
    {"generate": generate, "predict": predict}[args.command](args)


if __name__ == "__main__":
    main()
