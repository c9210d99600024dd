"""Request and response bodies of the API.

Requests are validated by pydantic straight from the raw JSON bytes, strictly: a string where a number
belongs is a 422, not a silent conversion. The limits that come from the settings (string length, lines
per basket, baskets per batch) are native pydantic constraints of classes built once per configuration by
`request_models(limits)`, so they are checked in Rust and shown in the OpenAPI schema. The plain
classes below (`PredictRequest`, ...) describe the shapes for type annotations; validation always goes
through `request_models`.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Annotated, Any, NamedTuple

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    StringConstraints,
    Tag,
    create_model,
)

from ..schema import SCIENTIFIC_ID_PATTERN

# Quantities and unit prices far beyond any till: refused so that spend can never overflow a float.
MAX_AMOUNT = 1e6
# What a spreadsheet makes of a long numeric code (9.94E+14): the same rule as the file loader's.
_SCIENTIFIC = re.compile(SCIENTIFIC_ID_PATTERN)
_STRICT = ConfigDict(extra="forbid", strict=True, frozen=True)

# allow_inf_nan=False and the bounds make every accepted amount finite and positive.
Amount = Annotated[float, Field(gt=0, le=MAX_AMOUNT, allow_inf_nan=False)]


@dataclass(frozen=True)
class Limits:
    """The configurable input limits (from the settings)."""

    max_string_length: int = 100
    max_basket_lines: int = 500
    max_batch_size: int = 1000


def _plain_id(value: str) -> str:
    if _SCIENTIFIC.match(value):
        raise ValueError(f"{value!r} looks like a spreadsheet-mangled number, not a product code")
    return value


# ---------------------------------------------------------------------------------------------
# Shapes (for annotations; unconstrained)


class LineFields(BaseModel):
    """What every basket line holds besides its product code. `price` is the unit price."""

    model_config = _STRICT

    quantity: Amount = Field(description="Units bought (> 0).")
    price: Amount = Field(description="Unit price (> 0).")
    category: str | None = None
    prod_code_10: str | None = None
    prod_code_20: str | None = None
    prod_code_30: str | None = None
    prod_code_40: str | None = None

    def hierarchy(self) -> tuple[str | None, ...]:
        return (self.prod_code_10, self.prod_code_20, self.prod_code_30, self.prod_code_40)


class BasketLine(LineFields):
    """A line in the list form of `basket_items`."""

    product_id: str


class KeyedBasketLine(LineFields):
    """A line in the object form of `basket_items`: the key is the product code."""

    product_id: str | None = None


class BasketContext(BaseModel):
    """When and where the basket was bought. Validated; the current model does not use it."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    store_format: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,16}$")] | None = Field(
        None, description="Store format code, e.g. LS, MS, SS, XLS.")
    store_region: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,16}$")] | None = Field(
        None, description="Store region code, e.g. E02.")
    hour: Annotated[int, Field(ge=0, le=23)] | None = Field(None, description="Hour of the day, 0-23.")
    weekday: Annotated[int, Field(ge=1, le=7)] | None = Field(
        None, description="Day of the week as in the data set, 1-7.")


class PredictRequest(BaseModel):
    """One basket: lines keyed by product code (or a list of lines), an optional customer and context."""

    model_config = ConfigDict(
        extra="forbid", strict=True, frozen=True,
        json_schema_extra={"examples": [{
            "basket_items": {
                "P1001": {"product_id": "P1001", "quantity": 2, "price": 10.99, "category": "grocery"},
                "P2002": {"product_id": "P2002", "quantity": 1, "price": 25.50, "category": "electronics"},
            },
            "customer_id": "CUST123",
        }]},
    )  # fmt: skip

    basket_items: dict[str, KeyedBasketLine] | list[BasketLine]
    customer_id: str | None = None
    context: BasketContext | None = None

    def lines(self) -> list[tuple[str, LineFields]]:
        """(product code, line) pairs, whichever form the basket came in."""
        if isinstance(self.basket_items, list):
            return [(line.product_id, line) for line in self.basket_items]
        return [(key, line) for key, line in self.basket_items.items()]


class BatchRequest(BaseModel):
    """Several baskets; answers come back in the same order."""

    model_config = _STRICT

    baskets: list[PredictRequest]


# ---------------------------------------------------------------------------------------------
# Constrained classes, one set per configuration


