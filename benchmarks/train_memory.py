"""Peak memory of `train`'s data path, stage by stage, without the classifier fits (which take minutes).

    python benchmarks/train_memory.py DATA

Runs what `train` runs on its data: the read-and-spill pass, the comparison's tables, latent classes and
out-of-fold features, the validation features, then the refit's. Prints wall and CPU seconds per stage, and
the RSS after it and the peak so far (Linux /proc, no profiler needed). The classifiers' rows (at most 2 M
baskets x 43 float32 features, bounded by the memory budget) come on top of these.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from retail_prediction.contract import LABELS
from retail_prediction.cpus import cpu_budget
from retail_prediction.training import accumulate
from retail_prediction.training.budget import limits
from retail_prediction.training.spill import Spill
from retail_prediction.training.stream import spill_files
from retail_prediction.training.train import TrainConfig, ordered_files, validation_cut


def quiet(message: str) -> None:
    """`train`'s progress lines are not wanted here: the stages print their own."""


class Stages:
    def __init__(self) -> None:
        self.wall, self.cpu = time.monotonic(), time.process_time()

    def __call__(self, name: str) -> None:
        text = Path("/proc/self/status").read_text()
        status = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
        rss, peak = (int(status[key].split()[0]) / 1e6 for key in ("VmRSS", "VmHWM"))
        print(f"{name:34s} wall {time.monotonic() - self.wall:6.1f} s  cpu {time.process_time() - self.cpu:6.1f} s  "
              f"RSS {rss:5.2f} GB  peak so far {peak:5.2f} GB", flush=True)
        self.wall, self.cpu = time.monotonic(), time.process_time()


def main(data: str) -> None:
    stage, config = Stages(), TrainConfig(threads=cpu_budget())
    with tempfile.TemporaryDirectory(prefix="train-memory-") as tmp:
        spilled = spill_files(ordered_files(data), Spill(Path(tmp)), None, config.threads, quiet)
        stage(f"read + spill {spilled.n_lines:,} lines")
        weeks = np.array(sorted(spilled.weeks))
        cut = validation_cut(weeks, config)
        bounds = limits(spilled, config.n_folds, config.threads, config.memory_budget_gb, config.max_model_baskets,
                        config.max_validation_baskets)
        classes = tuple(LABELS[i] for i in sorted(spilled.labels))
        early = accumulate.part(spilled, cut, classes, config.n_folds, config.seed, config.threads)
        learned = accumulate.learn(early, classes, config.evidence_power, config.prior_strength)
        stage("comparison: tables + latent classes")
        X, _, _ = accumulate.features(early, learned, bounds.model_baskets, out_of_fold=True)
        stage(f"comparison: features {X.shape[0]:,}")
        Xv, _, _ = accumulate.features(early.with_weeks(cut + 1, None), learned, bounds.validation_baskets,
                                       out_of_fold=False)
        stage(f"validation features {Xv.shape[0]:,}")
        del learned, X, Xv
        everything = accumulate.part(spilled, None, classes, config.n_folds, config.seed, config.threads)
        learned = accumulate.learn(everything, classes, config.evidence_power, config.prior_strength)
        stage("refit: tables + latent classes")
        X, _, _ = accumulate.features(everything, learned, bounds.model_baskets, out_of_fold=True)
        stage(f"refit: features {X.shape[0]:,}")


if __name__ == "__main__":
    main(sys.argv[1])
