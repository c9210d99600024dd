"""Request and response bodies of the API.

Requests are decoded and validated by msgspec straight from the raw JSON bytes into the contract's typed
structs (`contract.Basket`, ...), in one pass, strictly: a string where a number belongs is a 422, not a
silent conversion (msgspec because it is several times cheaper than pydantic: docs/benchmarks.md). The
compiled featurization then reads the structs' fields directly. The limits that come from the settings
(string length, lines per basket, baskets per batch) and the fields' documentation are added in subclasses
built once per configuration by `request_types(limits)`, so they are checked while decoding and shown in
the OpenAPI schema. What a JSON schema cannot say (a product code
mangled by a spreadsheet, an object-form line whose product_id is not its key) is checked after decoding
by `decoding.py`, which also turns msgspec's errors into 422s naming the field.

Responses are documented with pydantic models (OpenAPI only): the handlers serialise plain dicts with
orjson.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Annotated, Any, NamedTuple, TypeVar, get_type_hints

import msgspec
from pydantic import BaseModel, Field

from ..contract import (
    HIERARCHY_FIELDS,
    Amount,
    Basket,
    BasketBatch,
    BasketContext,
    BasketLine,
    KeyedBasketLine,
)

T = TypeVar("T", bound=msgspec.Struct)

# A decoded body of POST /predict and of POST /predict/batch: instances of the contract's types (subclasses
# that `request_types` builds with the configured limits).
PredictRequest = Basket
BatchRequest = BasketBatch

_HIERARCHY_DOCS = ("finest level (e.g. CL00001)", "level 20 (e.g. DEP00001)", "level 30 (e.g. G00001)",
                   "coarsest level (e.g. D00001)")
_TEXT_FIELDS = {
    "category": "Free-form category; matched against the product hierarchy codes the model knows.",
    **{name: f"Hierarchy code, {doc}." for name, doc in zip(HIERARCHY_FIELDS, _HIERARCHY_DOCS, strict=True)},
}
# Enforced by decoding.check_basket; JSON Schema cannot compare a value with its key, so it is said here.
_KEY_RULE = "Optional `product_id`: when given it must equal the line's key (422 otherwise)."
# When and where the basket was bought: validated; the current model does not use it.
CONTEXT_FIELDS: dict[str, str] = {
    "store_format": "Store format code, e.g. LS, MS, SS, XLS.",
    "store_region": "Store region code, e.g. E02.",
    "hour": "Hour of the day, 0-23.",
    "weekday": "Day of the week as in the data set, 1-7.",
}
EXAMPLE_REQUEST = {
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


class RequestTypes(NamedTuple):
    """The request types of one configuration (subclasses of the contract's), and a decoder for each body."""

    text: Any  # a string field: 1..max_string_length characters
    keyed_line: type[KeyedBasketLine]  # a line of the object form of basket_items (its key is the product code)
    predict: type[Basket]  # body of POST /predict
    batch: type[BasketBatch]  # body of POST /predict/batch
    decode_predict: msgspec.json.Decoder[Basket]
    decode_batch: msgspec.json.Decoder[BasketBatch]


def _described(kind: Any, description: str) -> Any:
    return Annotated[kind, msgspec.Meta(description=description)]


def _subtype(base: type[T], doc: str, fields: list[tuple[Any, ...]], name: str | None = None) -> type[T]:
    """`base` with the fields redefined (limits, descriptions), in the base's order and with its options;
    `name` is the one OpenAPI shows (default: the base's)."""
    return msgspec.defstruct(name or base.__name__, fields, bases=(base,), forbid_unknown_fields=True,
                             namespace={"__doc__": doc}, gc=base.__struct_config__.gc, module=__name__)


def _line_types(text: Any) -> tuple[type[BasketLine], type[KeyedBasketLine]]:
    amounts = [("quantity", _described(Amount, "Units bought (> 0).")),
               ("price", _described(Amount, "Unit price (> 0)."))]
    optional = [(name, _described(text | None, doc), None) for name, doc in _TEXT_FIELDS.items()]
    line = _subtype(BasketLine, "A line in the list form of `basket_items`. `price` is the unit price.",
                    [("product_id", _described(text, "Product code, e.g. PRD0900097.")), *amounts, *optional])
    keyed = _subtype(KeyedBasketLine, "A line in the object form of `basket_items`: the key is the product code. "
                     f"{_KEY_RULE}", [*amounts, ("product_id", _described(text | None, _KEY_RULE), None),
                                      *optional])
    return line, keyed


@functools.cache
def request_types(limits: Limits) -> RequestTypes:
    """The request types with `limits` as native constraints (built once per distinct limits)."""
    text = Annotated[str, msgspec.Meta(min_length=1, max_length=limits.max_string_length)]
    line, keyed = _line_types(text)
    size = msgspec.Meta(min_length=1, max_length=limits.max_basket_lines,
                        description="The basket's lines: an object keyed by product code (a line's optional "
                        "`product_id` must equal its key), or a list.")
    items = Annotated[dict[text, keyed], size] | Annotated[list[line], size]  # type: ignore[valid-type]
    hints = get_type_hints(BasketContext, include_extras=True)
    context = _subtype(BasketContext, "When and where the basket was bought. Validated; the current model does "
                       "not use it.", [(name, _described(hints[name], doc), None)
                                       for name, doc in CONTEXT_FIELDS.items()])
    predict = _subtype(Basket,
        "One basket: lines keyed by product code (or a list of lines), an optional customer and context.", [
            ("basket_items", items),
            ("customer_id", _described(text | None, "Echoed back in the answer; unused by the model."), None),
            ("context", _described(context | None, "When and where the basket was bought."), None),
        ], "PredictRequest")  # fmt: skip
    per_batch = msgspec.Meta(min_length=1, max_length=limits.max_batch_size,
                             description="The baskets, each as in POST /predict.")
    batch = _subtype(BasketBatch, "Several baskets; answers come back in the same order.",
                     [("baskets", Annotated[list[predict], per_batch])], "BatchRequest")  # type: ignore[valid-type]
    return RequestTypes(text, keyed, predict, batch, msgspec.json.Decoder(predict), msgspec.json.Decoder(batch))


def json_schemas(types: RequestTypes, *more: type) -> dict[str, Any]:
    """The request bodies' JSON schemas (and those of `more` structs), as OpenAPI components (name -> schema)."""
    _, components = msgspec.json.schema_components([types.predict, types.batch, *more],
                                                   ref_template="#/components/schemas/{name}")
    components["PredictRequest"]["examples"] = [EXAMPLE_REQUEST]
    return components


# ---------------------------------------------------------------------------------------------
# Responses (documented in OpenAPI; the handlers serialise plain dicts with orjson for speed)


class ExplainedLine(BaseModel):
    product_id: str
    points_to: str = Field(description="The class this line's evidence points to most (its likeliest class).")
    probability: float = Field(description="The line's probability of that class.")
    source: str = Field(description="Where the line's class distribution comes from: `product` (the product "
                        "was seen in training), `hierarchy:<level>` (the finest hierarchy level whose code is "
                        "known), or `price_band` (nothing known but its unit price).")
    known: bool = Field(description="Whether the model saw this product in training.")
    contribution: float = Field(description="(p(line, class) - prior(class)) / lines: the line's share of the "
                                "predicted class's evidence above its prior. Sums over the lines to "
                                "`evidence - prior`.")


class Driver(BaseModel):
    line: int = Field(description="The line's position in `lines` (and in the request).")
    product_id: str
    contribution: float


class Explanation(BaseModel):
    """Why the basket got its class: the evidence the featurization feeds the model, per line (docs/api.md)."""

    class_: str = Field(alias="class", description="The class explained: the predicted one.")
    prior: float = Field(description="The class's share among the training baskets: where every line's "
                         "distribution starts, before its price band, hierarchy and product pull it.")
    evidence: float = Field(description="The mean over the lines of their probability of the class "
                            "(the model's `p_mean_<class>` feature) = prior + sum of the contributions.")
    lines: list[ExplainedLine] = Field(description="Every line, in the request's order.")
    drivers_for: list[Driver] = Field(description="Up to 3 lines with the largest positive contributions.")
    drivers_against: list[Driver] = Field(description="Up to 3 lines with the most negative contributions.")


class Prediction(BaseModel):
    label: str = Field(description="The predicted class: LA, MM, UM or XX.")
    label_name: str = Field(description="The class in words, e.g. 'Mid market'.")
    probabilities: dict[str, float] = Field(description="Probability of every class the model knows.")
    unknown_products: int = Field(description="Lines whose product the model never saw in training.")
    unknown_categories: int = Field(
        description="Lines whose category / hierarchy codes the model does not know.")
    customer_id: str | None = Field(
        description="The request's customer_id, echoed back; null when the request has none. Every answer "
        "(POST /predict, each item of POST /predict/batch) carries it.")
    explanation: Explanation | None = Field(None, description="Only with `?explain=true`: why this class.")


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


