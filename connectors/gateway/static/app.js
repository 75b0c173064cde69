// TickStock Streams live dashboard: one symbol's 1-minute candles (final bars from
// tickstock.market.ohlcv.{SYMBOL}, the forming bar from tickstock.market.bars.live.{SYMBOL}),
// its events and alerts, and the connection state. Talks to the gateway it is served by:
// REST for the history, the WebSocket protocol (README: Gateway) for live updates, resuming
// from the last channel positions after a reconnect.
"use strict";

const params = new URLSearchParams(location.search);
const token = params.get("token"); // omitted in dev mode
const $ = (id) => document.getElementById(id);
// schemas/symbols.py's rule: only an all-lower-case entry is upper-cased (BACpL stays BACpL)
const normalise = (text) => { const v = text.trim(); return v === v.toLowerCase() ? v.toUpperCase() : v; };
const state = { symbol: normalise(params.get("symbol") || ""), ws: null, positions: {}, retry: 500,
                candles: new Map(), events: 0, lastBarTime: 0 };
window.dashboard = state; // for tests and curious people

const chart = LightweightCharts.createChart($("chart"), {
  autoSize: true,
  layout: { background: { color: "#172029" }, textColor: "#d8dee4" },
  grid: { vertLines: { color: "#243039" }, horzLines: { color: "#243039" } },
  timeScale: { timeVisible: true, secondsVisible: false },
});
const series = chart.addSeries(LightweightCharts.CandlestickSeries, {
  upColor: "#26a69a", downColor: "#ef5350", borderVisible: false, wickUpColor: "#26a69a", wickDownColor: "#ef5350",
});

function setConnection(kind, text) {
  const el = $("connection");
  el.className = "state " + kind;
  el.dataset.state = kind;
  el.textContent = text;
}

function status(text) { $("status").textContent = text; }

async function api(path) {
  const headers = token ? { Authorization: "Bearer " + token } : {};
  const response = await fetch(path, { headers });
  if (!response.ok) {
    const body = await response.json().catch(() => ({}));
    throw new Error(`${path}: ${response.status} ${JSON.stringify(body.detail || body)}`);
  }
  return response.json();
}

// ---- candles
function drawBar(bar) {
  if (bar.symbol !== state.symbol || bar.open === null) return; // volume-only minutes have no prices
  const time = Math.floor(bar.timestamp / 1000);
  const candle = { time, open: bar.open, high: bar.high, low: bar.low, close: bar.close };
  const known = state.candles.get(time);
  if (known && known.final && bar.status === "live") return; // a late live copy never undoes a final bar
  state.candles.set(time, { ...candle, final: bar.status === "final" });
  if (time >= state.lastBarTime) {
    series.update(candle);
    state.lastBarTime = time;
  } else {
    // a revision of an older minute: lightweight-charts only updates the newest bar in place
    series.setData([...state.candles.entries()].sort((a, b) => a[0] - b[0]).map(([, c]) => strip(c)));
  }
  $("chart").dataset.candles = String(state.candles.size);
  $("last").textContent = `${bar.status === "live" ? "forming" : "final"} ${new Date(bar.timestamp).toISOString().slice(11, 16)} UTC close ${bar.close}`;
}

function strip(c) { return { time: c.time, open: c.open, high: c.high, low: c.low, close: c.close }; }

async function loadBars() {
  const end = new Date(Date.now() + 60_000);
  const start = new Date(end.getTime() - 6 * 3600_000);
  state.candles.clear();
  state.lastBarTime = 0;
  series.setData([]);
  try {
    const body = await api(`/api/bars?symbol=${encodeURIComponent(state.symbol)}&start=${start.toISOString()}&end=${end.toISOString()}`);
    for (const b of body.bars) {
      const time = Math.floor(Date.parse(b.timestamp) / 1000);
      if (b.open === null) continue;
      state.candles.set(time, { time, open: b.open, high: b.high, low: b.low, close: b.close, final: true });
    }
    series.setData([...state.candles.values()].map(strip));
    state.lastBarTime = Math.max(0, ...state.candles.keys());
    $("chart").dataset.candles = String(state.candles.size);
  } catch (err) {
    status(String(err.message)); // e.g. 404 for a symbol the pipeline has not seen yet: live data still shows
  }
}

