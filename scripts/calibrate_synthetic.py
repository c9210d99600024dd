"""Measure the generator defaults (`src/retail_prediction/data/calibration.json`) from real LGSR weeks.

Only aggregate figures leave this script: probabilities, means, spreads and fitted constants. No real
row, product, customer, basket or store identifier is written.

    python scripts/calibrate_synthetic.py /work/shared/data/lgsr [--out src/retail_prediction/data/calibration.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from retail_prediction.data import lgsr as s
from retail_prediction.data.synthetic import (
    LABEL_CODES,
    SEG_CODES,
    build_world,
    label_from_counts,
    sample_basket_classes,
    week_frame,
)

CLASSES = ("LA", "MM", "UM")  # ordered classes; XX is handled apart (it never votes)
MAX_N_BUCKET = 12  # lines-per-basket buckets 1..12 (12 = 12 or more) for per-size figures


def load(data_dir: Path) -> pl.DataFrame:
    """All real weeks, IDs and codes read as strings ("" for the quoted empty codes)."""
    files = sorted(data_dir.glob("transactions_*.csv.gz"))
    overrides = {c: pl.String for c in s.STRING_COLUMNS}
    frames = [pl.read_csv(f, schema_overrides=overrides) for f in files]
    return pl.concat(frames).with_columns(pl.col(s.STRING_COLUMNS).fill_null(""))


def product_classes(df: pl.DataFrame) -> pl.DataFrame:
    """Each product's latent class, read from single-line baskets (where label == product class)."""
    single = df.filter(pl.len().over(s.BASKET_ID) == 1)
    per_prod = single.group_by(s.PROD_CODE).agg(pl.col(s.LABEL).n_unique().alias("k"), pl.col(s.LABEL).first())
    if per_prod["k"].max() != 1:  # the mechanism the generator reproduces would not hold
        raise ValueError("a product shows two labels in single-line baskets")
    return per_prod.select(s.PROD_CODE, pl.col(s.LABEL).alias("pclass"))


def pmf(series: pl.Series) -> dict[str, list[Any]]:
    """Empirical probability mass function as sorted values and probabilities."""
    vc = series.value_counts().sort(series.name)
    return {"values": vc[series.name].to_list(), "probs": (vc["count"] / vc["count"].sum()).round(7).to_list()}


def shares(series: pl.Series) -> dict[str, float]:
    vc = series.value_counts().sort(series.name)  # sorted keys: the generator draws in key order
    return {str(k): round(v / len(series), 6) for k, v in zip(vc[series.name], vc["count"], strict=True)}


def label_thresholds(baskets: pl.DataFrame) -> dict[str, float]:
    """Cut points on d = (n_UM - n_LA) / (n_LA + n_MM + n_UM), midway between the classes they separate."""
    known = baskets.filter((pl.col("n_UNK") == 0) & (pl.col(s.LABEL) != "XX"))
    la, mm, um = (known[f"n_{c}"].cast(pl.Int64) for c in CLASSES)  # unsigned counts would wrap
    d = (um - la) / (la + mm + um)
    y = known[s.LABEL]
    um_cut = (d.filter(y == "UM").min() + d.filter(y != "UM").max()) / 2
    la_cut = (d.filter(y == "LA").max() + d.filter(y != "LA").min()) / 2
    return {"UM": round(float(um_cut), 5), "LA": round(float(la_cut), 5)}


def basket_table(df: pl.DataFrame) -> pl.DataFrame:
    """One row per basket: class counts, label, size codes, customer segment."""
    counts = [(pl.col("pclass") == c).sum().alias(f"n_{c}") for c in (*CLASSES, "XX", "UNK")]
    firsts = [s.LABEL, s.BASKET_SIZE, s.BASKET_TYPE, s.BASKET_DOMINANT_MISSION, s.CUST_PRICE_SENSITIVITY]
    return df.group_by(s.BASKET_ID).agg(pl.len().alias("n"), *counts, *[pl.col(c).first() for c in firsts])


