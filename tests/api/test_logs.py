"""The log as the real server writes it: JSON lines for machines (no escape-code fields), plain text lines for a
person (LOG_FORMAT=text, or a terminal), and the address to open the page at."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path

from retail_prediction.api.logs import text_wanted
from retail_prediction.api.schemas import EXAMPLE_REQUEST
from retail_prediction.serve import browse_url

from .conftest import ApiProcess, wait_until

ESC = "\x1b"


def _serve_one_prediction(start_api: Callable[..., ApiProcess], model_path: Path, **settings: str) -> tuple[str, str]:
    """The whole log of a server that loaded the model, answered one /predict and stopped on SIGTERM, and the
    address it should tell a person to open."""
    api = start_api(model_uri=str(model_path), **settings)
    api.wait_ready()
    assert api.http.post("/predict", json=EXAMPLE_REQUEST).status_code == 200
    wait_until(lambda: "/predict" in api.log(), 5, "the access line")
    assert api.terminate() == 0
    return api.log(), f"http://127.0.0.1:{api.port}/"


def test_json_lines_carry_no_escape_codes(start_api: Callable[..., ApiProcess], model_path: Path) -> None:
    log, url = _serve_one_prediction(start_api, model_path, log_format="json")
    records = [json.loads(line) for line in log.splitlines() if line.strip()]  # every line is one JSON object
    assert ESC not in log and not [r for r in records if "color_message" in r]
    messages = [r["message"] for r in records]
    assert any(m.startswith("Uvicorn running on") for m in messages)  # uvicorn's lines, through our formatter
    assert f"open {url} in a browser (the API's documentation: {url}docs)" in messages
    access = [r for r in records if r["logger"] == "retail_prediction.access"]
    assert [(r["route"], r["status"]) for r in access if r["route"] == "/predict"] == [("/predict", 200)]


def test_text_lines_for_a_person(start_api: Callable[..., ApiProcess], model_path: Path) -> None:
    log, url = _serve_one_prediction(start_api, model_path, log_format="text")
    lines = log.splitlines()
    assert ESC not in log and not [line for line in lines if line.lstrip().startswith("{")]
    assert any(" info    uvicorn.error: Uvicorn running on http://127.0.0.1:" in line for line in lines)
    assert any(line.endswith(f" info    retail_prediction.serve: open {url} in a browser (the API's documentation: "
                             f"{url}docs)") for line in lines)
    predict = [line for line in lines if "retail_prediction.access: request" in line and "route=/predict" in line]
    assert len(predict) == 1 and " status=200 " in predict[0] and "latency_ms=" in predict[0]
    assert any("retail_prediction.api.model: model " in line and " loaded from " in line for line in lines)


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_auto_means_text_at_a_terminal_and_json_elsewhere() -> None:
    assert text_wanted("auto", _Terminal()) and not text_wanted("auto", io.StringIO())
    assert text_wanted("text", io.StringIO()) and not text_wanted("json", _Terminal())


def test_the_address_to_open() -> None:
    assert browse_url("0.0.0.0", 8000) == "http://127.0.0.1:8000/"
    assert browse_url("::", 8000) == "http://[::1]:8000/"
    assert browse_url("10.1.2.3", 80) == "http://10.1.2.3:80/"
