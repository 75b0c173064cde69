"""The dashboard in a real headless Chromium (Debian's `chromium`) against a running gateway.

Seeds three hours of 1-minute bars, 5-minute indicator rows, a pattern and an alert in
PostgreSQL and a server-side watchlist; opens the page, switches to 5m and checks what is drawn
in the screenshot's own pixels (candle colours in the price pane, volume colours in the volume
pane, the overlays' and markers' colours). Then publishes to Redis as the flows do (a forming 5m
bar, prices, an amended pattern and a retracted alert, per the issue-15 contract) and sees the
chart, the watchlist rows and the markers follow; changes the watchlist over REST as a second
device would and sees the page follow; sends a bar without numbers (skipped) and an event
carrying markup (shown as text); then stops the gateway and sees the state turn `reconnecting`.
Skips only when Chromium is not installed (`make test` installs it as root on Debian:
infra/chromium.sh). `DASHBOARD_SCREENSHOT=docs/dashboard.png` also saves the screenshot there.
"""

from __future__ import annotations

import base64
import json
import os
import random
import shutil
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from connectors.gateway.auth import Policy
from connectors.gateway.server import VENDOR_DIR
from flows.settings import Settings
from schemas.events import stable_id
from tests.support.gateway import SECRET, running_gateway
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
    "--force-device-scale-factor=1",
]
WAIT_MS = 20_000
# app.js's colours (COLORS): what the pixels are checked for
UP, DOWN, VOLUME_UP, VOLUME_DOWN = "#26a69a", "#ef5350", "#1f7a72", "#b23c3a"
SMA, BB, AMENDED, RETRACTED = "#f0b429", "#4fc3f7", "#ffb74d", "#6b7785"
FIVE_MIN = timedelta(minutes=5)
MINUTES = 180  # seeded 1m bars: 36 five-minute bars
PATTERN_BAR, ALERT_BAR = 14, 27  # the seeded events' 5m bars

# In the page: decode the screenshot (base64 PNG) and count, per pane of the chart, the pixels
# within a small tolerance of each colour asked for.
COUNT_COLOURS = """async ([png, colours]) => {
  const img = await createImageBitmap(await (await fetch("data:image/png;base64," + png)).blob());
  const canvas = new OffscreenCanvas(img.width, img.height);
  const ctx = canvas.getContext("2d");
  ctx.drawImage(img, 0, 0);
  const box = document.getElementById("chart").getBoundingClientRect();
  const panes = window.dashboard.chart.panes().map((p) => p.getHeight());
  const rows = { price: [box.top, box.top + panes[0]], volume: [box.top + panes[0] + 1, box.top + panes[0] + 1 + panes[1]] };
  const rgb = (hex) => [1, 3, 5].map((i) => parseInt(hex.slice(i, i + 2), 16));
  const out = {};
  for (const [pane, [top, bottom]] of Object.entries(rows)) {
    const data = ctx.getImageData(Math.round(box.left), Math.round(top), Math.round(box.width), Math.round(bottom - top)).data;
    out[pane] = {};
    for (const hex of colours) {
      const [r, g, b] = rgb(hex);
      let n = 0;
      for (let i = 0; i < data.length; i += 4) {
        if (Math.abs(data[i] - r) <= 6 && Math.abs(data[i + 1] - g) <= 6 && Math.abs(data[i + 2] - b) <= 6) n++;
      }
      out[pane][hex] = n;
    }
  }
  return out;
}"""


@pytest.fixture
def chromium_path() -> str:
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (infra/chromium.sh installs it as root: apt-get install chromium)")
    assert (VENDOR_DIR / "lightweight-charts.standalone.production.js").exists(), (
        "the dashboard's chart library is missing: run `make dashboard-assets` (npm ci in infra/dashboard)"
    )
    return CHROMIUM


