"""One synthetic week: baskets, their class composition, products, labels and the line frame."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from .. import lgsr as s
from .world import LABEL_CODES, MAX_N_BUCKET, SEG_CODES, SIZE_CODES, TIERS, XX, World, week_start

_BASKET_ID_BASE = 994_100_000_000_000  # "99410" + 3-digit week number + 7-digit basket number
_MAX_BASKETS_PER_WEEK = 10_000_000


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