def class_mix(df: pl.DataFrame) -> dict[str, Any]:
    """Line class shares by basket size and the tilt each customer segment applies to them."""
    known = df.filter(pl.col("pclass") != "UNK").with_columns(nb=pl.len().over(s.BASKET_ID).clip(1, MAX_N_BUCKET))
    by_n = known.group_by("nb").agg(*[(pl.col("pclass") == c).mean().alias(c) for c in (*CLASSES, "XX")])
    by_n = by_n.sort("nb")
    voting = known.filter(pl.col("pclass") != "XX")
    overall = np.array([(voting["pclass"] == c).mean() for c in CLASSES])
    tilt = {}
    for seg in SEG_CODES:
        sub = voting.filter(pl.col(s.CUST_PRICE_SENSITIVITY) == seg)["pclass"]
        tilt[seg] = (np.array([(sub == c).mean() for c in CLASSES]) / overall).round(5).tolist()
    voting_by_n = by_n.select(CLASSES).to_numpy()
    voting_by_n = voting_by_n / voting_by_n.sum(axis=1, keepdims=True)
    return {
        "xx_line_share_by_lines": by_n["XX"].round(5).to_list(),
        "voting_share_by_lines": voting_by_n.round(5).tolist(),
        "segment_tilt": tilt,
    }


def fit_concentration(cal: dict[str, Any], baskets: pl.DataFrame, seed: int = 0) -> float:
    """Dirichlet concentration of per-basket class mixes that best reproduces label-by-size shares."""
    rng = np.random.default_rng(seed)
    lines_pmf = cal["lines_per_basket"]
    lines_p = np.array(lines_pmf["probs"])
    n = rng.choice(np.array(lines_pmf["values"]), 300_000, p=lines_p / lines_p.sum())
    seg_share = cal["basket_segment_share"]
    seg_idx = np.array([SEG_CODES.index(k) for k in seg_share])
    seg_p = np.array(list(seg_share.values()))
    seg = seg_idx[rng.choice(seg_idx.size, n.size, p=seg_p / seg_p.sum())]
    real = baskets.with_columns(nb=pl.col("n").clip(1, MAX_N_BUCKET))
    target = real.group_by("nb").agg(*[(pl.col(s.LABEL) == c).mean().alias(c) for c in (*CLASSES, "XX")])
    target_arr = target.sort("nb").select(*CLASSES, "XX").to_numpy()
    best = (np.inf, 0.0)
    for conc in (4.0, 8.0, 12.0, 14.0, 16.0, 18.0, 20.0, 24.0, 30.0):
        counts = sample_basket_classes(rng, n, seg, cal, conc)
        labels = label_from_counts(counts, cal["label_thresholds"])
        nb = np.clip(n, 1, MAX_N_BUCKET)
        sim = np.array([[np.mean(labels[nb == b] == i) for i in range(4)] for b in range(1, MAX_N_BUCKET + 1)])
        loss = float(np.sum((sim - target_arr) ** 2))
        print(f"concentration {conc:5.1f}: loss {loss:.5f}")
        best = min(best, (loss, conc))
    return best[1]


def basket_codes(baskets: pl.DataFrame) -> dict[str, Any]:
    """BASKET_SIZE given lines, BASKET_TYPE given size, mission given type (as the real joint shows)."""
    size_by_n = {}
    for n in range(1, 10):
        sub = baskets.filter(pl.col("n") == n)[s.BASKET_SIZE]
        size_by_n[str(n)] = [round(float((sub == c).mean()), 6) for c in "SML"]
    type_by_size = {z: shares(baskets.filter(pl.col(s.BASKET_SIZE) == z)[s.BASKET_TYPE]) for z in "SML"}
    types = baskets[s.BASKET_TYPE].unique().sort().to_list()
    mission_by_type = {t: shares(baskets.filter(pl.col(s.BASKET_TYPE) == t)[s.BASKET_DOMINANT_MISSION]) for t in types}
    return {"size_given_lines": size_by_n, "type_given_size": type_by_size, "mission_given_type": mission_by_type}


POPULARITY_GRID = [0.0, *np.geomspace(1e-3, 1.0, 60).round(6).tolist()]  # dense at the top of the ranking
# Lower edges of popularity bands (rank quantile) for prices: narrow at the top, where most lines are.
PRICE_BAND_EDGES = [0.0, 0.01, 0.025, 0.05, 0.1, 0.2, 0.35, 0.5, 0.7]