def seed(db, start: datetime) -> tuple[str, str, list[tuple]]:
    """Three hours of AAPL 1m bars from `start` (a seeded random walk: 36 five-minute bars), 5m
    indicator rows (SMA/EMA/Bollinger over those), a 5m pattern and a 5m alert; MSFT known too.
    The events' ids and the bars."""
    db.execute("INSERT INTO symbols (symbol) VALUES ('AAPL'), ('MSFT')")
    walk = random.Random(15)
    rows, price = [], 100.0
    for i in range(MINUTES):
        o, price = price, round(price + walk.gauss(0.01, 0.18), 2)
        high, low = round(max(o, price) + walk.random() * 0.1, 2), round(min(o, price) - walk.random() * 0.1, 2)
        rows.append(("AAPL", start + timedelta(minutes=i), o, high, low, price, walk.randint(800, 3000), price, 10))
    closes = [rows[k * 5 + 4][5] for k in range(MINUTES // 5)]
    indicators, ema = [], closes[0]
    for k, close in enumerate(closes):
        ema = ema + (close - ema) * 2 / (5 + 1)
        window = closes[max(0, k - 4) : k + 1]
        if len(window) == 5:
            mean = sum(window) / 5
            sd = (sum((c - mean) ** 2 for c in window) / 5) ** 0.5
            indicators.append((start + k * FIVE_MIN, mean, ema, mean + 2 * sd, mean, mean - 2 * sd))
    with db.cursor() as cur:
        cur.executemany(
            "INSERT INTO ohlcv_1min (symbol, timestamp, open, high, low, close, volume, vwap, trades, revision)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, 0)",
            rows,
        )
        cur.executemany(
            "INSERT INTO indicator_values (symbol, timeframe, timestamp, sma, ema, bb_upper, bb_middle, bb_lower, rsi)"
            " VALUES ('AAPL', '5m', %s, %s, %s, %s, %s, %s, 55)",
            indicators,
        )
    pattern_at, alert_at = start + PATTERN_BAR * FIVE_MIN, start + ALERT_BAR * FIVE_MIN
    pattern_id = stable_id("pattern", "AAPL", "5m", int(pattern_at.timestamp() * 1000), "engulfing")
    alert_id = stable_id("alert", "AAPL", "5m", int(alert_at.timestamp() * 1000), "rsi_overbought")
    db.execute(
        "INSERT INTO events (symbol, timestamp, id, kind, type, timeframe, direction, confidence, price, revision, params, detail)"
        " VALUES ('AAPL', %s, %s, 'pattern', 'engulfing', '5m', 'up', 0.9, 101, 0, '{}', '{\"signal\": 100}')",
        (pattern_at, pattern_id),
    )
    db.execute(
        "INSERT INTO alerts (symbol, timestamp, id, rule, severity, timeframe, direction, confidence, indicator,"
        " value, threshold, message, revision, params)"
        " VALUES ('AAPL', %s, %s, 'rsi_overbought', 'warning', '5m', 'down', 0.9, 'rsi', 72, 70, 'RSI 72 above 70', 0, '{}')",
        (alert_at, alert_id),
    )
    return pattern_id, alert_id, rows


def test_dashboard_timeframes_volume_overlays_markers_watchlist_and_connection_state(db, chromium_path, tmp_path):
    from playwright.sync_api import sync_playwright

    now = datetime.now(UTC)
    start = now.replace(second=0, microsecond=0) - timedelta(minutes=now.minute % 5 + MINUTES)
    pattern_id, alert_id, minutes = seed(db, start)
    ms = lambda moment: int(moment.timestamp() * 1000)  # noqa: E731

    with sync_playwright() as p:
        # a fresh profile per run; Playwright never downloads a browser here
        context = p.chromium.launch_persistent_context(
            str(tmp_path / "profile"),
            executable_path=chromium_path,
            headless=True,
            args=FLAGS,
            viewport={"width": 1280, "height": 760},
        )
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        gateway = running_gateway(
            TEST_DATABASE_URL, Settings().redis_url, dev_mode=False, jwt_secret=SECRET, batch_interval_ms=50
        )
        with gateway as gw:
            c = gw.channels
            token = Policy(SECRET, (), False).issue("viewer", ["AAPL", "MSFT"], ["*"], ttl_s=600, now=time.time())
            msft = {"version": 1, "symbol": "MSFT", "price": 412.0, "size": 10, "timestamp": ms(now), "session": now.date().isoformat(),
                    "open": 415.0, "change": -3.0, "change_pct": -0.72}  # fmt: skip
            gw.publish([(c.prices_for("MSFT"), json.dumps(msft).encode())])  # before the page: it asks the history for it
            other_device = httpx.Client(base_url=gw.http, headers={"Authorization": f"Bearer {token}"}, timeout=WAIT_MS / 1000)
            assert other_device.put("/api/watchlists/main", json={"symbols": ["AAPL"]}).status_code in (
                200,
                201,
            )  # kept from a last run
            page.goto(f"{gw.http}/dashboard/?symbol=AAPL&watchlist=main&token={token}")
            page.wait_for_selector("#connection[data-state=live]", timeout=WAIT_MS)
            page.wait_for_function(f"document.getElementById('chart').dataset.candles === '{MINUTES}'", timeout=WAIT_MS)

            page.click("#timeframes button[data-tf='5m']")
            page.wait_for_function(
                f"(d => d.candles === '{MINUTES // 5}' && d.markers === '2' && Number(d.overlays) > 0)(document.getElementById('chart').dataset)",
                timeout=WAIT_MS,
            )
            page.wait_for_function("window.dashboard.feeds.chart.subscribed?.timeframes.join() === '5m'", timeout=WAIT_MS)
            assert (
                page.inner_text("#tf-label") == "5m"
                and page.get_attribute("#timeframes [data-tf='5m']", "aria-pressed") == "true"
            )
            candles = page.evaluate("[...window.dashboard.candles.values()].map(c => [c.time, c.open, c.volume])")
            first = minutes[:5]  # the database's 5m rollup of the first five minutes
            assert candles[0] == [ms(start) // 1000, first[0][2], sum(m[6] for m in first)]
            assert "SMA" in page.inner_text("#legend") and "BB" in page.inner_text("#legend")

            # live: the forming 5m bar after the seeded bars, a price, then the amendment and the retraction
            last = minutes[-1][5]
            close = round(last + 0.25, 2)
            forming = {"symbol": "AAPL", "timeframe": "5m", "timestamp": ms(start + MINUTES // 5 * FIVE_MIN), "open": last,
                       "high": close + 0.05, "low": last - 0.1, "close": close, "volume": 4000, "vwap": close, "trades": 40,
                       "revision": 0, "status": "live"}  # fmt: skip
            price = {"version": 1, "symbol": "AAPL", "price": close, "size": 100, "timestamp": ms(now), "session": now.date().isoformat(),
                     "open": round(close - 2.2, 2), "change": 2.2, "change_pct": 2.31}  # fmt: skip
            gw.publish(
                [(c.live_at_for("5m", "AAPL"), json.dumps(forming).encode()), (c.prices_for("AAPL"), json.dumps(price).encode())]
            )
            page.wait_for_function(f"document.getElementById('chart').dataset.candles === '{MINUTES // 5 + 1}'", timeout=WAIT_MS)
            row = "#watchlist tr[data-symbol='AAPL']"
            page.wait_for_function(f"document.querySelector(\"{row} .last\").textContent === '{close:.2f}'", timeout=WAIT_MS)
            assert page.inner_text(f"{row} .change") == "+2.20" and page.inner_text(f"{row} .pct") == "+2.31%"
            assert "up" in (page.get_attribute(row, "class") or "")
            assert page.inner_text("#watch-source") == "(main, on the server)"
            assert page.eval_on_selector_all("#watchlist tbody tr", "rows => rows.map(r => r.dataset.symbol)") == ["AAPL"]
            # the same user changes the list on another device: this page follows it
            assert other_device.put("/api/watchlists/main", json={"symbols": ["AAPL", "MSFT"]}).status_code == 200
            page.wait_for_function(  # with the last price from before the page opened, from the history
                "document.querySelector(\"#watchlist tr[data-symbol='MSFT'] .last\")?.textContent === '412.00'", timeout=WAIT_MS
            )
            msft = {**msft, "price": 411.35, "change": -3.65, "change_pct": -0.88}
            gw.publish([(c.prices_for("MSFT"), json.dumps(msft).encode())])
            page.wait_for_function(
                "document.querySelector(\"#watchlist tr[data-symbol='MSFT'] .pct\").textContent === '-0.88%'", timeout=WAIT_MS
            )
            assert "down" in (page.get_attribute("#watchlist tr[data-symbol='MSFT']", "class") or "")

            amended = {"kind": "pattern", "version": 1, "id": pattern_id, "type": "engulfing", "symbol": "AAPL",
                       "timestamp": ms(start + PATTERN_BAR * FIVE_MIN), "confidence": 0.7, "direction": "up", "params": {},
                       "timeframe": "5m", "signal": 100, "revision": 1, "status": "amended"}  # fmt: skip
            retracted = {"kind": "alert", "version": 1, "id": alert_id, "type": "rsi_overbought", "symbol": "AAPL",
                         "timestamp": ms(start + ALERT_BAR * FIVE_MIN), "confidence": 0.9, "direction": "down", "params": {},
                         "timeframe": "5m", "severity": "warning", "indicator": "rsi", "value": 68.0, "threshold": 70.0,
                         "message": "RSI 68 above 70", "revision": 1, "status": "retracted"}  # fmt: skip
            gw.publish([(c.events_for("AAPL"), json.dumps(e).encode()) for e in (amended, retracted)])
            page.wait_for_selector(f"#feed li[data-id='{pattern_id}'][data-status=amended]", timeout=WAIT_MS)
            page.wait_for_selector(f"#feed li[data-id='{alert_id}'][data-status=retracted]", timeout=WAIT_MS)
            markers = page.evaluate("Object.fromEntries(window.dashboard.markers.map(m => [m.id, [m.color, m.text]]))")
            assert markers[pattern_id] == [AMENDED, "engulfing (amended)"]
            assert markers[alert_id][0] == RETRACTED and markers[alert_id][1].replace("\u0336", "") == "rsi overbought"
            page.wait_for_timeout(300)  # let the chart paint its last frame
            png = page.screenshot()
            (tmp_path / "dashboard.png").write_bytes(png)
            if target := os.environ.get("DASHBOARD_SCREENSHOT"):
                Path(target).write_bytes(png)
            counts = page.evaluate(
                COUNT_COLOURS, [base64.b64encode(png).decode(), [UP, DOWN, VOLUME_UP, VOLUME_DOWN, SMA, BB, AMENDED, RETRACTED]]
            )
            price_pane, volume_pane = counts["price"], counts["volume"]
            assert price_pane[UP] > 200 and price_pane[DOWN] > 200, counts  # candle bodies of both colours
            assert volume_pane[VOLUME_UP] > 200 and volume_pane[VOLUME_DOWN] > 200, counts  # volume bars
            assert volume_pane[UP] + volume_pane[DOWN] < 20 and price_pane[VOLUME_UP] + price_pane[VOLUME_DOWN] < 20, counts
            assert price_pane[SMA] > 20 and price_pane[BB] > 20, counts  # the overlays' lines
            assert price_pane[AMENDED] > 5 and price_pane[RETRACTED] > 5, counts  # the two markers
            # hostile input on the wire: a bar without numbers, an event whose text is markup
            bad_bar = {**forming, "open": "x", "timestamp": forming["timestamp"] + 300_000}
            markup = {**amended, "id": "x1", "type": "<img src=x onerror=window.pwned=1>", "status": "detected"}
            gw.publish(
                [(c.live_at_for("5m", "AAPL"), json.dumps(bad_bar).encode()), (c.events_for("AAPL"), json.dumps(markup).encode())]
            )
            page.wait_for_selector("#feed li[data-id='x1']", timeout=WAIT_MS)
            assert page.query_selector("#feed img") is None and page.evaluate("window.pwned") is None
            assert "<img src=x" in page.inner_text("#feed li[data-id='x1']")
            assert page.get_attribute("#chart", "data-candles") == str(MINUTES // 5 + 1)  # the bad bar was skipped
            assert page.inner_text("#connection") == "live"
            other_device.close()
        # the gateway is gone: both sockets close and retry
        page.wait_for_selector("#connection[data-state=reconnecting]", timeout=WAIT_MS)
        assert errors == []
        context.close()
