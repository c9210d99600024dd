"""Metrics, confusion matrix plot and Markdown report for a set of scored baskets.

The JSON field names (`accuracy`, `macro_f1`, `per_class`, `confusion_matrix`, `log_loss`, `n_baskets`,
`unseen_products`) are a public contract: other tools read them.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..contract import label_name


def classification_metrics(y_true: np.ndarray, proba: np.ndarray, classes: Sequence[str]) -> dict[str, Any]:
    """Metrics of probabilities `proba` (columns in `classes` order) against class indices `y_true`."""
    k = len(classes)
    n = int(y_true.shape[0])
    if n == 0:
        return {"n_baskets": 0, "accuracy": None, "macro_f1": None, "log_loss": None,
                "per_class": {}, "confusion_matrix": [[0] * k for _ in range(k)], "labels": list(classes)}
    pred = proba.argmax(axis=1)
    cm = np.bincount(y_true * k + pred, minlength=k * k).reshape(k, k)
    per_class: dict[str, dict[str, float | int]] = {}
    f1s = []
    for i, c in enumerate(classes):
        tp = cm[i, i]
        precision = tp / cm[:, i].sum() if cm[:, i].sum() else 0.0
        recall = tp / cm[i, :].sum() if cm[i, :].sum() else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[c] = {"precision": float(precision), "recall": float(recall), "f1": float(f1),
                        "support": int(cm[i, :].sum())}
        if cm[i, :].sum():  # macro-F1 over the classes present in the truth
            f1s.append(f1)
    p_true = np.clip(proba[np.arange(n), y_true], 1e-15, 1.0)
    return {
        "n_baskets": n,
        "accuracy": float((pred == y_true).mean()),
        "macro_f1": float(np.mean(f1s)),
        "log_loss": float(-np.log(p_true).mean()),
        "per_class": per_class,
        "confusion_matrix": cm.tolist(),
        "labels": list(classes),
    }


def evaluation_report(y_true: np.ndarray, proba: np.ndarray, classes: Sequence[str],
                      unseen: np.ndarray) -> dict[str, Any]:
    """All baskets, and the same figures for the baskets holding products unseen in training."""
    report = classification_metrics(y_true, proba, classes)
    report["unseen_products"] = classification_metrics(y_true[unseen], proba[unseen], classes)
    return report


def confusion_png(metrics: dict[str, Any], title: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(metrics["confusion_matrix"], dtype=float)
    labels = metrics["labels"]
    share = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(5.5, 4.8), dpi=110)
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(labels)), labels)
    ax.set_yticks(range(len(labels)), [f"{c} ({label_name(c)})" for c in labels])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(len(labels)):
        for j in range(len(labels)):
            ax.text(j, i, f"{int(cm[i, j]):,}", ha="center", va="center",
                    color="white" if share[i, j] > 0.5 else "black", fontsize=8)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def markdown_report(metrics: dict[str, Any], *, title: str, context: dict[str, Any] | None = None) -> str:
    lines = [f"# {title}", ""]
    for key, value in (context or {}).items():
        lines.append(f"- **{key}**: {value}")
    if context:
        lines.append("")
    lines += _summary_table(metrics)
    lines += ["", "## Per class", "", "| class | precision | recall | F1 | support |", "|---|---|---|---|---|"]
    for c, m in metrics["per_class"].items():
        lines.append(f"| {c} ({label_name(c)}) | {m['precision']:.4f} | {m['recall']:.4f} | {m['f1']:.4f} "
                     f"| {m['support']:,} |")
    lines += ["", "## Confusion matrix (rows: true, columns: predicted)", "",
              "| | " + " | ".join(metrics["labels"]) + " |", "|---" * (len(metrics["labels"]) + 1) + "|"]
    for c, row in zip(metrics["labels"], metrics["confusion_matrix"], strict=True):
        lines.append(f"| **{c}** | " + " | ".join(f"{v:,}" for v in row) + " |")
    return "\n".join(lines) + "\n"


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _summary_table(metrics: dict[str, Any]) -> list[str]:
    rows = [("all baskets", metrics)]
    if "unseen_products" in metrics:
        rows.append(("baskets with products unseen in training", metrics["unseen_products"]))
    out = ["| baskets | n | accuracy | macro-F1 | log loss |", "|---|---|---|---|---|"]
    for name, m in rows:
        out.append(f"| {name} | {m['n_baskets']:,} | {_fmt(m['accuracy'])} | {_fmt(m['macro_f1'])} "
                   f"| {_fmt(m['log_loss'])} |")
    return out
