"""The dashboard in headless Chromium (Playwright driving the Debian package's binary)."""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from tests.integration.observability.conftest import (
    ARTIFACTS,
    Load,
    Shop,
    require_binary,
    wait_until,
)

pytestmark = pytest.mark.integration
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
TRACE = "0af7651916cd43dd8448eb211c80319c"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    executable = require_binary("/usr/bin/chromium", "Chromium")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def test_the_api_needs_the_token_or_the_login_cookie_but_the_page_does_not(shop: Shop) -> None:
    with urllib.request.urlopen(shop.control + "/dashboard/", timeout=10) as resp:
        assert b"Shoal dashboard" in resp.read()
    for path in ("/v1/logs", "/v1/metrics", "/login?token=wrong"):
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(shop.control + path, timeout=10)
        assert info.value.code == 401
        info.value.close()


def test_dashboard_shows_services_live_numbers_and_a_trace_across_services(
        shop: Shop, shop_user: int, browser: Any) -> None:
    page = browser.new_page(viewport={"width": 1400, "height": 1100})
    errors: list[str] = []
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(f"{shop.control}/login?token={shop.token}")
    assert page.url.endswith("/dashboard/")

    rows = page.locator("#services tbody tr")
    rows.first.wait_for(timeout=20_000)
    shown = set(page.locator("#services tbody tr").evaluate_all(
        "rows => rows.map(r => r.dataset.service)"))
    assert {"users", "orders", "gateway"} <= shown

    users_rps = page.locator('#services tr[data-service="users"] td.rps')
    before = users_rps.inner_text()
    load = Load(shop, shop_user, seconds=25)
    try:
        wait_until(lambda: users_rps.inner_text() not in {before, "\u2013", "0.00"}, 30,
                   "the users req/s on the dashboard to change under load")
    finally:
        load.stop()
    assert page.locator("#instances tbody tr").count() >= 5
    assert page.locator(".chart canvas").count() >= 9

    assert shop.traced_order(TRACE, shop_user) == 201
    page.fill("#log-trace", TRACE)

    def services_in_trace() -> set[str] | None:
        found = set(page.locator("#logs tbody tr").evaluate_all(
            "rows => rows.map(r => r.dataset.service)"))
        return found if len(found) > 1 else None

    found = wait_until(services_in_trace, 20, "log lines of the trace from >1 service")
    assert {"gateway", "orders"} <= found
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
    assert errors == []
    page.close()