def _ranked_products(df: pl.DataFrame) -> pl.DataFrame:
    """Per product: class, line count, usual unit price, popularity rank quantile and band in its class."""
    unit = df.filter(pl.col(s.SPEND) > 0).with_columns(u=pl.col(s.SPEND) / pl.col(s.QUANTITY))
    per_prod = unit.group_by(s.PROD_CODE).agg(
        pl.len().alias("c"), pl.col("u").median().log().alias("lu"), pl.col("pclass").first()
    )
    rank = pl.col("c").rank("ordinal", descending=True).over("pclass") - 1
    size = pl.len().over("pclass")
    # sorted first so that ties in line count get the same ranks on every run
    ranked = per_prod.filter(pl.col("pclass") != "UNK").sort(s.PROD_CODE).with_columns(q=rank / (size - 1).clip(1))
    band = np.searchsorted(PRICE_BAND_EDGES, ranked["q"].to_numpy(), side="right") - 1
    return ranked.with_columns(band=pl.Series(band))


def popularity(df: pl.DataFrame) -> dict[str, Any]:
    """Log line count (relative to the class mean) along the popularity rank quantile, per class."""
    ranked = _ranked_products(df)
    curves = {}
    for c in (*CLASSES, "XX"):
        counts = np.sort(ranked.filter(pl.col("pclass") == c)["c"].to_numpy())[::-1].astype(float)
        at = np.round(np.asarray(POPULARITY_GRID) * (counts.size - 1)).astype(int)
        curves[c] = np.log(counts[at] / counts.mean()).round(4).tolist()
    return {"popularity_grid": POPULARITY_GRID, "popularity_log_curve": curves}


def prices(df: pl.DataFrame) -> dict[str, Any]:
    """Log-normal of a product's usual unit price per class and popularity band (popular = cheaper),
    and how often and how far a line's price departs from it."""
    ranked = _ranked_products(df)
    by_class = {}
    for c in (*CLASSES, "XX"):
        sub = ranked.filter(pl.col("pclass") == c)
        bands = sub.group_by("band").agg(
            pl.col("lu").mean().alias("mu"), pl.col("lu").std().alias("sd"), pl.len().alias("k")
        )
        bands = bands.filter(pl.col("k") >= 8)  # too few products (small classes): use the class-wide law
        bands = pl.DataFrame({"band": range(len(PRICE_BAND_EDGES))}).join(
            bands.with_columns(pl.col("band").cast(pl.Int64)), on="band", how="left"
        )
        bands = bands.sort("band").with_columns(
            pl.col("mu").fill_null(sub["lu"].mean()), pl.col("sd").fill_null(sub["lu"].std())
        )
        by_class[c] = {"mu": bands["mu"].round(5).to_list(), "sd": bands["sd"].round(5).to_list()}
    unit = df.filter(pl.col(s.SPEND) > 0).with_columns(u=pl.col(s.SPEND) / pl.col(s.QUANTITY))
    moved = unit.with_columns(r=(pl.col("u") / pl.col("u").median().over(s.PROD_CODE)).log())["r"]
    moved = moved.filter(moved.abs() >= 0.005)
    return {
        "price_band_edges": PRICE_BAND_EDGES,
        "unit_price_log_by_band": by_class,
        "price_change_share": round(len(moved) / unit.height, 5),
        "price_change_log_sd": round(float(moved.std()), 5),
    }


def quantity_by_price(df: pl.DataFrame) -> dict[str, Any]:
    """Quantity law per quintile of the product's usual unit price: cheap items go by the 3s and 6s."""
    unit = df.with_columns(pu=(pl.col(s.SPEND) / pl.col(s.QUANTITY)).median().over(s.PROD_CODE))
    edges = [round(float(unit["pu"].quantile(q)), 4) for q in (0.2, 0.4, 0.6, 0.8)]
    bucket = pl.Series(np.searchsorted(edges, unit["pu"].to_numpy(), side="right"))  # as the generator does
    laws = [pmf(unit.filter(bucket == i)[s.QUANTITY]) for i in range(5)]
    return {"quantity_price_edges": edges, "quantity_by_price": laws}


