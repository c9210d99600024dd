"""The inference answer's body (`oip_tensors.encode_outputs`): the protocol's JSON, keys in its order, `id`
only when the request had one, and the binary tensor data extension's framing."""

from __future__ import annotations

import json
import struct
from array import array

from retail_prediction.api.oip import OUTPUTS, _outputs
from retail_prediction.api.oip_tensors import encode_outputs

CLASSES = ("LA", "MM", "UM", "XX")
ANSWERS = [{"label": "MM", "probabilities": {"LA": 0.1, "MM": 0.6, "UM": 0.2, "XX": 0.1}},
           {"label": "LA", "probabilities": {"XX": 0.05, "UM": 0.05, "MM": 0.1, "LA": 0.8}}]
IDS = ["b0", "b1"]


def test_json_answer_has_the_protocols_shape_and_order() -> None:
    body, json_size = encode_outputs(_outputs(OUTPUTS, IDS, ANSWERS, CLASSES), frozenset(), "m", "v1", None)
    assert json_size is None
    answer = json.loads(body)
    assert list(answer) == ["model_name", "model_version", "outputs"]
    probabilities = array("f", [0.1, 0.6, 0.2, 0.1, 0.8, 0.1, 0.05, 0.05]).tolist()
    assert answer["outputs"] == [
        {"name": "basket_id", "datatype": "BYTES", "shape": [2], "data": IDS},
        {"name": "label", "datatype": "BYTES", "shape": [2], "data": ["MM", "LA"]},
        {"name": "probabilities", "datatype": "FP32", "shape": [2, 4], "data": probabilities},
    ]
    with_id = json.loads(encode_outputs(_outputs(("label",), IDS, ANSWERS, CLASSES), set(), "m", "v1", "r-7")[0])
    assert list(with_id) == ["model_name", "model_version", "id", "outputs"] and with_id["id"] == "r-7"
    assert [o["name"] for o in with_id["outputs"]] == ["label"]


def test_binary_outputs_follow_the_json_part() -> None:
    body, json_size = encode_outputs(_outputs(OUTPUTS, IDS, ANSWERS, CLASSES), {"label", "probabilities"},
                                     "m", "v1", None)
    assert json_size is not None
    head = json.loads(body[:json_size])
    sizes = [o.get("parameters", {}).get("binary_data_size") for o in head["outputs"]]
    assert sizes == [None, 2 * (4 + 2), 8 * 4] and "data" not in head["outputs"][1]
    blob = body[json_size:]
    assert blob[:12] == struct.pack("<I", 2) + b"MM" + struct.pack("<I", 2) + b"LA"
    assert array("f", blob[12:]).tolist() == array("f", [0.1, 0.6, 0.2, 0.1, 0.8, 0.1, 0.05, 0.05]).tolist()


def test_no_outputs_asked_is_an_empty_list_and_binary_for_absent_outputs_is_json() -> None:
    assert json.loads(encode_outputs([], frozenset(), "m", "v1", None)[0])["outputs"] == []
    body, json_size = encode_outputs(_outputs(("label",), IDS, ANSWERS, CLASSES), {"probabilities"}, "m", "v1", None)
    assert json_size is None and json.loads(body)["outputs"][0]["data"] == ["MM", "LA"]
