"""Synthetic LGSR transaction weeks that a loader cannot tell from the real files.

`generate` writes `transactions_YYYYWW.csv.gz` (one per shop week) and `time.csv.gz` with the current
header (`seg_1`/`seg_2`), the real column order, code formats and quoting (empty codes written `""`,
nothing else quoted, SPEND as the shortest float text such as `1.3` or `2.0`). Lines are sorted by store
then product, as in the real files. Defaults come from `calibration.json`, aggregate figures measured on
the real weeks by `scripts/calibrate_synthetic.py` (no real row or identifier is stored).

How the label works (measured on the 94 real weeks, 2.5 M lines, 392,510 baskets):

* Every product has one fixed latent class in {LA, MM, UM, XX}: in single-line baskets the label is always
  the product's class (4,665 products, no exception).
* A basket's label is a deterministic function of how many of its lines fall in each class. XX lines never
  vote: a basket is XX exactly when all its lines are XX products. Otherwise, with
  ``d = (n_UM - n_LA) / (n_LA + n_MM + n_UM)`` (line counts, not spend or quantity), the label is UM when
  ``d > 0.1828``, LA when ``d < -0.2266`` and MM in between. On the 342,596 baskets whose products all have
  a known class this rule reproduces all of the 3,664 distinct (n_LA, n_MM, n_UM) compositions with zero
  exceptions (majority by count gets 72 %, by spend 70 %; the thresholds are asymmetric: one UM line in
  five flips a basket to UM, one LA line in five does not flip it to LA).
* What makes the labels realistic is therefore the *composition* of baskets: the class mix of lines
  depends on basket size (single-line baskets are 66 % MM products and 9 % XX; big baskets hold more LA
  and UM lines), on the customer's seg_1 (AZ customers' lines are LA 1.56x as often as average, BG
  customers' lines UM 1.54x as often), and varies from basket to basket. The generator draws each
  basket's class mix from a Dirichlet around ``share_by_size * segment_tilt`` (concentration fitted so
  labels by basket size match the real ones), draws each line's class from it, then a product of that
  class, and applies the rule above to the lines actually written.
* Two more real traits decide how hard the labels are to learn, and are reproduced so that a model scores
  in the same range on synthetic and real weeks (a quick LightGBM on product-profile features, trained on
  the first 75 % of weeks, tested on the rest: 89.8 % accuracy / 0.913 macro-F1 on the real weeks,
  88.0-88.8 % / 0.894-0.907 on two synthetic seeds of the same size; 99.6 % on synthetic weeks
  generated without these two traits; the tier strength moves it, ~90 % at 1.5 and ~87 % at 2.0):
  - products keep different company: across MM products, the share of LA-labelled baskets among the
    baskets holding them has sd 0.098 (0.03 if products were drawn independently). Each product has a
    "tier" and baskets leaning UM pick high tiers (`line_tiers`, strength fitted to that spread);
  - the catalogue churns: ~0.44 % of products launch and ~0.28 % are withdrawn each week (24 % of busy
    products start after the first week), so later weeks hold products never seen before.

Other figures reproduced: lines per basket (empirical, mean 6.4, median 4, max 87; no product twice in a
basket), quantity (empirical: 82 % ones, no 2s, as in the source), a stable unit price per product
(log-normal by class and popularity band, 10 % of lines at a moved price; cheap products sell by
several units), product popularity following the real rank curve of each class, a strictly
nested 4-level hierarchy, stores with a fixed format and region and format-dependent traffic, customers
with a fixed seg_1/seg_2, an activity rate and a home store (79 % of visits), 20.5 % anonymous baskets,
weekday/hour mixes, weekly volume by week of the shop year, BASKET_SIZE from the line count, BASKET_TYPE
from the size and the mission from the type (as in the real joint distribution).

Speed: NumPy per week, one process per core over weeks, polars' CSV writer, gzip level 1.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import multiprocessing
import time
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from ..contract import LABELS
from ..cpus import cpu_budget
from . import lgsr as s

LABEL_CODES: tuple[str, ...] = LABELS  # class index 0..3 = LA, MM, UM, XX
XX = 3
# seg_1 codes in class order, then "" for anonymous baskets (index 4).
SEG_CODES: tuple[str, ...] = ("AZ", "CT", "BG", "DY", "")
SIZE_CODES: tuple[str, ...] = ("S", "M", "L")
TIERS = 5  # product "company" tiers within a class (see `line_tiers`)
MAX_N_BUCKET = 12  # per-size calibration rows: 1..11 lines, then 12 or more
GZIP_LEVEL = 1  # fast; the real files use level 9, which readers cannot tell apart
_BASKET_ID_BASE = 994_100_000_000_000  # "99410" + 3-digit week number + 7-digit basket number
_MAX_BASKETS_PER_WEEK = 10_000_000
_MAX_PRODUCTS = 99_999  # PRD09 + 5 digits
_MAX_CUSTOMERS = 10_000_000  # CUST00 + 8 digits, spread over the range


@dataclass(frozen=True)
class GenerateSummary:
    """What `generate` wrote."""

    out_dir: Path
    files: list[Path]
    lines: int
    baskets: int
    seconds: float


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
    return resources.files(__package__).joinpath("calibration.json").read_text()


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


# ---------------------------------------------------------------- labels and basket composition


def label_from_counts(counts: np.ndarray, thresholds: dict[str, float]) -> np.ndarray:
    """Label index (0..3 = LA, MM, UM, XX) of baskets from their (n, 4) per-class line counts."""
    counts = np.asarray(counts, dtype=np.int64)  # unsigned counts would wrap in the difference below
    voting = counts[:, :3].sum(axis=1)
    d = (counts[:, 2] - counts[:, 0]) / np.maximum(voting, 1)
    label = np.where(d > thresholds["UM"], 2, np.where(d < thresholds["LA"], 0, 1))
    return np.where(voting == 0, XX, label).astype(np.int8)


def _size_bucket(n: np.ndarray) -> np.ndarray:
    return np.clip(n, 1, MAX_N_BUCKET) - 1


def basket_class_mix(rng: np.random.Generator, n: np.ndarray, seg: np.ndarray, cal: dict[str, Any],
                     concentration: float) -> np.ndarray:  # fmt: skip
    """Per-basket probabilities of LA, MM, UM lines: Dirichlet around size share x segment tilt."""
    by_size = np.asarray(cal["voting_share_by_lines"])[_size_bucket(n)]
    tilt = np.asarray([cal["segment_tilt"][code] for code in SEG_CODES])[seg]
    mean = by_size * tilt
    mean /= mean.sum(axis=1, keepdims=True)
    draws = rng.gamma(concentration * mean)
    return draws / np.maximum(draws.sum(axis=1, keepdims=True), 1e-300)


def line_classes(rng: np.random.Generator, n: np.ndarray, mix: np.ndarray, cal: dict[str, Any]) -> np.ndarray:
    """Class of every line (baskets laid out one after another), XX with a size-dependent probability."""
    basket = np.repeat(np.arange(n.size), n)
    xx_share = np.asarray(cal["xx_line_share_by_lines"])[_size_bucket(n)][basket]
    u = rng.random(basket.size)
    cum = np.cumsum(mix, axis=1)[basket]
    voting = (rng.random(basket.size)[:, None] > cum).sum(axis=1).clip(0, 2)
    return np.where(u < xx_share, XX, voting).astype(np.int8)


def sample_basket_classes(rng: np.random.Generator, n: np.ndarray, seg: np.ndarray, cal: dict[str, Any],
                          concentration: float) -> np.ndarray:  # fmt: skip
    """(baskets, 4) line counts per class for baskets of `n` lines and seg_1 index `seg`."""
    classes = line_classes(rng, n, basket_class_mix(rng, n, seg, cal, concentration), cal)
    basket = np.repeat(np.arange(n.size), n)
    return np.bincount(basket * 4 + classes, minlength=n.size * 4).reshape(n.size, 4)


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


# ---------------------------------------------------------------- one week


def _pick(rng: np.random.Generator, cdf: np.ndarray, size: int) -> np.ndarray:
    return np.searchsorted(cdf, rng.random(size), side="right").clip(0, cdf.size - 1)


def _pmf_draw(rng: np.random.Generator, law: dict[str, list], size: int) -> np.ndarray:
    values, probs = np.asarray(law["values"]), np.asarray(law["probs"], dtype=float)
    return values[_pick(rng, np.cumsum(probs) / probs.sum(), size)]


@dataclass(frozen=True)
class Shelf:
    """Products on sale in one week, grouped by (class, tier): ids, cumulative popularity, total mass."""

    ids: list[np.ndarray]
    cdf: list[np.ndarray]
    mass: np.ndarray  # (4, TIERS)


def shelf(world: World, week_number: int) -> Shelf:
    on_sale = (world.prod_launch <= week_number) & (week_number < world.prod_end)
    group = world.prod_class.astype(np.int64) * TIERS + world.prod_tier
    ids, cdf, mass = [], [], np.zeros(4 * TIERS)
    for g in range(4 * TIERS):
        members = np.flatnonzero(on_sale & (group == g))
        weight = world.prod_weight[members]
        mass[g] = weight.sum()
        ids.append(members)
        cdf.append(np.cumsum(weight) / max(mass[g], 1e-300))
    return Shelf(ids, cdf, mass.reshape(4, TIERS))


def line_tiers(rng: np.random.Generator, shelf_: Shelf, classes: np.ndarray, position: np.ndarray,
               strength: float) -> np.ndarray:  # fmt: skip
    """Tier of each line's product: baskets leaning UM (position > 0) favour high tiers, LA low ones.

    This gives products of one class different "company" (an MM product bought mostly with LA goods),
    which the real data shows: the share of LA-labelled baskets among an MM product's baskets spreads
    with sd 0.09 across products, three times what independent draws give.
    """
    centred = np.arange(TIERS) - (TIERS - 1) / 2
    weight = shelf_.mass[classes] * np.exp(strength * position[:, None] * centred[None, :])
    cum = np.cumsum(weight, axis=1)
    u = rng.random(classes.size) * cum[:, -1]
    return (u[:, None] >= cum).sum(axis=1).clip(0, TIERS - 1)


def _products_for(rng: np.random.Generator, shelf_: Shelf, classes: np.ndarray, tiers: np.ndarray) -> np.ndarray:
    prod = np.empty(classes.size, dtype=np.int64)
    group = classes.astype(np.int64) * TIERS + tiers
    for g in np.unique(group):
        mask = group == g
        prod[mask] = shelf_.ids[g][_pick(rng, shelf_.cdf[g], int(mask.sum()))]
    return prod


def _dedupe(rng: np.random.Generator, shelf_: Shelf, basket: np.ndarray, classes: np.ndarray,
            tiers: np.ndarray, prod: np.ndarray) -> np.ndarray:  # fmt: skip
    """Keep-mask after redrawing products repeated in a basket (real baskets never repeat one).

    Only the baskets that had a repeat are checked again; after a few tries a line may leave its tier
    (small tiers of small classes run out of distinct products), and a line still repeated is dropped.
    """
    n_baskets = int(basket.max()) + 1 if basket.size else 0
    check = np.arange(basket.size)
    for attempt in range(24):
        b, p = basket[check], prod[check]
        order = np.lexsort((p, b))
        same = (b[order][1:] == b[order][:-1]) & (p[order][1:] == p[order][:-1])
        dup = check[order[1:][same]]
        if dup.size == 0:
            return np.ones(basket.size, dtype=bool)
        if attempt >= 8:
            tiers[dup] = line_tiers(rng, shelf_, classes[dup], np.zeros(dup.size), 0.0)
        prod[dup] = _products_for(rng, shelf_, classes[dup], tiers[dup])
        touched = np.zeros(n_baskets, dtype=bool)
        touched[basket[dup]] = True
        check = np.flatnonzero(touched[basket])
    keep = np.ones(basket.size, dtype=bool)
    keep[dup] = False
    return keep


def _basket_count(rng: np.random.Generator, world: World, shop_week: int) -> int:
    cal = world.cal
    volume = cal["week_volume_by_week_of_year"][min(shop_week % 100, 53) - 1]
    expected = world.cust_cdf.size * cal["baskets_per_customer_week"] * volume
    count = max(int(rng.poisson(expected)), 1)
    if count >= _MAX_BASKETS_PER_WEEK:
        raise ValueError("too many baskets per week for 7-digit basket numbers: use fewer customers")
    return count


def _baskets(rng: np.random.Generator, world: World, shop_week: int) -> dict[str, np.ndarray]:
    """Basket-level columns: customer (-1 = anonymous), store, day, hour, size codes, line count."""
    cal = world.cal
    count = _basket_count(rng, world, shop_week)
    anonymous = rng.random(count) < cal["anonymous_basket_share"]
    cust = np.where(anonymous, -1, _pick(rng, world.cust_cdf, count))
    away = rng.random(count) >= cal["home_store_share"]
    store = np.where(anonymous | away, _pick(rng, world.store_cdf, count), world.cust_home[np.maximum(cust, 0)])
    n = _pmf_draw(rng, cal["lines_per_basket"], count).astype(np.int64)
    return {
        "cust": cust, "store": store, "n": n,
        "weekday": _pmf_draw(rng, cal["weekday"], count), "hour": _pmf_draw(rng, cal["hour"], count),
        "seg": np.where(anonymous, SEG_CODES.index(""), world.cust_seg[np.maximum(cust, 0)]),
    }  # fmt: skip


def _conditional(rng: np.random.Generator, given: np.ndarray, given_keys: list[str],
                 table: dict[str, dict[str, float]]) -> tuple[np.ndarray, list[str]]:  # fmt: skip
    """Draw a code for each row from the law of its `given` code; returns indices and the code list."""
    keys = sorted({k for law in table.values() for k in law})
    out = np.zeros(given.size, dtype=np.int64)
    for i, key in enumerate(given_keys):
        mask = given == i
        law = table.get(key)
        if law is None or not mask.any():
            continue
        p = np.asarray([law.get(k, 0.0) for k in keys])
        out[mask] = rng.choice(len(keys), int(mask.sum()), p=p / p.sum())
    return out, keys


def _basket_codes(rng: np.random.Generator, n: np.ndarray, cal: dict[str, Any]) -> dict[str, Any]:
    """BASKET_SIZE from the line count, BASKET_TYPE from the size, mission from the type (real joint)."""
    size = np.full(n.size, SIZE_CODES.index("L"), dtype=np.int64)
    for lines, probs in cal["size_given_lines"].items():
        mask = n == int(lines)
        size[mask] = rng.choice(3, int(mask.sum()), p=np.asarray(probs) / sum(probs))
    kind, kinds = _conditional(rng, size, list(SIZE_CODES), cal["type_given_size"])
    mission, missions = _conditional(rng, kind, kinds, cal["mission_given_type"])
    return {"size": (size, list(SIZE_CODES)), "type": (kind, kinds), "mission": (mission, missions)}


def _line_prices(rng: np.random.Generator, world: World, prod: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    cal = world.cal
    price = world.prod_price[prod]
    bucket = np.searchsorted(cal["quantity_price_edges"], price, side="right")
    qty = np.empty(prod.size, dtype=np.int64)
    for i, law in enumerate(cal["quantity_by_price"]):  # cheap products sell by several units
        mask = bucket == i
        qty[mask] = _pmf_draw(rng, law, int(mask.sum()))
    moved = rng.random(prod.size) < cal["price_change_share"]
    shift = np.exp(rng.normal(0.0, cal["price_change_log_sd"], int(moved.sum())))
    price[moved] = np.maximum(np.round(price[moved] * shift, 2), 0.01)
    return qty, np.round(price * qty, 2)


def _gather(codes: list[str], idx: np.ndarray) -> pl.Series:
    return pl.Series(codes, dtype=pl.String).gather(pl.Series(idx, dtype=pl.Int64))


def week_frame(world: World, shop_week: int, week_number: int, seed: int) -> pl.DataFrame:
    """All lines of one shop week, in the real column order, sorted by store then product."""
    rng = np.random.default_rng([seed, 1, week_number])
    b = _baskets(rng, world, shop_week)
    mix = basket_class_mix(rng, b["n"], b["seg"], world.cal, world.cal["dirichlet_concentration"])
    classes = line_classes(rng, b["n"], mix, world.cal)
    basket = np.repeat(np.arange(b["n"].size), b["n"])
    on_shelf = shelf(world, week_number)
    position = (mix[:, 2] - mix[:, 0])[basket]
    tiers = line_tiers(rng, on_shelf, classes, position, world.cal["tier_strength"])
    prod = _products_for(rng, on_shelf, classes, tiers)
    keep = _dedupe(rng, on_shelf, basket, classes, tiers, prod)
    basket, prod = basket[keep], prod[keep]
    counts = np.bincount(basket * 4 + world.prod_class[prod], minlength=b["n"].size * 4)
    label = label_from_counts(counts.reshape(-1, 4), world.cal["label_thresholds"])
    codes = _basket_codes(rng, b["n"], world.cal)
    order = np.lexsort((basket, prod, b["store"][basket]))
    basket, prod = basket[order], prod[order]
    qty, spend = _line_prices(rng, world, prod)
    return _assemble(world, shop_week, week_number, b, codes, label, basket, prod, qty, spend)


def _assemble(world: World, shop_week: int, week_number: int, b: dict[str, np.ndarray],
              codes: dict[str, np.ndarray], label: np.ndarray, basket: np.ndarray, prod: np.ndarray,
              qty: np.ndarray, spend: np.ndarray) -> pl.DataFrame:  # fmt: skip
    start = week_start(shop_week)
    weekday = b["weekday"][basket].astype(np.int64)
    # weeks run Monday..Sunday: weekday 2 (Monday) is the first day, 1 (Sunday) the last
    day_of = [int((start + dt.timedelta(days=(wd - 2) % 7)).strftime("%Y%m%d")) for wd in range(1, 8)]
    date_int = np.asarray(day_of, dtype=np.int64)[weekday - 1]
    cust = b["cust"][basket]
    anon = cust < 0
    store = b["store"][basket]
    seg = b["seg"][basket]
    cust_codes = [*world.cust_code, ""]
    seg2_codes = [*world.cust_seg2, ""]
    cust_idx = np.where(anon, len(world.cust_code), cust)
    return pl.DataFrame({
        s.SHOP_WEEK: np.full(basket.size, shop_week, dtype=np.int64),
        s.SHOP_DATE: date_int, s.SHOP_WEEKDAY: weekday, s.SHOP_HOUR: b["hour"][basket],
        s.QUANTITY: qty, s.SPEND: spend,
        s.PROD_CODE: _gather(world.prod_code, prod),
        **{lvl: _gather(world.prod_levels[i], prod) for i, lvl in enumerate(s.HIERARCHY)},
        s.CUST_CODE: _gather(cust_codes, cust_idx),
        s.CUST_PRICE_SENSITIVITY: _gather(list(SEG_CODES), seg),
        s.CUST_LIFESTAGE: _gather(seg2_codes, cust_idx),
        s.BASKET_ID: _BASKET_ID_BASE + (week_number + 1) % 1000 * _MAX_BASKETS_PER_WEEK + basket,
        s.BASKET_SIZE: _gather(codes["size"][1], codes["size"][0][basket]),
        s.LABEL: _gather(list(LABEL_CODES), label[basket]),
        s.BASKET_TYPE: _gather(codes["type"][1], codes["type"][0][basket]),
        s.BASKET_DOMINANT_MISSION: _gather(codes["mission"][1], codes["mission"][0][basket]),
        s.STORE_CODE: _gather(world.store_code, store),
        s.STORE_FORMAT: _gather(world.store_format, store),
        s.STORE_REGION: _gather(world.store_region, store),
    })  # fmt: skip


# ---------------------------------------------------------------- writing


def write_csv_gz(frame: pl.DataFrame, path: Path) -> None:
    """CSV the way the real files are written (polars quotes only empty strings), gzip-compressed."""
    text = io.BytesIO()
    frame.write_csv(text)  # bytes straight from polars: no str round trip
    compressor = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31)  # wbits 31 = gzip container
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as fh:
        fh.write(compressor.compress(text.getbuffer()))
        fh.write(compressor.flush())
    tmp.replace(path)  # a half-written week never looks like a finished file


def write_time_file(out_dir: Path, weeks: list[int]) -> Path:
    """`time.csv.gz`: shop_week, date_from, date_to (Monday..Sunday), as the real one."""
    starts = [week_start(w) for w in weeks]
    frame = pl.DataFrame({
        "shop_week": weeks,
        "date_from": [int(d.strftime("%Y%m%d")) for d in starts],
        "date_to": [int((d + dt.timedelta(days=6)).strftime("%Y%m%d")) for d in starts],
    })  # fmt: skip
    path = out_dir / "time.csv.gz"
    write_csv_gz(frame, path)
    return path


_WORKER_WORLD: World | None = None


def _init_worker(world: World) -> None:
    global _WORKER_WORLD
    _WORKER_WORLD = world


def _write_week(job: tuple[int, int, int, str]) -> tuple[str, int, int]:
    shop_week, week_number, seed, out_dir = job
    assert _WORKER_WORLD is not None
    frame = week_frame(_WORKER_WORLD, shop_week, week_number, seed)
    path = Path(out_dir) / f"transactions_{shop_week}.csv.gz"
    write_csv_gz(frame, path)
    return str(path), frame.height, int(frame[s.BASKET_ID].n_unique())


def _run_jobs(world: World, jobs: list[tuple[int, int, int, str]], workers: int) -> Iterator[tuple[str, int, int]]:
    if workers <= 1:
        _init_worker(world)
        yield from map(_write_week, jobs)
        return
    # spawn, not fork: forking after polars has started its thread pool can deadlock the children
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker, initargs=(world,)) as pool:
        yield from pool.map(_write_week, jobs)


def _default_workers(customers: int, weeks: int) -> int:
    """One process per core, unless the run is so small (under ~5 M lines) that starting them costs more."""
    return 1 if customers * weeks < 800_000 else cpu_budget()


def generate(out_dir: Path, *, weeks: int, customers: int, seed: int, start_week: int = 200607,
             products: int | None = None, stores: int | None = None,
             progress: Callable[[str], None] | None = None, workers: int | None = None) -> GenerateSummary:  # fmt: skip
    """Write `weeks` consecutive synthetic weeks from `start_week` into `out_dir`, plus `time.csv.gz`.

    Deterministic in `seed` (the worker count does not change the output). `workers` defaults to the
    number of CPUs (1 for small runs); each worker builds one week at a time, so memory stays bounded by a
    week's lines (~0.35 GB per worker for 550 k-line weeks).
    """
    started = time.perf_counter()
    if weeks < 1:
        raise ValueError("weeks must be at least 1")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    week_list = shop_weeks(start_week, weeks)
    world = build_world(customers=customers, seed=seed, weeks=weeks, products=products, stores=stores)
    jobs = [(w, i, seed, str(out_dir)) for i, w in enumerate(week_list)]
    files, lines, baskets = [], 0, 0
    n_workers = min(workers or _default_workers(customers, weeks), weeks)
    for path, n_lines, n_baskets in _run_jobs(world, jobs, n_workers):
        files.append(Path(path))
        lines, baskets = lines + n_lines, baskets + n_baskets
        if progress is not None:
            progress(f"{Path(path).name}: {n_lines:,} lines, {n_baskets:,} baskets")
    files.append(write_time_file(out_dir, week_list))
    return GenerateSummary(out_dir, files, lines, baskets, time.perf_counter() - started)


def main(argv: list[str] | None = None) -> None:
    """`python -m retail_prediction.synthetic --out DIR --weeks N --customers M --seed S` (the CLI proper is
    `retail-prediction generate`)."""
    import argparse

    parser = argparse.ArgumentParser(description="Write synthetic LGSR transaction weeks.")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--weeks", type=int, required=True)
    parser.add_argument("--customers", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--start-week", type=int, default=200607)
    parser.add_argument("--products", type=int)
    parser.add_argument("--stores", type=int)
    parser.add_argument("--workers", type=int)
    args = parser.parse_args(argv)
    summary = generate(
        args.out, weeks=args.weeks, customers=args.customers, seed=args.seed, start_week=args.start_week,
        products=args.products, stores=args.stores, workers=args.workers, progress=print,
    )  # fmt: skip
    rate = summary.lines / summary.seconds
    print(f"{summary.lines:,} lines, {summary.baskets:,} baskets in {summary.seconds:.1f} s ({rate:,.0f} lines/s)")


if __name__ == "__main__":
    main()
