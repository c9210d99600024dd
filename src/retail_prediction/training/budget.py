"""How many baskets streamed training may keep in memory, from a budget in GB: the per-code state and the
chunks in flight are counted first, the samples of training and held-out baskets get what remains. A budget
too small for the state is refused with a clear message, not met by the kernel's OOM killer.

The samples exist only in the passes over the spilled chunks (compact: a chunk's line costs PASS_LINE_BYTES
there), never in the first pass, whose Arrow tables (a few files in flight) are gone by then."""

from __future__ import annotations

from dataclasses import dataclass, field

from .stream import Spilled

GB = 1e9
BASE_BYTES = 0.6 * GB  # the interpreter, NumPy, Arrow, scikit-learn, LightGBM and ONNX Runtime loaded
PASS_LINE_BYTES = 160  # a spilled chunk's line in a pass: its record, per-line folds, weights and keys
ROW_BYTES = 1200  # a sampled basket: float32 features, the classifiers' float64 copies and bins, its lines
CODE_BYTES_PER_CLASS_FOLD = 8 * 4  # per code, class and fold: counts, fold tables, the fold groups' copies
MIN_MODEL_BASKETS = 10_000


@dataclass(frozen=True)
class Limits:
    model_baskets: int
    validation_baskets: int
    notes: list[str] = field(default_factory=list)


def limits(s: Spilled, n_folds: int, threads: int, budget_gb: float, max_model: int, max_validation: int) -> Limits:
    """The sample sizes that fit `budget_gb`, given what the first pass found."""
    n_codes = sum(len(v.id_of) for v in s.vocabs)
    state = n_codes * 4 * max(n_folds, 1) * CODE_BYTES_PER_CLASS_FOLD
    largest = max((int(s.spill.array(i, "basket").shape[0]) for i in range(s.spill.n_chunks)), default=0)
    in_flight = 2 * max(threads, 1) * largest * PASS_LINE_BYTES
    left = budget_gb * GB - BASE_BYTES - state - in_flight
    rows = int(left // ROW_BYTES)
    model = min(max_model, int(rows * 0.8))
    validation = min(max_validation, rows - model)
    notes = []
    if model < MIN_MODEL_BASKETS:
        raise MemoryError(
            f"a memory budget of {budget_gb:g} GB is too small for this data: its {n_codes:,} codes need "
            f"{state / GB:.2f} GB and chunks of up to {largest:,} lines {in_flight / GB:.2f} GB, leaving room for "
            f"{max(rows, 0):,} sampled baskets (at least {MIN_MODEL_BASKETS:,} needed); raise --memory-budget")
    if model < max_model:
        notes.append(f"memory budget {budget_gb:g} GB: the classifiers see at most {model:,} baskets "
                     f"(asked for {max_model:,})")
    if validation < max_validation:
        notes.append(f"memory budget {budget_gb:g} GB: metrics from at most {validation:,} held-out baskets")
    return Limits(model, validation, notes)
