"""The Open Inference Protocol (KServe v2 / Triton REST) beside our own API, for KServe and tritonclient.

A batch of baskets comes in long form, one row per line (as MLServer's pandas content type has it): BYTES
`basket_id`, `product_id`, numeric `quantity` and `price`, optional BYTES `category` and hierarchy codes (an
empty string = not given). Lines with the same basket_id form a basket, in order of first appearance. The
baskets are checked with /predict/batch's limits and wording and scored by the same
`PredictionService.predict_batch`, so the answers are /predict's. Errors are `{"error": message}` (400, 404,
413, 503), as the protocol and KServe answer them.
"""

from __future__ import annotations

from array import array
from collections.abc import Set as AbstractSet
from itertools import repeat
from typing import Any

from fastapi import FastAPI, Request
from starlette.responses import Response

from .. import __version__
from ..contract import HIERARCHY_FIELDS, MAX_AMOUNT, Basket, BasketLine
from ..serving.model_manager import LoadedModel
from ..serving.service import Answer, ModelNotReady, PredictionService
from ..serving.settings import Settings
from .body import read_body
from .decoding import looks_mangled, plain
from .errors import ApiError
from .oip_tensors import (
    EXTENSIONS,
    HEADER_LENGTH,
    NUMERIC,
    InferRequest,
    Output,
    bad,
    binary_numbers,
    encode_outputs,
    numbers,
    parse_request,
    strings,
)
from .routes import json_response
from .routing import Declare
from .schemas import Limits
from .wire import TensorBaskets

REQUIRED = ("basket_id", "product_id", "quantity", "price")
TAGS = ["open inference protocol"]
_ERROR_BODY = {"application/json": {"schema": {"type": "object", "properties": {"error": {"type": "string"}},
                                               "required": ["error"]}}}
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"description": text, "content": _ERROR_BODY}
    for code, text in [(400, "What the client sent is refused (the message names the input)"),
                       (404, "No such model or version"), (413, "Body too large"), (503, "No model loaded yet")]
}
_INFER_BODY = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": {"$ref": "#/components/schemas/InferRequest"}}}}}
OPTIONAL = ("category", *HIERARCHY_FIELDS)
OUTPUTS = ("basket_id", "label", "probabilities")
# Each input the model takes, and whether it is text (BYTES) or a number: the required ones first, then the
# codes in BasketLine's order (as `wire.TensorBaskets` takes them).
_INPUT_TEXT = {"basket_id": True, "product_id": True, "quantity": False, "price": False,
               **dict.fromkeys(OPTIONAL, True)}
_CONTENT_ENCODING = b"content-encoding"


def _error(status: int, message: str) -> Response:
    return json_response({"error": message}, status)


def _protocol_errors(endpoint: Any) -> Any:
    """The endpoint with the API's errors answered in the protocol's shape (a 422 of ours is a 400 there)."""

    async def run(request: Request) -> Response:
        try:
            return await endpoint(request)
        except ApiError as exc:
            return _error(400 if exc.status == 422 else exc.status, exc.message)
        except ModelNotReady as exc:
            return _error(503, str(exc))

    run.__doc__, run.__name__ = endpoint.__doc__, endpoint.__name__
    return run


def tensor_baskets(limits: Limits) -> TensorBaskets:
    """The compiled pass from the inputs to baskets (`wire.TensorBaskets`) with /predict/batch's limits."""
    return TensorBaskets(tuple(_INPUT_TEXT), tuple(_INPUT_TEXT.values()), NUMERIC, binary_numbers, BasketLine,
                         Basket, looks_mangled, limits.max_string_length, limits.max_batch_size,
                         limits.max_basket_lines, MAX_AMOUNT)


def baskets_from(request: InferRequest, raw: dict[str, memoryview], limits: Limits,
                 compiled: TensorBaskets | None = None) -> tuple[list[str], list[Basket]]:
    """The inputs as baskets (first-appearance order) and their ids, checked as /predict/batch checks them:
    in one compiled pass (`compiled`, else `tensor_baskets(limits)`) when every input is well-formed and
    every rule holds, else by `_checked_baskets`, which names what is wrong."""
    grouped = (tensor_baskets(limits) if compiled is None else compiled)(request.inputs, raw)
    return _checked_baskets(request, raw, limits) if grouped is None else grouped


