"""The contract every layer shares: the class labels, the product hierarchy and a basket line's fields.

One definition, imported by reading (training side), the featurization, serving and the API, so a renamed
field fails an import or a type check, not a request at run time. Besides the standard library, only msgspec (the
request structs) and NumPy (the columnar line table).
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Annotated, NamedTuple

import msgspec
import numpy as np

# The labels the data set defines, with readable names for people (the model learns its own class list
# from the training data; these are the values a file may legally contain).
LABELS: tuple[str, ...] = ("LA", "MM", "UM", "XX")
LABEL_NAMES: dict[str, str] = {
    "LA": "Less affluent",
    "MM": "Mid market",
    "UM": "Up market",
    "XX": "Unclassified",
}

# The product hierarchy's columns in the data set, finest level first (each level strictly nests in the next).
HIERARCHY: tuple[str, ...] = ("PROD_CODE_10", "PROD_CODE_20", "PROD_CODE_30", "PROD_CODE_40")

# What a spreadsheet makes of a long numeric identifier: 9.94E+14, 9,94E+14, 9.94e14. Refused in files and
# in requests alike, never merged into one basket.
SCIENTIFIC_ID_PATTERN = r"^\s*[0-9]+([.,][0-9]+)?[eE][+]?[0-9]+\s*$"


def label_name(label: str) -> str:
    """A readable name for a class label (the label itself when the contract does not know it)."""
    return LABEL_NAMES.get(label, label)


# The attribute of a client's line that holds each hierarchy level's code: the data set's column name in
# lower case (PROD_CODE_10 -> prod_code_10), as in the API's request body.
@functools.cache
def hierarchy_fields(level_names: tuple[str, ...]) -> tuple[str, ...]:
    # Interned: attribute lookups by an interned name hit CPython's type attribute cache.
    return tuple(sys.intern(name.lower()) for name in level_names)


HIERARCHY_FIELDS = hierarchy_fields(HIERARCHY)


# ---- a client's basket, as the API decodes it (msgspec structs: decoded and checked in one pass) ----
# The constraints that are part of the contract live here; the configurable limits (string lengths, lines
# per basket, baskets per batch) are added by `api.schemas.request_types`, in subclasses of these types.

# Quantities and unit prices far beyond any till: refused so that spend can never overflow a float. The
# bounds also make every accepted amount finite and positive (JSON has no NaN; 1e999 is out of range).
MAX_AMOUNT = 1e6
Amount = Annotated[float, msgspec.Meta(gt=0, le=MAX_AMOUNT)]
ContextCode = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]{1,16}$")]


class BasketLine(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """A line of the list form of `basket_items`, and the line Python callers build (`BasketLine.of`). No
    garbage-collector tracking: strings and floats only."""

    product_id: str
    quantity: Amount
    price: Amount  # unit price
    category: str | None = None
    prod_code_10: str | None = None
    prod_code_20: str | None = None
    prod_code_30: str | None = None
    prod_code_40: str | None = None

    @classmethod
    def of(cls, product_id: str, quantity: float, price: float, category: str | None = None,
           hierarchy: Sequence[str | None] = ()) -> BasketLine:
        """A line with its hierarchy codes given in order, finest first."""
        return cls(product_id, quantity, price, category, *hierarchy)


class KeyedBasketLine(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """A line of the object form of `basket_items`: its key is the product code; `product_id`, when given,
    must equal it."""

    quantity: Amount
    price: Amount
    product_id: str | None = None
    category: str | None = None
    prod_code_10: str | None = None
    prod_code_20: str | None = None
    prod_code_30: str | None = None
    prod_code_40: str | None = None


class BasketContext(msgspec.Struct, forbid_unknown_fields=True):
    """When and where the basket was bought (validated; the current model does not use it)."""

    store_format: ContextCode | None = None
    store_region: ContextCode | None = None
    hour: Annotated[int, msgspec.Meta(ge=0, le=23)] | None = None
    weekday: Annotated[int, msgspec.Meta(ge=1, le=7)] | None = None


class Basket(msgspec.Struct, forbid_unknown_fields=True):
    """One basket: lines keyed by product code (or a list of lines), an optional customer and context."""

    basket_items: dict[str, KeyedBasketLine] | list[BasketLine]
    customer_id: str | None = None
    context: BasketContext | None = None


class BasketBatch(msgspec.Struct, forbid_unknown_fields=True):
    """Several baskets; answers come back in the same order."""

    baskets: list[Basket]


# A line as the featurization reads it (the same attributes in both forms: `LINE_FIELDS`).
Line = BasketLine | KeyedBasketLine
LINE_FIELDS: tuple[str, ...] = BasketLine.__struct_fields__
if set(LINE_FIELDS) != set(KeyedBasketLine.__struct_fields__) or LINE_FIELDS[4:] != HIERARCHY_FIELDS:
    raise ImportError("BasketLine and KeyedBasketLine must have the same fields, the hierarchy's finest first")


# ---- the columnar form: many baskets' lines in one flat table (files, batch scoring, training) ----
class Codes(NamedTuple):
    """A string column, dictionary-encoded: `values[index[i]]` is line i's code; index -1 = missing.
    (A named tuple: cheap to build, where a frozen dataclass costs several times more.)"""

    values: np.ndarray
    index: np.ndarray

    @classmethod
    def from_strings(cls, strings: Sequence[str | None] | np.ndarray) -> Codes:
        """One value per line (no dictionary building); None or "" = missing."""
        values = np.array(["" if v is None else str(v) for v in strings], dtype=object)
        index = np.arange(values.size, dtype=np.int32)
        index[values == ""] = -1
        return cls(values, index)

    def take(self, lines: np.ndarray | slice) -> Codes:
        return Codes(self.values, self.index[lines])


@dataclass(frozen=True)
class Lines:
    """Transaction lines of one or many baskets. `basket[i]` in 0..n_baskets-1 is line i's basket."""

    basket: np.ndarray
    n_baskets: int
    product: Codes
    quantity: np.ndarray
    spend: np.ndarray
    hierarchy: tuple[Codes | None, ...] = ()  # finest level first, as in the feature spec

    @property
    def n_lines(self) -> int:
        return int(self.basket.shape[0])

    def take(self, lines: np.ndarray | slice) -> Lines:
        """A subset of lines (basket numbering unchanged); a slice gives views, not copies."""
        return Lines(
            basket=self.basket[lines], n_baskets=self.n_baskets, product=self.product.take(lines),
            quantity=self.quantity[lines], spend=self.spend[lines],
            hierarchy=tuple(None if h is None else h.take(lines) for h in self.hierarchy),
        )

    def basket_range(self, start: int, stop: int) -> Lines:
        """Baskets start..stop-1, renumbered from 0, as views: the lines must be grouped by basket (sorted)."""
        lo, hi = np.searchsorted(self.basket, [start, stop])
        run = slice(int(lo), int(hi))
        return replace(self.take(run), basket=self.basket[run] - start, n_baskets=stop - start)

    def grouped(self) -> bool:
        return self.n_lines < 2 or bool((self.basket[1:] >= self.basket[:-1]).all())