def lifecycle(df: pl.DataFrame) -> dict[str, Any]:
    """Weekly launch and withdrawal rates, from products busy enough (3+ lines a week while on sale)
    that their first and last weeks are real launches and withdrawals, not chance."""
    weeks = df[s.SHOP_WEEK].unique().sort().to_list()
    index = pl.col(s.SHOP_WEEK).replace_strict(dict(zip(weeks, range(len(weeks)), strict=True)))
    per_prod = (
        df.with_columns(wi=index)
        .group_by(s.PROD_CODE)
        .agg(pl.len().alias("c"), pl.col("wi").min().alias("first"), pl.col("wi").max().alias("last"))
    )
    busy = per_prod.filter(pl.col("c") / (pl.col("last") - pl.col("first") + 1) >= 3)
    at_start = int((busy["first"] == 0).sum())
    launched = busy.height - at_start
    ended = int((busy["last"] < len(weeks) - 1).sum())
    span = len(weeks) - 1
    return {
        "product_launch_rate_per_week": round(launched / at_start / span, 6),
        "product_end_rate_per_week": round(ended / (at_start + launched / 2) / span, 6),
    }


def profile_spread(df: pl.DataFrame) -> dict[str, float]:
    """Across products (50+ lines) of each class, sd of the share of their baskets labelled LA and UM."""
    prof = df.filter(pl.col("pclass") != "UNK").group_by(s.PROD_CODE).agg(
        pl.col("pclass").first(), pl.len().alias("c"),
        *[(pl.col(s.LABEL) == c).mean().alias(c) for c in ("LA", "UM")],
    )  # fmt: skip
    prof = prof.filter(pl.col("c") >= 50)
    out = {}
    for c in (*CLASSES, "XX"):
        sub = prof.filter(pl.col("pclass") == c)
        out[c] = round(float((sub["LA"].std() + sub["UM"].std()) / 2), 5)
    return out


def fit_tier_strength(cal: dict[str, Any], target: dict[str, float]) -> float:
    """Tier strength whose synthetic product profiles spread like the real ones (same data volume)."""
    best = (np.inf, 0.0)
    for strength in (1.0, 1.25, 1.5, 1.75, 2.0, 2.5):
        cal["tier_strength"] = strength
        world = build_world(customers=cal["real_customers"], seed=0, weeks=cal["real_weeks"], cal=cal)
        frames = [week_frame(world, 200607, i, 0) for i in range(cal["real_weeks"])]
        lines = pl.concat(frames).select(s.PROD_CODE, s.LABEL)
        classes = pl.DataFrame({s.PROD_CODE: world.prod_code, "pclass": np.asarray(LABEL_CODES)[world.prod_class]})
        got = profile_spread(lines.join(classes, on=s.PROD_CODE))
        loss = sum((got[c] - target[c]) ** 2 for c in CLASSES)
        print(f"tier strength {strength:4.1f}: profile sd {got} (real {target}), loss {loss:.6f}")
        best = min(best, (loss, strength))
    return best[1]


def stores(df: pl.DataFrame) -> dict[str, Any]:
    """Store count, format and region mix, and how busy stores of each format are."""
    per_store = df.group_by(s.STORE_CODE, s.STORE_FORMAT, s.STORE_REGION).agg(pl.col(s.BASKET_ID).n_unique().alias("b"))
    mean_b = per_store["b"].mean()
    volume = {}
    for fmt in sorted(per_store[s.STORE_FORMAT].unique()):
        b = per_store.filter(pl.col(s.STORE_FORMAT) == fmt)["b"]
        volume[fmt] = {"rel_mean": round(float(b.mean() / mean_b), 5), "log_sd": round(float(b.log().std()), 5)}
    return {
        "stores": per_store.height,
        "store_format_share": shares(per_store[s.STORE_FORMAT]),
        "store_region_share": shares(per_store[s.STORE_REGION]),
        "store_volume_by_format": volume,
    }


