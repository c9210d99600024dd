"""The drift report's text: one list of blocks (headings, paragraphs, tables, images) from the summary,
written as report.md (images beside it) and as a self-contained report.html (images embedded)."""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

Block = tuple[Any, ...]  # ("h", level, text) | ("p", text) | ("table", header, rows) | ("img", title, file)


def _psi(value: float, thresholds: dict[str, float]) -> str:
    """`0.123 (moderate shift)`: the value and its reading."""
    reading = ("stable" if value < thresholds["stable"] else "moderate shift" if value < thresholds["major"]
               else "major shift")
    return f"{value:.3f} ({reading})"


def blocks(summary: dict[str, Any], images: list[tuple[str, str]]) -> list[Block]:
    read, overall, model = summary["read"], summary["overall"], summary["model"]
    hours = summary["hours"]
    span = f"{hours[0]['hour']}h to {hours[-1]['hour']}h UTC" if hours else "no hours"
    out: list[Block] = [
        ("h", 1, "Drift report"),
        ("p", f"Log `{summary['log']}`: {read['records']:,} baskets from {read['parts']} parts, {span} "
              f"({len(hours)} hours). Model `{model['version']}` (SHA-256 {model['sha256'][:12]}…)."),
    ]
    if read["malformed_lines"] or read["unreadable_parts"]:
        out.append(("p", f"Skipped: {read['malformed_lines']} malformed lines, {read['unreadable_parts']} "
                         "unreadable parts (listed at the end)."))
    if summary["has_profile"]:
        stable, major = summary["thresholds"]["stable"], summary["thresholds"]["major"]
        out += [
            ("p", f"PSI (population stability index) compares the live share of baskets in each bin with the "
                  f"reference (the model's held-out weeks, {summary['reference']['baskets']:,} baskets): below "
                  f"{stable} stable, {stable}–{major} a moderate shift worth a look, above {major} a major "
                  "shift: check the inputs, then consider retraining."),
            ("h", 2, "Overall"),
            ("table", ["", "PSI"], [[name, _psi(v, summary["thresholds"])] for name, v in overall["psi"].items()]
             + [["predicted class mix", _psi(overall["prediction_psi"], summary["thresholds"])]]),
        ]
    else:
        out.append(("p", "The model archive has no reference profile (trained before drift monitoring): no PSI "
                         "and no histograms, the class mix only. Retrain to get them."))
    reference = summary.get("reference", {}).get("class_shares", {})
    out.append(("table", ["class", "live share", *(["reference share"] if reference else [])],
                [[c, f"{s:.1%}", *([f"{reference[c]:.1%}"] if reference else [])]
                 for c, s in overall["class_shares"].items()]))
    if overall["served_agreement"] is not None:
        versions = ", ".join(f"`{v}` ({n:,})" for v, n in overall["model_versions"].items())
        out.append(("p", f"The logged answers agree with this model's on {overall['served_agreement']:.1%} of the "
                         f"baskets (served by {versions}); far below 100 % means the log was served by another "
                         "model than the one given."))
    out.append(("h", 2, "Over time"))
    out += [("img", title, file) for title, file in images if not file.startswith("histogram_")]
    features = list(overall.get("psi", {}))
    header = ["hour (UTC)", "baskets", *features, *(["class mix"] if summary["has_profile"] else [])]
    rows = [[h["hour"], f"{h['baskets']:,}" + (" (few)" if h["few_baskets"] else ""),
             *(f"{h['psi'][f]:.3f}" for f in features),
             *([f"{h['prediction_psi']:.3f}"] if summary["has_profile"] else [])] for h in hours]
    out.append(("table", header, rows))
    if any(h["few_baskets"] for h in hours):
        out.append(("p", f"(few): under {summary['min_baskets']} baskets, the hour's PSI is mostly noise."))
    histograms = [(title, file) for title, file in images if file.startswith("histogram_")]
    if histograms:
        out.append(("h", 2, "Features, live vs reference"))
        out += [("img", title, file) for title, file in histograms]
    if read["problems"]:
        out += [("h", 2, "Reading problems"), ("p", "The first ones, by part and line:"),
                ("table", ["problem"], [[p] for p in read["problems"]])]
    return out


def markdown(report: list[Block]) -> str:
    lines: list[str] = []
    for block in report:
        kind = block[0]
        if kind == "h":
            lines += ["#" * block[1] + " " + block[2], ""]
        elif kind == "p":
            lines += [block[1], ""]
        elif kind == "img":
            lines += [f"![{block[1]}]({block[2]})", ""]
        else:
            header, rows = block[1], block[2]
            cells = [header, ["---"] * len(header), *rows]
            lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in cells] + [""]
    return "\n".join(lines)


_STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left}
th{background:#f3f3f3}img{max-width:100%;display:block;margin:1em 0}code{background:#f3f3f3;padding:0 .2em}"""


def _inline(text: str) -> str:
    """Escaped text with `code` spans."""
    parts = html.escape(text).split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def html_page(report: list[Block], out: Path) -> str:
    body: list[str] = []
    for block in report:
        kind = block[0]
        if kind == "h":
            body.append(f"<h{block[1]}>{_inline(block[2])}</h{block[1]}>")
        elif kind == "p":
            body.append(f"<p>{_inline(block[1])}</p>")
        elif kind == "img":
            data = base64.b64encode((out / block[2]).read_bytes()).decode()
            body.append(f'<img alt="{html.escape(block[1])}" src="data:image/png;base64,{data}">')
        else:
            head = "".join(f"<th>{_inline(str(c))}</th>" for c in block[1])
            rows = "".join("<tr>" + "".join(f"<td>{_inline(str(c))}</td>" for c in row) + "</tr>" for row in block[2])
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Drift report</title>'
            f"<style>{_STYLE}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def write(summary: dict[str, Any], images: list[tuple[str, str]], out: Path) -> None:
    report = blocks(summary, images)
    (out / "report.md").write_text(markdown(report), encoding="utf-8")
    (out / "report.html").write_text(html_page(report, out), encoding="utf-8")
