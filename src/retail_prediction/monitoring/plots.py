"""The drift report's pictures (matplotlib, Agg: files only): per feature a histogram live vs reference, PSI
over time with the 0.1 / 0.25 bands, the class mix over time. Imported only by `monitor`; matplotlib is in
the `monitor` and `train` extras, never in the serving image."""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # after the backend is chosen
import numpy as np

from ..contract import label_name

# Columns the featurization stores as log1p(x): shown in their own units on the histograms' axes.
_LOG1P = {"log_spend": "basket spend", "mean_log_unit_price": "typical unit price (mean of log1p, back-transformed)"}
_COLORS = {"reference": "#7f7f7f", "live": "#1f77b4"}
_CLASS_COLORS = ["#4c72b0", "#55a868", "#c44e52", "#8172b2", "#ccb974", "#64b5cd"]
DPI = 100


def _bin_labels(column: str, edges: list[float]) -> list[str]:
    values = np.expm1(edges) if column in _LOG1P else np.asarray(edges)
    text = [f"{v:.3g}" for v in values]
    if not text:
        return ["all"]
    return [f"< {text[0]}", *(f"{a}–{b}" for a, b in pairwise(text)), f"≥ {text[-1]}"]


def _histogram(name: str, hist: dict[str, Any], psi_value: float | None, path: Path) -> None:
    labels = _bin_labels(hist["column"], hist["edges"])
    x = np.arange(len(labels))
    fig, ax = plt.subplots(figsize=(9, 4.2))
    ax.bar(x - 0.2, hist["reference"], width=0.4, label="reference (held-out weeks)", color=_COLORS["reference"])
    ax.bar(x + 0.2, hist["live"], width=0.4, label="live (payload log)", color=_COLORS["live"])
    ax.set_xticks(x, labels, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("share of baskets")
    ax.set_xlabel(_LOG1P.get(hist["column"], hist["column"]))
    title = f"{name}: live vs reference"
    ax.set_title(title + (f"  (PSI {psi_value:.3f})" if psi_value is not None else ""))
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def _hour_axis(ax: Any, hours: list[str]) -> np.ndarray:
    x = np.arange(len(hours))
    step = max(1, len(hours) // 24)  # at most ~24 labels
    ax.set_xticks(x[::step], [h.replace("T", " ") + "h" for h in hours[::step]], rotation=45, ha="right",
                  fontsize=8)
    ax.set_xlabel("hour (UTC)")
    return x


def _psi_over_time(summary: dict[str, Any], path: Path) -> None:
    hours = [h["hour"] for h in summary["hours"]]
    fig, ax = plt.subplots(figsize=(10, 4.5))
    x = _hour_axis(ax, hours)
    series = {name: [h["psi"][name] for h in summary["hours"]] for name in summary["overall"]["psi"]}
    series["predicted class mix"] = [h["prediction_psi"] for h in summary["hours"]]
    top = max(0.3, *(max(v) for v in series.values())) * 1.1
    stable, major = summary["thresholds"]["stable"], summary["thresholds"]["major"]
    ax.axhspan(0, stable, color="#2ca02c", alpha=0.08, label=f"stable (< {stable})")
    ax.axhspan(stable, major, color="#ff7f0e", alpha=0.10, label=f"moderate ({stable}–{major})")
    ax.axhspan(major, top, color="#d62728", alpha=0.08, label=f"major (> {major})")
    few = np.array([h["few_baskets"] for h in summary["hours"]])
    for name, values in series.items():
        style = "--" if name == "predicted class mix" else "-"
        line = ax.plot(x, values, style, marker="o", markersize=4, label=name)[0]
        if few.any():  # hours with few baskets: hollow markers, their PSI is noisy
            ax.plot(x[few], np.asarray(values)[few], "o", markersize=6, markerfacecolor="white",
                    color=line.get_color())
    ax.set_ylim(0, top)
    if top > 1:  # a major shift would flatten the bands: linear up to 0.3, logarithmic above
        ax.set_yscale("symlog", linthresh=0.3)
        ax.set_yticks([t for t in (0, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 50) if t <= top],
                      labels=[f"{t:g}" for t in (0, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 50) if t <= top])
    ax.set_ylabel("PSI against the reference")
    ax.set_title("Drift over time" + (" (hollow: fewer baskets than --min-baskets)" if few.any() else ""))
    ax.legend(fontsize=8, loc="upper left", ncols=2)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def _class_mix(summary: dict[str, Any], path: Path) -> None:
    hours = summary["hours"]
    classes = list(summary["overall"]["class_shares"])
    columns = [("reference", summary["reference"]["class_shares"])] if "reference" in summary else []
    columns += [(h["hour"], h["class_shares"]) for h in hours]
    fig, ax = plt.subplots(figsize=(10, 4.5))
    x = np.arange(len(columns))
    bottom = np.zeros(len(columns))
    for i, label in enumerate(classes):
        shares = np.array([mix.get(label, 0.0) for _, mix in columns])
        ax.bar(x, shares, bottom=bottom, label=f"{label}: {label_name(label)}",
               color=_CLASS_COLORS[i % len(_CLASS_COLORS)], width=0.8)
        bottom += shares
    step = max(1, len(columns) // 24)
    names = [name if name == "reference" else name.replace("T", " ") + "h" for name, _ in columns]
    ax.set_xticks(x[::step], names[::step], rotation=45, ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("share of baskets")
    ax.set_title("Predicted class mix by hour (UTC)" + (", reference first" if "reference" in summary else ""))
    ax.legend(title="class", fontsize=8, bbox_to_anchor=(1.01, 1), loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def draw(summary: dict[str, Any], out: Path) -> list[tuple[str, str]]:
    """Write the PNGs into `out`; (title, file name) of each, in the report's order."""
    images = []
    if summary["has_profile"]:
        _psi_over_time(summary, out / "psi_over_time.png")
        images.append(("PSI over time", "psi_over_time.png"))
    _class_mix(summary, out / "class_mix.png")
    images.append(("Predicted class mix over time", "class_mix.png"))
    for name, hist in summary.get("histograms", {}).items():
        file = f"histogram_{name}.png"
        _histogram(name, hist, summary["overall"]["psi"].get(name), out / file)
        images.append((f"{name}: live vs reference", file))
    return images