def customers(df: pl.DataFrame, baskets: pl.DataFrame) -> dict[str, Any]:
    """Segment mixes, activity spread, home-store loyalty and basket rate per customer."""
    carded = df.filter(pl.col(s.CUST_CODE) != "")
    per_cust = carded.group_by(s.CUST_CODE).agg(
        pl.col(s.CUST_PRICE_SENSITIVITY).first(), pl.col(s.CUST_LIFESTAGE).first(),
        pl.col(s.BASKET_ID).n_unique().alias("b"),
    )  # fmt: skip
    m, v = per_cust["b"].mean(), per_cust["b"].var()
    visits = carded.select(s.CUST_CODE, s.BASKET_ID, s.STORE_CODE).unique().group_by(s.CUST_CODE, s.STORE_CODE).len()
    top = visits.group_by(s.CUST_CODE).agg(pl.col("len").max().alias("mx"), pl.col("len").sum().alias("t"))
    lifestage = {
        seg: shares(per_cust.filter(pl.col(s.CUST_PRICE_SENSITIVITY) == seg)[s.CUST_LIFESTAGE])
        for seg in SEG_CODES[:-1]
    }
    weeks = df[s.SHOP_WEEK].n_unique()
    return {
        "real_customers": per_cust.height,
        "baskets_per_customer_week": round(baskets.height / weeks / per_cust.height, 5),
        "anonymous_basket_share": round(float((baskets[s.CUST_PRICE_SENSITIVITY] == "").mean()), 5),
        "customer_activity_gamma_shape": round(float(m * m / (v - m)), 4),
        "home_store_share": round(float(top["mx"].sum() / top["t"].sum()), 4),
        "seg_1_share": shares(per_cust[s.CUST_PRICE_SENSITIVITY]),
        "seg_2_given_seg_1": lifestage,
        "basket_segment_share": shares(baskets[s.CUST_PRICE_SENSITIVITY]),
    }


def calendar_volume(df: pl.DataFrame) -> dict[str, Any]:
    """Relative basket volume by week of the shop year (1.0 where a week is missing), days and hours."""
    per_week = df.group_by(s.SHOP_WEEK).agg(pl.col(s.BASKET_ID).n_unique().alias("b"))
    per_week = per_week.with_columns(ww=pl.col(s.SHOP_WEEK) % 100, r=pl.col("b") / pl.col("b").mean())
    by_ww = per_week.group_by("ww").agg(pl.col("r").mean())
    rel = dict(zip(by_ww["ww"].to_list(), by_ww["r"].to_list(), strict=True))
    baskets = df.group_by(s.BASKET_ID).agg(pl.col(s.SHOP_WEEKDAY).first(), pl.col(s.SHOP_HOUR).first())
    return {
        "week_volume_by_week_of_year": [round(rel.get(w, 1.0), 4) for w in range(1, 54)],
        "weekday": pmf(baskets[s.SHOP_WEEKDAY]),
        "hour": pmf(baskets[s.SHOP_HOUR]),
    }


def hierarchy(df: pl.DataFrame, pclass: pl.DataFrame) -> dict[str, Any]:
    counts = {lvl: df[lvl].n_unique() for lvl in s.HIERARCHY}
    return {
        "products": df[s.PROD_CODE].n_unique(),
        "hierarchy_counts": counts,
        "product_class_share": shares(pclass["pclass"]),
    }


def calibrate(data_dir: Path) -> dict[str, Any]:
    df = load(data_dir)
    pclass = product_classes(df)
    df = df.join(pclass, on=s.PROD_CODE, how="left").with_columns(pl.col("pclass").fill_null("UNK"))
    baskets = basket_table(df)
    cal: dict[str, Any] = {
        "source": "dunnhumby LGSR 5K sample, aggregate figures only",
        "real_weeks": df[s.SHOP_WEEK].n_unique(),
        "real_lines": df.height,
        "real_baskets": baskets.height,
        "label_share": shares(baskets[s.LABEL]),
        "label_thresholds": label_thresholds(baskets),
        "lines_per_basket": pmf(baskets["n"]),
        "quantity": pmf(df[s.QUANTITY]),
        **quantity_by_price(df),
    }
    for part in (
        hierarchy(df, pclass), class_mix(df), popularity(df), lifecycle(df), basket_codes(baskets),
        prices(df), stores(df), customers(df, baskets), calendar_volume(df),
    ):  # fmt: skip
        cal.update(part)
    cal["dirichlet_concentration"] = fit_concentration(cal, baskets)
    cal["product_profile_sd"] = profile_spread(df)
    cal["tier_strength"] = fit_tier_strength(cal, cal["product_profile_sd"])
    return cal


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data_dir", type=Path)
    default_out = Path(__file__).resolve().parents[1] / "src/retail_prediction/data/calibration.json"
    parser.add_argument("--out", type=Path, default=default_out)
    args = parser.parse_args()
    cal = calibrate(args.data_dir)
    args.out.write_text(json.dumps(cal, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
