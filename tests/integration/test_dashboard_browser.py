"""The dashboard in a real headless Chromium (Debian's `chromium`) against a running gateway.

Publishes a forming bar, a final bar and an event to Redis the way the flow does, and waits
for the page to draw the candle and list the event. Skips only when Chromium is not installed
(`make test` installs it as root on Debian: infra/chromium.sh).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from connectors.gateway.auth import Policy
from connectors.gateway.server import VENDOR_DIR
from flows.settings import Settings
from tests.support.gateway import SECRET, alert, live_bar, pattern, running_gateway
from tests.support.services import TEST_DATABASE_URL

pytestmark = pytest.mark.integration

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WAIT_MS = 30_000


@pytest.fixture
def chromium_path() -> str:
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (infra/chromium.sh installs it as root: apt-get install chromium)")
    assert (VENDOR_DIR / "lightweight-charts.standalone.production.js").exists(), (
        "the dashboard's chart library is missing: run `make dashboard-assets` (npm ci in infra/dashboard)"
    )
    return CHROMIUM


def test_dashboard_draws_live_candles_and_events(services, chromium_path, tmp_path):
    from playwright.sync_api import sync_playwright

    with running_gateway(TEST_DATABASE_URL, Settings().redis_url, dev_mode=False, jwt_secret=SECRET, batch_interval_ms=100) as gw:
        token = Policy(SECRET, (), False).issue("viewer", ["AAPL"], ["*"], ttl_s=600, now=time.time())
        with sync_playwright() as p:
            # a fresh profile per run; Playwright never downloads a browser here
            context = p.chromium.launch_persistent_context(
                str(tmp_path / "profile"),
                executable_path=chromium_path,
                headless=True,
                args=FLAGS,
                viewport={"width": 1200, "height": 700},
            )
            page = context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(f"{gw.http}/dashboard/?symbol=AAPL&token={token}")
            page.wait_for_selector("#connection[data-state=open]", timeout=WAIT_MS)
            page.wait_for_function("document.getElementById('status').textContent.startsWith('subscribed')", timeout=WAIT_MS)
            assert page.get_attribute("#chart", "data-candles") == "0"

            bars = gw.bars()
            bars.publish_final([live_bar("AAPL", 10.0, minute=0, status="final")])
            bars.publish_live([live_bar("AAPL", 11.5, minute=1)])  # the forming bar of the next minute
            gw.publish_events([pattern("AAPL", 0.91, 1), alert("AAPL", 1)])
            bars.close()

            page.wait_for_function("Number(document.getElementById('chart').dataset.candles) >= 2", timeout=WAIT_MS)
            page.wait_for_selector("#feed li[data-kind=pattern]", timeout=WAIT_MS)
            page.wait_for_selector("#feed li[data-kind=alert]", timeout=WAIT_MS)
            candles = page.evaluate("[...window.dashboard.candles.values()].map(c => [c.time, c.close, c.final])")
            assert candles == [[1_800_000_000, 10.0, True], [1_800_000_060, 11.5, False]]
            assert "doji" in page.inner_text("#feed li[data-kind=pattern]")
            assert "RSI 75 above 70" in page.inner_text("#feed li[data-kind=alert]")
            assert page.inner_text("#connection") == "live"
            page.screenshot(path=str(tmp_path / "dashboard.png"))
            assert errors == []
            context.close()