def _checked_baskets(request: InferRequest, raw: dict[str, memoryview],
                     limits: Limits) -> tuple[list[str], list[Basket]]:
    """`baskets_from`, checking each rule in turn so that the first one broken is named."""
    inputs = {}
    for tensor in request.inputs:
        if tensor.name not in REQUIRED and tensor.name not in OPTIONAL:
            raise bad(f"unexpected inference input '{tensor.name}'; the model takes {', '.join(REQUIRED + OPTIONAL)}")
        if tensor.name in inputs:
            raise bad(f"input '{tensor.name}' is given twice")
        inputs[tensor.name] = tensor
    missing = [name for name in REQUIRED if name not in inputs]
    if missing:
        raise bad(f"missing inference input(s): {', '.join(missing)}")
    text = limits.max_string_length
    ids = strings(inputs["basket_id"], raw.get("basket_id"), text)
    n = len(ids)
    if n == 0:
        raise bad("input 'basket_id': no lines")
    if n > limits.max_batch_size * limits.max_basket_lines:
        raise bad(f"{n} lines: at most {limits.max_batch_size} baskets of {limits.max_basket_lines} lines")
    products = strings(inputs["product_id"], raw.get("product_id"), text)
    columns = {"quantity": numbers(inputs["quantity"], raw.get("quantity")),
               "price": numbers(inputs["price"], raw.get("price"))}
    optional = {name: strings(inputs[name], raw.get(name), text, allow_empty=True) for name in OPTIONAL
                if name in inputs}
    for name, values in {"product_id": products, **columns, **optional}.items():
        if len(values) != n:
            raise bad(f"input '{name}' has {len(values)} elements; basket_id has {n}")
    for name, values in columns.items():
        _check_amounts(name, values)
    for i, product in enumerate(products):
        if looks_mangled(product):
            raise bad(f"input 'product_id' element {i}: {product!r} looks like a spreadsheet-mangled number, "
                      "not a product code")
    # Whole columns at C speed: "" -> None per code column, one BasketLine per row by map.
    codes = [[code or None for code in optional[name]] if name in optional else repeat(None) for name in OPTIONAL]
    lines = map(BasketLine, products, columns["quantity"], columns["price"], *codes)
    grouped: dict[str, list[BasketLine]] = {}
    for basket_id, line in zip(ids, lines, strict=True):  # first-appearance order (dicts keep insertion order)
        group = grouped.get(basket_id)
        if group is None:
            grouped[basket_id] = [line]
        else:
            group.append(line)
    if len(grouped) > limits.max_batch_size:
        raise bad(f"input 'basket_id': more than {limits.max_batch_size} baskets (MAX_BATCH_SIZE)")
    if max(map(len, grouped.values())) > limits.max_basket_lines:
        basket_id = next(k for k, v in grouped.items() if len(v) > limits.max_basket_lines)
        raise bad(f"basket {basket_id!r}: more than {limits.max_basket_lines} lines (MAX_BASKET_LINES)")
    return list(grouped), [Basket(basket_items=lines) for lines in grouped.values()]


def _check_amounts(name: str, values: list[float]) -> None:
    """Every amount greater than 0 and at most MAX_AMOUNT (NaN and infinities fail both), as the contract's
    `Amount` says; the message is /predict's."""
    if all(0 < v <= MAX_AMOUNT for v in values):
        return
    i, value = next((i, v) for i, v in enumerate(values) if not 0 < v <= MAX_AMOUNT)
    rule = "Expected `float` > 0.0" if not value > 0 else f"Expected `float` <= {MAX_AMOUNT}"
    raise bad(f"input '{name}' element {i}: {plain(rule)}")


_NO_BINARY: frozenset[str] = frozenset()
_ALL_BINARY = frozenset(OUTPUTS)


def _binary_outputs(request: InferRequest) -> tuple[tuple[str, ...], AbstractSet[str]]:
    """The outputs to send (all, or those requested) and which of them go as binary data."""
    every = bool(request.parameters and request.parameters.get("binary_data_output"))
    if request.outputs is None:
        return OUTPUTS, _ALL_BINARY if every else _NO_BINARY
    names, binary = [], set()
    for output in request.outputs:
        if output.name not in OUTPUTS:
            raise bad(f"unexpected inference output '{output.name}'; the model gives {', '.join(OUTPUTS)}")
        names.append(output.name)
        if (output.parameters or {}).get("binary_data", every):
            binary.add(output.name)
    return tuple(names), binary


def _outputs(names: tuple[str, ...], ids: list[str], answers: list[Answer], classes: tuple[str, ...]) -> list[Output]:
    """The outputs asked for; probabilities row-major in `classes` order, rounded to FP32."""
    n = len(ids)
    outputs = []
    for name in names:
        if name == "basket_id":
            outputs.append(Output(name, "BYTES", [n], ids))
        elif name == "label":
            outputs.append(Output(name, "BYTES", [n], [a["label"] for a in answers]))
        else:
            probabilities = array("f", [a["probabilities"][c] for a in answers for c in classes]).tolist()
            outputs.append(Output(name, "FP32", [n, len(classes)], probabilities))
    return outputs


