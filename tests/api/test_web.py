"""The web page in headless Chromium (Debian's) driven by Playwright: build a basket, predict, read it."""

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

    with page.expect_response(lambda r: r.url.endswith("/predict")) as answer:
        page.click("#predict")
    body = answer.value.json()
    assert answer.value.status == 200, body
    sync_api.expect(page.locator("#result-label")).to_have_text(body["label"])
    sync_api.expect(page.locator("#result-name")).to_have_text(body["label_name"])
    assert page.locator("#chart rect").count() == len(body["probabilities"])
    assert "1 unknown product" in page.locator("#result-meta").inner_text()
    assert page.locator("#info dd").first.inner_text() == body["model_version"]
    page.screenshot(path=str(tmp_path / "page.png"), full_page=True)

    # A bad line is reported on the page, naming the field, not as a crash.
    last.locator("[name=price]").fill("-1")
    page.click("#predict")
    sync_api.expect(page.locator("#error")).to_contain_text("price")
    assert errors == [] and outside == []
