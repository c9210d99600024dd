"""The synthetic world fixed across weeks: calibration, shop calendar, products, stores, customers."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from ...contract import LABELS
from .. import lgsr as s

LABEL_CODES: tuple[str, ...] = LABELS  # class index 0..3 = LA, MM, UM, XX
XX = 3
# seg_1 codes in class order, then "" for anonymous baskets (index 4).
SEG_CODES: tuple[str, ...] = ("AZ", "CT", "BG", "DY", "")
SIZE_CODES: tuple[str, ...] = ("S", "M", "L")
TIERS = 5  # product "company" tiers within a class (see `line_tiers`)
MAX_N_BUCKET = 12  # per-size calibration rows: 1..11 lines, then 12 or more
_MAX_PRODUCTS = 99_999  # PRD09 + 5 digits
_MAX_CUSTOMERS = 10_000_000  # CUST00 + 8 digits, spread over the range


@dataclass(frozen=True)
class World:
    """Everything fixed across weeks: products, stores, customers (index arrays and code strings)."""

    prod_code: list[str]
    prod_class: np.ndarray  # int8 class index
    prod_price: np.ndarray  # usual unit price (GBP)
    prod_levels: list[list[str]]  # hierarchy codes per product, finest level first
    prod_weight: np.ndarray  # popularity within its class
    prod_tier: np.ndarray  # int8 0..TIERS-1: how far down- or up-market the baskets it lands in are
    prod_launch: np.ndarray  # first week number on sale (0 = from the start)
    prod_end: np.ndarray  # week number it is withdrawn (inf = never in the run)
    store_code: list[str]
    store_format: list[str]
    store_region: list[str]
    store_cdf: np.ndarray
    cust_code: list[str]
    cust_seg: np.ndarray  # int8 index into SEG_CODES
    cust_seg2: list[str]
    cust_home: np.ndarray
    cust_cdf: np.ndarray
    cal: dict[str, Any]


# ---------------------------------------------------------------- calibration and calendar


@cache
def _default_calibration() -> str:
    return resources.files("retail_prediction.data").joinpath("calibration.json").read_text()


def load_calibration(path: Path | None = None) -> dict[str, Any]:
    """The generator defaults: the packaged `calibration.json`, or another file of the same shape."""
    text = path.read_text() if path is not None else _default_calibration()
    return json.loads(text)


def shop_year_start(year: int) -> dt.date:
    """First day of a shop year: the last Monday of February (matches the real `time.csv`)."""
    march_first = dt.date(year, 3, 1)
    return march_first - dt.timedelta(days=march_first.weekday() or 7)


def week_start(shop_week: int) -> dt.date:
    """Monday that starts shop week yyyyww."""
    year, ww = divmod(shop_week, 100)
    start = shop_year_start(year) + dt.timedelta(weeks=ww - 1)
    if not 1 <= ww <= 53 or start >= shop_year_start(year + 1):
        raise ValueError(f"shop week {shop_week} does not exist")
    return start


def shop_weeks(first: int, count: int) -> list[int]:
    """`count` consecutive shop weeks from `first` (years have 52 or 53 weeks)."""
    weeks, current = [], first
    week_start(first)  # validates
    for _ in range(count):
        weeks.append(current)
        year, ww = divmod(current, 100)
        following = shop_year_start(year) + dt.timedelta(weeks=ww)
        current = current + 1 if following < shop_year_start(year + 1) else (year + 1) * 100 + 1
    return weeks


def shop_weekday(date: dt.date) -> int:
    """1 = Sunday ... 7 = Saturday, as SHOP_WEEKDAY."""
    return (date.weekday() + 1) % 7 + 1

# ---------------------------------------------------------------- the fixed world


def _choice(rng: np.random.Generator, probs: dict[str, float], size: int) -> np.ndarray:
    keys = list(probs)
    p = np.asarray([probs[k] for k in keys], dtype=float)
    return np.asarray(keys, dtype=object)[rng.choice(len(keys), size, p=p / p.sum())]


def _exact_mix(rng: np.random.Generator, probs: dict[str, float], size: int) -> np.ndarray:
    """Codes in the exact proportions (largest remainder), shuffled: with only ~28 XLS stores, independent
    draws would move the format mix of baskets by several points from one seed to the next."""
    keys = list(probs)
    p = np.asarray([probs[k] for k in keys], dtype=float)
    quota = p / p.sum() * size
    count = np.floor(quota).astype(int)
    count[np.argsort(count - quota)[: size - count.sum()]] += 1
    return rng.permutation(np.repeat(np.asarray(keys, dtype=object), count))


def _spread_ids(rng: np.random.Generator, count: int, space: int) -> np.ndarray:
    """`count` distinct sorted numbers in 1..space-1, with gaps like real code lists."""
    if count >= space:
        raise ValueError(f"cannot draw {count} distinct codes below {space}")
    stride = (space - 1) // count
    return 1 + np.arange(count) * stride + rng.integers(0, stride, count)


def _nested_parents(rng: np.random.Generator, children: int, parents: int) -> np.ndarray:
    """Parent of each child, every parent used, sorted so codes grow with the hierarchy like the real ones."""
    parent = np.concatenate([np.arange(parents), rng.integers(0, parents, children - parents)])
    return np.sort(parent)


def _hierarchy(rng: np.random.Generator, products: int, cal: dict[str, Any]) -> list[list[str]]:
    """Codes of the four levels for each product; each level strictly nested in the next."""
    real = cal["hierarchy_counts"]
    scale = products / cal["products"]
    sizes = [int(np.clip(round(real[lvl] * min(scale, 1.0)), 1, 999)) for lvl in s.HIERARCHY]
    sizes[3] = min(sizes[3], 9)  # D0000x has one digit
    for i in (2, 1, 0):  # a level has at least as many codes as the one above it
        sizes[i] = min(max(sizes[i], sizes[i + 1]), products if i == 0 else sizes[i - 1])
    prod_cl = rng.permutation(_nested_parents(rng, products, sizes[0]))
    cl_dep = _nested_parents(rng, sizes[0], sizes[1])
    dep_g = _nested_parents(rng, sizes[1], sizes[2])
    g_d = _nested_parents(rng, sizes[2], sizes[3])
    cl, dep = prod_cl, cl_dep[prod_cl]
    g = dep_g[dep]
    return [
        [f"CL{i + 1:05d}" for i in cl], [f"DEP{i + 1:05d}" for i in dep],
        [f"G{i + 1:05d}" for i in g], [f"D{i + 1:05d}" for i in g_d[g]],
    ]  # fmt: skip


def _products(rng: np.random.Generator, products: int, weeks: int, cal: dict[str, Any]) -> dict[str, Any]:
    if not 1 <= products <= _MAX_PRODUCTS:
        raise ValueError(f"products must be 1..{_MAX_PRODUCTS}")
    codes = _spread_ids(rng, products, min(_MAX_PRODUCTS + 1, int(products * 1.001) + 10))
    share = cal["product_class_share"]
    cls = rng.choice(4, products, p=np.asarray([share[c] for c in LABEL_CODES]) / sum(share.values()))
    cls[rng.permutation(products)[:4]] = np.arange(min(4, products))  # every class exists
    price, weight = np.zeros(products), np.zeros(products)
    for c, code in enumerate(LABEL_CODES):
        ids = rng.permutation(np.flatnonzero(cls == c))  # popularity rank unrelated to code order
        q = np.arange(ids.size) / max(ids.size - 1, 1)
        weight[ids] = np.exp(np.interp(q, cal["popularity_grid"], cal["popularity_log_curve"][code]))
        # popular products are cheaper and less spread in price: log-normal per popularity band
        law = cal["unit_price_log_by_band"][code]
        band = np.searchsorted(cal["price_band_edges"], q, side="right") - 1
        price[ids] = np.exp(rng.normal(np.asarray(law["mu"])[band], np.asarray(law["sd"])[band]))
    price = np.maximum(np.round(price, 2), 0.01)
    return {
        "prod_code": [f"PRD09{i:05d}" for i in codes], "prod_class": cls.astype(np.int8),
        "prod_price": price, "prod_levels": _hierarchy(rng, products, cal), "prod_weight": weight,
        "prod_tier": rng.integers(0, TIERS, products).astype(np.int8),
        **_lifecycle(rng, products, weeks, cal, keep=np.sort(np.unique(cls, return_index=True)[1])),
    }  # fmt: skip


def _lifecycle(rng: np.random.Generator, products: int, weeks: int, cal: dict[str, Any],
               keep: np.ndarray) -> dict[str, np.ndarray]:  # fmt: skip
    """Launch and withdrawal weeks: a steady catalogue where ~0.3 % of products come and go each week,
    so that `products` distinct products are on sale at some point of a `weeks`-week run."""
    launch_rate, end_rate = cal["product_launch_rate_per_week"], cal["product_end_rate_per_week"]
    at_start = rng.random(products) < 1.0 / (1.0 + launch_rate * max(weeks - 1, 0))
    at_start[keep] = True  # one product per class on sale all along: every class can always be served
    launch = np.where(at_start, 0.0, rng.uniform(1.0, max(weeks, 2), products))
    end = launch + rng.exponential(1.0 / end_rate, products)
    end[keep] = np.inf
    return {"prod_launch": launch, "prod_end": end}


def _stores(rng: np.random.Generator, stores: int, cal: dict[str, Any]) -> dict[str, Any]:
    numbers = _spread_ids(rng, stores, max(3000, stores * 4))
    fmt = _exact_mix(rng, cal["store_format_share"], stores)
    region = _exact_mix(rng, cal["store_region_share"], stores)
    vol = cal["store_volume_by_format"]
    rel = np.asarray([vol[f]["rel_mean"] for f in fmt])
    sd = np.asarray([vol[f]["log_sd"] for f in fmt])
    weight = rel * np.exp(rng.normal(-sd * sd / 2, sd))  # mean-preserving log-normal spread
    return {
        "store_code": [f"STORE{i:05d}" for i in numbers], "store_format": list(fmt),
        "store_region": list(region), "store_cdf": np.cumsum(weight) / weight.sum(),
    }  # fmt: skip


def _customers(rng: np.random.Generator, customers: int, store_cdf: np.ndarray, cal: dict[str, Any]) -> dict:
    if not 1 <= customers <= _MAX_CUSTOMERS:
        raise ValueError(f"customers must be 1..{_MAX_CUSTOMERS}")
    numbers = _spread_ids(rng, customers, min(max(1_000_000, customers * 10), 100_000_000))
    seg1 = _choice(rng, cal["seg_1_share"], customers)
    seg_index = {code: i for i, code in enumerate(SEG_CODES)}
    seg2 = np.empty(customers, dtype=object)
    for code, lifestage in cal["seg_2_given_seg_1"].items():
        mask = seg1 == code
        seg2[mask] = _choice(rng, lifestage, int(mask.sum()))
    shape = cal["customer_activity_gamma_shape"]
    # segments shop at different rates (DY: 12 % of customers, 0.3 % of baskets): basket share / customer share
    seg_rate = {k: cal["basket_segment_share"][k] / v for k, v in cal["seg_1_share"].items()}
    activity = rng.gamma(shape, 1.0 / shape, customers) * np.asarray([seg_rate[c] for c in seg1])
    return {
        "cust_code": [f"CUST00{i:08d}" for i in numbers],
        "cust_seg": np.asarray([seg_index[c] for c in seg1], dtype=np.int8), "cust_seg2": list(seg2),
        "cust_home": np.searchsorted(store_cdf, rng.random(customers)).clip(0, store_cdf.size - 1),
        "cust_cdf": np.cumsum(activity) / activity.sum(),
    }  # fmt: skip


def build_world(*, customers: int, seed: int, weeks: int = 94, products: int | None = None,
                stores: int | None = None, cal: dict[str, Any] | None = None) -> World:  # fmt: skip
    """Products, stores and customers fixed for the whole run (deterministic in `seed`)."""
    cal = cal if cal is not None else load_calibration()
    rng = np.random.default_rng([seed, 0])
    store_part = _stores(rng, stores or cal["stores"], cal)
    return World(
        **_products(rng, products or cal["products"], weeks, cal), **store_part,
        **_customers(rng, customers, store_part["store_cdf"], cal), cal=cal,
    )  # fmt: skip