class RequestModels(NamedTuple):
    predict: type[PredictRequest]
    batch: type[BatchRequest]


_TEXT_FIELDS = {
    "category": "Free-form category; matched against the product hierarchy codes the model knows.",
    "prod_code_10": "Hierarchy code, finest level (e.g. CL00001).",
    "prod_code_20": "Hierarchy code, level 20 (e.g. DEP00001).",
    "prod_code_30": "Hierarchy code, level 30 (e.g. G00001).",
    "prod_code_40": "Hierarchy code, coarsest level (e.g. D00001).",
}


def _items_form(value: Any) -> str:
    # Anything that is not a list is validated as the object form, so the error says "object".
    return "list" if isinstance(value, list) else "dict"


Items = dict[str, KeyedBasketLine] | list[BasketLine]


def _check_keys(items: Items) -> Items:
    if isinstance(items, dict):
        for key, line in items.items():
            _plain_id(key)
            if line.product_id and line.product_id != key:
                raise ValueError(f"line {key!r}: product_id {line.product_id!r} differs from its key")
    return items


def _line_models(text: Any) -> tuple[type[BasketLine], type[KeyedBasketLine]]:
    product_id = Annotated[text, AfterValidator(_plain_id)]
    texts: dict[str, Any] = {name: (text | None, Field(None, description=doc)) for name, doc in _TEXT_FIELDS.items()}
    line = create_model("BasketLine", __base__=BasketLine, __doc__=BasketLine.__doc__,
                        product_id=(product_id, Field(description="Product code, e.g. PRD0900097.")), **texts)
    keyed = create_model("KeyedBasketLine", __base__=KeyedBasketLine, __doc__=KeyedBasketLine.__doc__,
                         product_id=(product_id | None, Field(None, description="Optional: equal to the key.")),
                         **texts)
    return line, keyed


@functools.cache
def request_models(limits: Limits) -> RequestModels:
    """The request classes with `limits` as native constraints (built once per distinct limits)."""
    text = Annotated[str, StringConstraints(min_length=1, max_length=limits.max_string_length)]
    line, keyed = _line_models(text)
    size = Field(min_length=1, max_length=limits.max_basket_lines)
    forms = Annotated[dict[str, keyed], size, Tag("dict")] | Annotated[list[line], size, Tag("list")]  # type: ignore[valid-type]
    items = Annotated[forms, Discriminator(_items_form), AfterValidator(_check_keys)]
    predict = create_model(
        "PredictRequest", __base__=PredictRequest, __doc__=PredictRequest.__doc__,
        basket_items=(items, Field(description="The basket's lines: an object keyed by product code, or a list.")),
        customer_id=(text | None, Field(None, description="Echoed back in batch answers; unused by the model.")),
    )  # fmt: skip
    per_batch = Field(min_length=1, max_length=limits.max_batch_size)
    baskets = Annotated[list[predict], per_batch]  # type: ignore[valid-type]
    batch = create_model("BatchRequest", __base__=BatchRequest, __doc__=BatchRequest.__doc__,
                         baskets=(baskets, Field(description="The baskets, each as in POST /predict.")))
    return RequestModels(predict, batch)


# ---------------------------------------------------------------------------------------------
# Responses (documented in OpenAPI; the handlers serialise plain dicts with orjson for speed)


class Prediction(BaseModel):
    label: str = Field(description="The predicted class: LA, MM, UM or XX.")
    label_name: str = Field(description="The class in words, e.g. 'Mid market'.")
    probabilities: dict[str, float] = Field(description="Probability of every class the model knows.")
    unknown_products: int = Field(description="Lines whose product the model never saw in training.")
    unknown_categories: int = Field(
        description="Lines whose category / hierarchy codes the model does not know.")
    customer_id: str | None = None


class PredictResponse(Prediction):
    model_version: str
    request_id: str


class BatchResponse(BaseModel):
    predictions: list[Prediction]
    model_version: str
    request_id: str


class ErrorBody(BaseModel):
    code: str = Field(description="Stable machine-readable code, e.g. validation_error, model_not_ready.")
    message: str = Field(description="What went wrong, naming the field where there is one.")
    details: Any = Field(None, description="Per-field errors or other context.")


class ErrorResponse(BaseModel):
    error: ErrorBody


class HealthResponse(BaseModel):
    status: str


class ReadyResponse(BaseModel):
    status: str
    model_version: str


