"""Peak memory of `train`'s data path, stage by stage, without the classifier fits (which take minutes).

    python benchmarks/train_memory.py DATA

Runs what `train` runs on its data: read, group into baskets, the comparison's tables and out-of-fold features,
the validation features, then the refit's. Prints wall and CPU seconds per stage, and the RSS after it and the
peak so far (Linux /proc, no profiler needed). The classifiers see at most 2 M baskets x 43 float32 features,
a few hundred MB, so these peaks are the run's.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from retail_prediction.data import lgsr
from retail_prediction.data.reading import read_transactions, table_to_baskets
from retail_prediction.features.tables import basket_features
from retail_prediction.training.train import TRAIN_COLUMNS, TrainConfig, _learn, validation_cut


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
    stage, config = Stages(), TrainConfig()
    table = read_transactions(data, columns=TRAIN_COLUMNS)
    stage(f"read {table.num_rows:,} lines")
    weeks = np.unique(table[lgsr.SHOP_WEEK].to_numpy())
    cut = validation_cut(weeks, config)
    everything = table_to_baskets(table)
    del table
    pa.default_memory_pool().release_unused()
    stage(f"grouped into {everything.lines.n_baskets:,} baskets")
    classes = tuple(np.unique(everything.label).tolist())
    tables, X, _ = _learn(everything.select(everything.week <= cut), classes, config, quiet)
    stage(f"comparison: tables, features {X.shape[0]:,}")
    valid = everything.select(everything.week > cut)
    stage(f"validation features {basket_features(valid.lines, tables).shape[0]:,}")
    del tables, X, valid
    _, X, _ = _learn(everything, classes, config, quiet)
    stage(f"refit: tables, features {X.shape[0]:,}")


if __name__ == "__main__":
    main(sys.argv[1])