// ---- events
function addEvent(e) {
  if (e.symbol !== state.symbol) return;
  const li = document.createElement("li");
  li.className = e.direction || "neutral";
  li.dataset.kind = e.kind;
  li.dataset.id = e.id;
  const what = e.kind === "alert" ? e.message : `${e.type.replaceAll("_", " ")} (confidence ${Number(e.confidence).toFixed(2)})`;
  li.innerHTML = `<span class="kind"></span><span class="what"></span><time></time>`;
  li.querySelector(".kind").textContent = e.kind;
  li.querySelector(".what").textContent = what;
  li.querySelector("time").textContent = new Date(e.timestamp).toISOString().replace("T", " ").slice(0, 19) + " UTC";
  const feed = $("feed");
  const old = feed.querySelector(`li[data-id="${CSS.escape(e.id)}"]`);
  if (old) old.replaceWith(li); else feed.prepend(li);
  while (feed.children.length > 200) feed.lastChild.remove();
  state.events = feed.children.length;
}

async function loadEvents() {
  $("feed").replaceChildren();
  try {
    const body = await api(`/api/events?symbol=${encodeURIComponent(state.symbol)}&limit=100`);
    for (const e of body.events.reverse()) addEvent(e);
  } catch (err) {
    status(String(err.message));
  }
}

// ---- live
function connect() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const ws = new WebSocket(`${scheme}://${location.host}/ws${token ? "?token=" + encodeURIComponent(token) : ""}`);
  state.ws = ws;
  setConnection("connecting", "connecting");
  ws.onopen = () => {
    state.retry = 500;
    setConnection("open", "live");
    subscribe(state.symbol, true);
  };
  ws.onmessage = (event) => onMessage(JSON.parse(event.data));
  ws.onclose = (event) => {
    const why = event.code === 1000 ? "" : ` (${event.code}${event.reason ? ": " + event.reason : ""})`;
    setConnection("closed", `disconnected${why}, retrying`);
    setTimeout(connect, state.retry);
    state.retry = Math.min(state.retry * 2, 15_000);
  };
}

function subscribe(symbol, resume) {
  const positions = {};
  if (resume) {
    for (const [channel, pos] of Object.entries(state.positions)) {
      if (channel.endsWith("." + symbol)) positions[channel] = pos;
    }
  }
  state.ws.send(JSON.stringify({ type: "subscribe", symbols: [symbol],
                                 kinds: ["live", "bar", "highlow", "trend", "surge", "pattern", "alert"], positions }));
}

function onMessage(m) {
  if (m.type === "batch") {
    for (const { channel, data } of m.messages) {
      state.positions[channel] = { epoch: data.epoch, offset: data.offset };
      if (data.kind === undefined) drawBar(data); else addEvent(data);
    }
  } else if (m.type === "subscribed") {
    for (const [channel, pos] of Object.entries(m.positions)) {
      if (!(channel in state.positions) || state.positions[channel].epoch !== pos.epoch) state.positions[channel] = pos;
    }
    status(`subscribed to ${m.symbols.join(", ")}`);
  } else if (m.type === "reset") {
    state.positions[m.channel] = { epoch: m.epoch, offset: m.offset };
    status(`missed too much on ${m.channel}: reloading`);
    loadBars();
    loadEvents();
  } else if (m.type === "error") {
    status(`gateway: ${m.code}: ${m.message}`);
  }
}

$("pick").addEventListener("submit", async (event) => {
  event.preventDefault();
  const next = normalise($("symbol").value);
  if (!next || next === state.symbol) return;
  const previous = state.symbol;
  state.symbol = next;
  $("title").textContent = next;
  if (state.ws && state.ws.readyState === WebSocket.OPEN) {
    state.ws.send(JSON.stringify({ type: "unsubscribe", symbols: [previous] }));
    subscribe(next, false);
  }
  await Promise.all([loadBars(), loadEvents()]);
});

setInterval(() => { if (state.ws && state.ws.readyState === WebSocket.OPEN) state.ws.send('{"type":"ping"}'); }, 15_000);

// The symbols trading now, busiest first: suggestions for the picker, and the default symbol.
async function loadSymbols() {
  try {
    const body = await api("/api/symbols?limit=500");
    $("symbols").replaceChildren(...body.symbols.map((s) => Object.assign(document.createElement("option"), { value: s })));
    if (!state.symbol && body.symbols.length) state.symbol = body.symbols[0];
  } catch (err) {
    status(String(err.message));
  }
  if (!state.symbol) state.symbol = "AAPL";
}

loadSymbols().then(() => {
  $("symbol").value = state.symbol;
  $("title").textContent = state.symbol;
  return Promise.all([loadBars(), loadEvents()]);
}).finally(connect);
