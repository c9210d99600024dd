"""The web page and the API reference pages in headless Chromium (Debian's) driven by Playwright: build a
basket, predict, read it; at phone width; /docs and /redoc with every request off the server refused."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import ApiProcess

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]

sync_api = pytest.importorskip("playwright.sync_api")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian chromium is not installed: sudo apt-get install chromium")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def test_build_a_basket_and_predict(browser: Any, start_api: Callable[..., ApiProcess], model_path: Path,
                                    tmp_path: Path) -> None:
    api = start_api(model_uri=str(model_path))
    api.wait_ready()
    page = browser.new_page()
    outside: list[str] = []
    # The page must work offline: every request it makes goes to our own server.
    page.on("request", lambda r: None if r.url.startswith(api.url) else outside.append(r.url))
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(api.url + "/")
    sync_api.expect(page.locator("#status")).to_have_attribute("data-state", "ready")
    sync_api.expect(page.locator("#auth")).to_be_hidden()  # no key asked for when authentication is off

    rows = page.locator("#lines tbody tr")
    sync_api.expect(rows).to_have_count(1)
    # Two example products the model knows, then remove the placeholder line and add a free-form one.
    page.select_option("#example", index=1)
    page.click("#add-example")
    page.select_option("#example", index=2)
    page.click("#add-example")
    rows.nth(0).locator("button.remove").click()
    page.click("#add-line")
    last = rows.nth(2)
    last.locator("[name=product_id]").fill("MY-OWN-PRODUCT")
    last.locator("[name=quantity]").fill("3")
    last.locator("[name=price]").fill("4.25")
    last.locator("[name=category]").fill("snacks")
    sync_api.expect(rows).to_have_count(3)

    with page.expect_response(lambda r: r.url.endswith("/predict?explain=true")) as answer:
        page.click("#predict")
    body = answer.value.json()
    assert answer.value.status == 200, body
    sync_api.expect(page.locator("#result-label")).to_have_text(body["label"])
    sync_api.expect(page.locator("#result-name")).to_have_text(body["label_name"])
    assert page.locator("#chart rect").count() == len(body["probabilities"])
    assert "1 unknown product" in page.locator("#result-meta").inner_text()
    # The explanation: every line tinted by the class it points to, the drivers listed under the prediction.
    why = body["explanation"]
    assert [rows.nth(i).get_attribute("data-points-to") for i in range(3)] == [
        line["points_to"] for line in why["lines"]]
    assert all(rows.nth(i).evaluate("r => r.style.backgroundColor") != "" for i in range(3))
    assert why["lines"][2]["source"] == "price_band" and "price band" in (rows.nth(2).get_attribute("title") or "")
    sync_api.expect(page.locator("#drivers-class")).to_have_text(body["label"])
    for side in ("drivers_for", "drivers_against"):
        items = page.locator(f"#{side.replace('_', '-')} li[data-line]")
        sync_api.expect(items).to_have_count(len(why[side]))
        for i, driver in enumerate(why[side]):
            assert items.nth(i).get_attribute("data-line") == str(driver["line"])
            assert driver["product_id"] in items.nth(i).inner_text()
    assert why["drivers_for"] or why["drivers_against"]
    assert page.locator("#info dd").first.inner_text() == body["model_version"]
    page.screenshot(path=str(tmp_path / "page.png"), full_page=True)

    # A bad line is reported on the page, naming the field, not as a crash.
    last.locator("[name=price]").fill("-1")
    page.click("#predict")
    sync_api.expect(page.locator("#error")).to_have_text("line 3: unit price must be a number greater than 0")
    sync_api.expect(page.locator("#result")).to_be_hidden()
    assert errors == [] and outside == []


def _offline_page(browser: Any, api: ApiProcess, **options: Any) -> tuple[Any, dict[str, list[str]]]:
    """A page that may reach only `api`: anything else is aborted (an air-gapped network) and recorded, as
    are script errors, console errors and answers >= 400."""
    page = browser.new_page(**options)
    seen: dict[str, list[str]] = {"outside": [], "errors": [], "failed": []}

    def route(r: Any) -> None:
        if r.request.url.startswith(api.url):
            r.continue_()
        else:
            seen["outside"].append(r.request.url)
            r.abort()

    page.route("**/*", route)
    page.on("pageerror", lambda exc: seen["errors"].append(str(exc)))
    page.on("console", lambda msg: seen["errors"].append(msg.text) if msg.type == "error" else None)
    page.on("response", lambda r: seen["failed"].append(f"{r.status} {r.url}") if r.status >= 400 else None)
    return page, seen


def test_api_reference_pages_work_offline(browser: Any, start_api: Callable[..., ApiProcess],
                                          model_path: Path) -> None:
    api = start_api(model_uri=str(model_path))
    page, seen = _offline_page(browser, api)
    page.goto(api.url + "/docs")
    sync_api.expect(page.locator(".swagger-ui .info .title")).to_contain_text("Retail Prediction API")
    sync_api.expect(page.locator(".opblock-summary-path", has_text="/predict/batch")).to_be_visible()
    page.goto(api.url + "/redoc")
    sync_api.expect(page.locator("h1")).to_contain_text("Retail Prediction API")
    sync_api.expect(page.get_by_text("/predict/batch").first).to_be_attached()
    # ReDoc's own logo (from Redocly's CDN) is refused by the page's policy before any request is made.
    seen["errors"] = [e for e in seen["errors"] if "cdn.redoc.ly/redoc/logo-mini.svg" not in e]
    assert seen == {"outside": [], "errors": [], "failed": []}
    # The access lines name the documentation's routes.
    api.http.get("/openapi.json")
    routes = {r.get("path"): r.get("route") for r in api.log_records() if r.get("path")}
    assert {p: routes.get(p) for p in ("/docs", "/redoc", "/openapi.json")} == {
        "/docs": "/docs", "/redoc": "/redoc", "/openapi.json": "/openapi.json"}
    assert routes.get("/docs/assets/swagger-ui-bundle.js") == "/docs/assets"


def test_page_at_phone_width(browser: Any, start_api: Callable[..., ApiProcess], model_path: Path,
                             tmp_path: Path) -> None:
    api = start_api(model_uri=str(model_path))
    api.wait_ready()
    page, seen = _offline_page(browser, api, viewport={"width": 390, "height": 844})
    page.goto(api.url + "/")
    sync_api.expect(page.locator("#status")).to_have_attribute("data-state", "ready")
    page.select_option("#example", index=1)
    page.click("#add-example")
    page.click("#add-line")
    rows = page.locator("#lines tbody tr")
    sync_api.expect(rows).to_have_count(3)
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    for name in ("product_id", "quantity", "price", "category"):  # every input whole on screen
        box = rows.nth(2).locator(f"[name={name}]").bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 390, (name, box)

    page.click("#predict")  # the new line is empty: an error in the page's words, no result
    sync_api.expect(page.locator("#error")).to_have_text("line 3: product code must not be empty")
    sync_api.expect(page.locator("#result")).to_be_hidden()
    rows.nth(2).locator("[name=product_id]").fill("MY-OWN")
    rows.nth(2).locator("[name=price]").fill("2")
    page.click("#predict")
    sync_api.expect(page.locator("#result")).to_be_visible()
    sync_api.expect(page.locator("#error")).to_be_hidden()
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    page.screenshot(path=str(tmp_path / "phone.png"), full_page=True)

    rows.nth(0).locator("[name=quantity]").fill("0")  # a stale result does not survive an error...
    page.click("#predict")
    sync_api.expect(page.locator("#error")).to_have_text("line 1: quantity must be a number greater than 0")
    sync_api.expect(page.locator("#result")).to_be_hidden()
    rows.nth(0).locator("[name=quantity]").fill("1")
    page.click("#predict")
    sync_api.expect(page.locator("#result")).to_be_visible()
    page.click("#clear")  # ...nor Clear
    sync_api.expect(page.locator("#result")).to_be_hidden()
    sync_api.expect(page.locator("#no-result")).to_be_visible()
    # The two refused baskets are the only answers >= 400 (no 404: the favicon is there), and the browser's
    # note of them the only console errors.
    assert seen["failed"] == [f"422 {api.url}/predict?explain=true"] * 2 and seen["outside"] == []
    assert [e for e in seen["errors"] if "status of 422" not in e] == []


def test_page_asks_for_a_key_when_authentication_is_on(browser: Any, start_api: Callable[..., ApiProcess],
                                                       model_path: Path, tmp_path: Path) -> None:
    key = "page-user-key-0123456789abcdef"
    keys = tmp_path / "keys"
    keys.write_text(f"page-user:{key}\n")
    api = start_api(model_uri=str(model_path), auth_mode="keys", auth_keys_file=str(keys))
    api.wait_ready()
    page, seen = _offline_page(browser, api)
    page.goto(api.url + "/")
    sync_api.expect(page.locator("#status")).to_have_text("Enter an API key to use the model")
    sync_api.expect(page.locator("#auth")).to_be_visible()
    page.fill("#api-key", "not-the-key-0123456789")
    page.press("#api-key", "Enter")
    sync_api.expect(page.locator("#status")).to_have_text("Enter an API key to use the model")
    page.fill("#api-key", key)
    page.click("#use-key")
    sync_api.expect(page.locator("#status")).to_have_attribute("data-state", "ready")
    assert page.locator("#example option").count() > 1
    with page.expect_response(lambda r: r.url.endswith("/predict?explain=true")) as answer:
        page.click("#predict")
    assert answer.value.status == 200
    sync_api.expect(page.locator("#result")).to_be_visible()
    assert seen["outside"] == [] and seen["failed"] == [f"401 {api.url}/model/info"] * 2
    assert key not in api.log()