def register_oip(app: FastAPI, service: PredictionService, settings: Settings, limits: Limits) -> None:
    """Declare the protocol's endpoints. The configured model name gets exact paths (the router's fast
    index); any other name reaches the templated ones and gets a 404."""
    api = Declare(app)
    name = settings.oip_model_name
    compiled = tensor_baskets(limits)

    def model_for(request: Request) -> LoadedModel:
        params = request.path_params
        asked = params.get("model", name)
        if asked != name:
            raise ApiError(404, "not_found", f"model '{asked}' is not served here (this server serves '{name}')")
        model = service.model()
        version = params.get("version")
        if version is not None and version != model.predictor.version:
            raise ApiError(404, "not_found", f"model '{name}' version '{version}' is not loaded "
                                             f"(loaded: '{model.predictor.version}')")
        return model

    @api.get("/v2", tags=TAGS)
    @_protocol_errors
    async def server_metadata(request: Request) -> Response:
        """Server metadata: name, version and the protocol extensions supported."""
        return json_response({"name": "retail-prediction", "version": __version__, "extensions": EXTENSIONS})

    @api.get("/v2/health/live", tags=TAGS)
    @_protocol_errors
    async def live(request: Request) -> Response:
        """Liveness, as /health."""
        return json_response({"live": True})

    @api.get("/v2/health/ready", tags=TAGS, responses={503: ERRORS[503]})
    @_protocol_errors
    async def ready(request: Request) -> Response:
        """Readiness, as /ready: 503 until a model is loaded, and while the server shuts down."""
        up = service.manager.current is not None and not service.draining
        return json_response({"ready": up}, 200 if up else 503)

    async def metadata(request: Request) -> Response:
        """Model metadata: versions, inputs and outputs with datatypes and shapes, the class order."""
        model = model_for(request)
        classes = list(model.predictor.classes)
        line = [-1]
        return json_response({
            "name": name, "versions": [model.predictor.version], "platform": "onnxruntime_onnx",
            "inputs": [{"name": "basket_id", "datatype": "BYTES", "shape": line},
                       {"name": "product_id", "datatype": "BYTES", "shape": line},
                       {"name": "quantity", "datatype": "FP64", "shape": line},
                       {"name": "price", "datatype": "FP64", "shape": line},
                       *({"name": n, "datatype": "BYTES", "shape": line, "parameters": {"optional": True}}
                         for n in OPTIONAL)],
            "outputs": [{"name": "basket_id", "datatype": "BYTES", "shape": line},
                        {"name": "label", "datatype": "BYTES", "shape": line},
                        {"name": "probabilities", "datatype": "FP32", "shape": [-1, len(classes)]}],
            "parameters": {"classes": classes},
        })

    async def model_ready(request: Request) -> Response:
        """Whether the model serves: 200 with ready true, or 503."""
        try:
            model_for(request)
        except ModelNotReady:
            return json_response({"name": name, "ready": False}, 503)
        return json_response({"name": name, "ready": not service.draining}, 503 if service.draining else 200)

    async def infer(request: Request) -> Response:
        """Classify the baskets of a long-form batch (JSON, or binary tensor data)."""
        model = model_for(request)
        header_length = None
        for header, value in request.scope["headers"]:
            if header == HEADER_LENGTH and header_length is None:
                header_length = value
            elif header == _CONTENT_ENCODING and value.strip().lower() != b"identity":
                raise bad(f"Content-Encoding {value.decode('latin-1')[:20]!r} is not supported: send the body "
                          "uncompressed")
        parsed, raw = parse_request(await read_body(request, settings.max_body_bytes, require_json=False),
                                    header_length)
        names, binary = _binary_outputs(parsed)
        ids, baskets = baskets_from(parsed, raw, limits, compiled)
        # One basket is what /predict scores: micro-batched with its neighbours under load.
        answers = [await service.predict(model, baskets[0])] if len(baskets) == 1 else \
            await service.predict_batch(model, baskets)
        request.scope["model_version"] = version = model.predictor.version
        body, json_size = encode_outputs(_outputs(names, ids, answers, model.predictor.classes), binary, name,
                                         version, parsed.id)
        if json_size is None:
            return Response(body, media_type="application/json")
        return Response(body, media_type="application/octet-stream",
                        headers={"Inference-Header-Content-Length": str(json_size)})

    for prefix in (f"/v2/models/{name}", "/v2/models/{model}", f"/v2/models/{name}/versions/{{version}}",
                   "/v2/models/{model}/versions/{version}"):
        shown = "{model}" not in prefix  # the templated twins only answer 404s for other names
        api.get(prefix, tags=TAGS, responses=ERRORS, include_in_schema=shown)(_protocol_errors(metadata))
        api.get(f"{prefix}/ready", tags=TAGS, responses=ERRORS, include_in_schema=shown)(_protocol_errors(model_ready))
        api.post(f"{prefix}/infer", tags=TAGS, responses=ERRORS, include_in_schema=shown,
                 openapi_extra=_INFER_BODY)(_protocol_errors(infer))
