"""Request and response bodies of the API.

Requests are validated by pydantic straight from the raw JSON bytes, strictly: a string where a number
belongs is a 422, not a silent conversion. They validate into TypedDicts, not model instances: the same
checks in Rust, about twice as fast on a batch of a thousand baskets (docs/benchmarks.md), and the
handlers only ever read the fields. The limits that come from the settings (string length, lines per
basket, baskets per batch) are native pydantic constraints of types built once per configuration by
`request_models(limits)`, so they are checked in Rust and shown in the OpenAPI schema.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Annotated, Any, NamedTuple, NotRequired

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    StringConstraints,
    Tag,
    TypeAdapter,
)

# pydantic needs typing_extensions' TypedDict before Python 3.12.
from typing_extensions import TypedDict

from ..schema import SCIENTIFIC_ID_PATTERN

# Quantities and unit prices far beyond any till: refused so that spend can never overflow a float.
MAX_AMOUNT = 1e6
# What a spreadsheet makes of a long numeric code (9.94E+14): the same rule as the file loader's.
_SCIENTIFIC = re.compile(SCIENTIFIC_ID_PATTERN)

# allow_inf_nan=False and the bounds make every accepted amount finite and positive.
Amount = Annotated[float, Field(gt=0, le=MAX_AMOUNT, allow_inf_nan=False)]

# A validated body of POST /predict (see `request_models` for its fields) and of POST /predict/batch.
PredictRequest = dict[str, Any]
BatchRequest = dict[str, Any]

# The hierarchy codes a line may carry, finest level first (the feature spec's order).
HIERARCHY_FIELDS = ("prod_code_10", "prod_code_20", "prod_code_30", "prod_code_40")
_TEXT_FIELDS = {
    "category": "Free-form category; matched against the product hierarchy codes the model knows.",
    "prod_code_10": "Hierarchy code, finest level (e.g. CL00001).",
    "prod_code_20": "Hierarchy code, level 20 (e.g. DEP00001).",
    "prod_code_30": "Hierarchy code, level 30 (e.g. G00001).",
    "prod_code_40": "Hierarchy code, coarsest level (e.g. D00001).",
}
_CONTEXT_CODE = Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,16}$")]
# When and where the basket was bought: validated; the current model does not use it.
CONTEXT_FIELDS: dict[str, Any] = {
    "store_format": (_CONTEXT_CODE, "Store format code, e.g. LS, MS, SS, XLS."),
    "store_region": (_CONTEXT_CODE, "Store region code, e.g. E02."),
    "hour": (Annotated[int, Field(ge=0, le=23)], "Hour of the day, 0-23."),
    "weekday": (Annotated[int, Field(ge=1, le=7)], "Day of the week as in the data set, 1-7."),
}
_EXAMPLE = {
    "basket_items": {
        "P1001": {"product_id": "P1001", "quantity": 2, "price": 10.99, "category": "grocery"},
        "P2002": {"product_id": "P2002", "quantity": 1, "price": 25.50, "category": "electronics"},
    },
    "customer_id": "CUST123",
}


@dataclass(frozen=True)
class Limits:
    """The configurable input limits (from the settings)."""

    max_string_length: int = 100
    max_basket_lines: int = 500
    max_batch_size: int = 1000


def request_lines(request: PredictRequest) -> list[tuple[str, dict[str, Any]]]:
    """(product code, line) pairs of a validated basket, whichever form its lines came in."""
    items = request["basket_items"]
    if isinstance(items, list):
        return [(line["product_id"], line) for line in items]
    return list(items.items())


def _plain_id(value: str) -> str:
    if _SCIENTIFIC.match(value):
        raise ValueError(f"{value!r} looks like a spreadsheet-mangled number, not a product code")
    return value


def _items_form(value: Any) -> str:
    # Anything that is not a list is validated as the object form, so the error says "object".
    return "list" if isinstance(value, list) else "dict"


def _check_keys(items: Any) -> Any:
    if isinstance(items, dict):
        for key, line in items.items():
            _plain_id(key)
            if line.get("product_id") and line["product_id"] != key:
                raise ValueError(f"line {key!r}: product_id {line['product_id']!r} differs from its key")
    return items


def _typed_dict(name: str, doc: str, fields: dict[str, Any], **config: Any) -> Any:
    cls = TypedDict(name, fields)  # type: ignore[operator]
    cls.__doc__ = doc
    cls.__pydantic_config__ = ConfigDict(extra="forbid", strict=True, **config)
    return cls


def _optional(kind: Any, description: str) -> Any:
    return NotRequired[Annotated[kind | None, Field(description=description)]]


def _line_types(text: Any) -> tuple[Any, Any]:
    product_id = Annotated[text, AfterValidator(_plain_id)]
    common: dict[str, Any] = {
        "quantity": Annotated[Amount, Field(description="Units bought (> 0).")],
        "price": Annotated[Amount, Field(description="Unit price (> 0).")],
        **{name: _optional(text, doc) for name, doc in _TEXT_FIELDS.items()},
    }
    line = _typed_dict("BasketLine", "A line in the list form of `basket_items`. `price` is the unit price.", {
        "product_id": Annotated[product_id, Field(description="Product code, e.g. PRD0900097.")], **common})
    keyed = _typed_dict(
        "KeyedBasketLine", "A line in the object form of `basket_items`: the key is the product code.",
        {"product_id": _optional(product_id, "Optional: equal to the key."), **common})
    return line, keyed


class RequestModels(NamedTuple):
    predict: TypeAdapter[Any]
    batch: TypeAdapter[Any]


@functools.cache
def request_models(limits: Limits) -> RequestModels:
    """The request types with `limits` as native constraints (built once per distinct limits)."""
    text = Annotated[str, StringConstraints(min_length=1, max_length=limits.max_string_length)]
    line, keyed = _line_types(text)
    size = Field(min_length=1, max_length=limits.max_basket_lines)
    forms = Annotated[dict[str, keyed], size, Tag("dict")] | Annotated[list[line], size, Tag("list")]  # type: ignore[valid-type]
    items = Annotated[forms, Discriminator(_items_form), AfterValidator(_check_keys)]
    context = _typed_dict(
        "BasketContext", "When and where the basket was bought. Validated; the current model does not use it.",
        {name: _optional(kind, doc) for name, (kind, doc) in CONTEXT_FIELDS.items()})
    predict = _typed_dict(
        "PredictRequest",
        "One basket: lines keyed by product code (or a list of lines), an optional customer and context.", {
            "basket_items": Annotated[items, Field(
                description="The basket's lines: an object keyed by product code, or a list.")],
            "customer_id": _optional(text, "Echoed back in batch answers; unused by the model."),
            "context": _optional(context, "When and where the basket was bought."),
        }, json_schema_extra={"examples": [_EXAMPLE]})  # fmt: skip
    per_batch = Field(min_length=1, max_length=limits.max_batch_size)
    baskets = Annotated[list[predict], per_batch, Field(description="The baskets, each as in POST /predict.")]  # type: ignore[valid-type]
    batch = _typed_dict("BatchRequest", "Several baskets; answers come back in the same order.", {"baskets": baskets})
    return RequestModels(TypeAdapter(predict), TypeAdapter(batch))


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


