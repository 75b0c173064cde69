// TickStock Streams live dashboard, talking to the gateway it is served by (README: Gateway).
//
// - Chart: one symbol's candles at the chosen timeframe with a volume pane, SMA/EMA/Bollinger
//   overlays from the indicator rows and pattern/alert markers (amended ones marked, retracted
//   ones greyed and struck through). History from REST (/api/bars, /api/events), then live:
//   forming and final bars of that timeframe, indicator values, events and their amendments.
// - Watchlist: last price and change of each symbol, live from the prices channel, on its own
//   WebSocket (a session's kinds apply to all its symbols: the chart's kinds are not wanted for
//   every watched symbol).
// - Connection state of both sockets: connecting, live, reconnecting, offline. A reconnect
//   resumes from the last channel positions (or reloads after a `reset`).
//
// Everything from the wire is shown with textContent, never parsed as HTML.
"use strict";

const params = new URLSearchParams(location.search);
const token = params.get("token"); // omitted in dev mode
const $ = (id) => document.getElementById(id);
// schemas/symbols.py's rule: only an all-lower-case entry is upper-cased (BACpL stays BACpL)
const normalise = (text) => { const v = text.trim(); return v === v.toLowerCase() ? v.toUpperCase() : v; };
const SYMBOL = /^[A-Z0-9][A-Za-z0-9.\-]{0,19}$/;
const TIMEFRAMES = { "1m": 60, "5m": 300, "15m": 900, "1h": 3600, "1d": 86400 }; // bar length, seconds
const HISTORY_BARS = 360; // bars of history loaded when a chart opens (6 hours of 1m, a year of 1d)
const EVENT_KINDS = ["highlow", "trend", "surge", "pattern", "alert"];
const MARKED_KINDS = new Set(["pattern", "alert"]);
const COLORS = { up: "#26a69a", down: "#ef5350", volumeUp: "#1f7a72", volumeDown: "#b23c3a", sma: "#f0b429",
                 ema: "#b388ff", bb: "#4fc3f7", neutral: "#90caf9", alert: "#ff7043", amended: "#ffb74d", retracted: "#6b7785" };
const WATCH_KEY = "tickstock.watchlist";

const state = {
  symbol: normalise(params.get("symbol") || ""),
  tf: params.get("timeframe") in TIMEFRAMES ? params.get("timeframe") : "1m",
  candles: new Map(), // bar start (s) -> {time, open, high, low, close, volume, final}
  lastBarTime: 0,
  indicators: new Map(), // bar start (s) -> indicator row
  events: new Map(), // id -> event record (latest revision)
  markers: [], // what the chart shows, for tests
  overlays: { sma: true, ema: true, bb: true },
  watch: [], // watched symbols, in order
  prices: new Map(), // symbol -> last Price message
  primed: new Set(), // symbols whose last price was asked from the history once
  connection: "connecting",
};
window.dashboard = state; // for tests and curious people

// ---------------------------------------------------------------- chart
const chart = LightweightCharts.createChart($("chart"), {
  autoSize: true,
  layout: { background: { color: "#172029" }, textColor: "#d8dee4", panes: { separatorColor: "#243039" } },
  grid: { vertLines: { color: "#243039" }, horzLines: { color: "#243039" } },
  timeScale: { timeVisible: true, secondsVisible: false },
});
state.chart = chart;
const candleSeries = chart.addSeries(LightweightCharts.CandlestickSeries, {
  upColor: COLORS.up, downColor: COLORS.down, borderVisible: false, wickUpColor: COLORS.up, wickDownColor: COLORS.down,
});
const volumeSeries = chart.addSeries(LightweightCharts.HistogramSeries, {
  priceFormat: { type: "volume" }, priceLineVisible: false, lastValueVisible: false,
}, 1);
chart.panes()[1].setHeight(110);
const line = (color, style = 0, lineWidth = 2) => chart.addSeries(LightweightCharts.LineSeries, {
  color, lineWidth, lineStyle: style, priceLineVisible: false, lastValueVisible: false, crosshairMarkerVisible: false,
});
const overlaySeries = { sma: line(COLORS.sma), ema: line(COLORS.ema), bb_upper: line(COLORS.bb), bb_middle: line(COLORS.bb, 2, 1), bb_lower: line(COLORS.bb) };
const overlayGroup = { sma: "sma", ema: "ema", bb_upper: "bb", bb_middle: "bb", bb_lower: "bb" };
const markerLayer = LightweightCharts.createSeriesMarkers(candleSeries, []);

const bucket = (ms) => { const s = TIMEFRAMES[state.tf]; return Math.floor(ms / 1000 / s) * s; };
const ofChart = (record) => record.symbol === state.symbol && (record.timeframe || "1m") === state.tf;

function status(text) { $("status").textContent = text; }

async function api(path, { method = "GET", body } = {}) {
  const headers = token ? { Authorization: "Bearer " + token } : {};
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  if (!response.ok) {
    const body = await response.json().catch(() => ({}));
    throw new Error(`${path}: ${response.status} ${JSON.stringify(body.detail || body)}`);
  }
  return response.json();
}

function query(values) { return new URLSearchParams(values).toString(); }

function historyStart() { return new Date(Date.now() - HISTORY_BARS * TIMEFRAMES[state.tf] * 1000); }

// ---- candles and volume
function volumeBar(c) {
  return { time: c.time, value: c.volume, color: c.close >= c.open ? COLORS.volumeUp : COLORS.volumeDown };
}

function redrawCandles() {
  const all = [...state.candles.values()].sort((a, b) => a.time - b.time);
  candleSeries.setData(all.map(({ time, open, high, low, close }) => ({ time, open, high, low, close })));
  volumeSeries.setData(all.map(volumeBar));
  state.lastBarTime = all.length ? all[all.length - 1].time : 0;
  $("chart").dataset.candles = String(all.length);
  drawMarkers(); // markers need their candles
}

function drawBar(bar) {
  if (!ofChart(bar) || bar.open === null) return; // volume-only minutes have no prices
  if (![bar.timestamp, bar.open, bar.high, bar.low, bar.close].every(Number.isFinite)) throw new Error("a bar without numeric prices");
  const time = Math.floor(bar.timestamp / 1000);
  const known = state.candles.get(time);
  if (known && known.final && bar.status === "live") return; // a late live copy never undoes a final bar
  const c = { time, open: bar.open, high: bar.high, low: bar.low, close: bar.close, volume: bar.volume, final: bar.status === "final" };
  state.candles.set(time, c);
  if (time >= state.lastBarTime) { // lightweight-charts updates only the newest bar in place
    candleSeries.update({ time, open: c.open, high: c.high, low: c.low, close: c.close });
    volumeSeries.update(volumeBar(c));
    state.lastBarTime = time;
    $("chart").dataset.candles = String(state.candles.size);
    if (!known) drawMarkers();
  } else {
    redrawCandles(); // a revision of an older bar
  }
  const when = new Date(bar.timestamp).toISOString().slice(state.tf === "1d" ? 0 : 11, state.tf === "1d" ? 10 : 16);
  $("last").textContent = `${c.final ? "final" : "forming"} ${when} UTC close ${bar.close}`;
}

async function loadBars() {
  state.candles.clear();
  redrawCandles();
  const end = new Date(Date.now() + TIMEFRAMES[state.tf] * 1000);
  try {
    const body = await api(`/api/bars?${query({ symbol: state.symbol, timeframe: state.tf, start: historyStart().toISOString(), end: end.toISOString() })}`);
    if (body.symbol !== state.symbol || body.timeframe !== state.tf) return; // the user moved on meanwhile
    for (const b of body.bars) {
      const time = Math.floor(Date.parse(b.timestamp) / 1000);
      if (b.open === null || state.candles.has(time)) continue; // a live message already brought it
      state.candles.set(time, { time, open: b.open, high: b.high, low: b.low, close: b.close, volume: b.volume, final: true });
    }
    redrawCandles();
    chart.timeScale().fitContent(); // a new symbol or timeframe: show all its history
  } catch (err) {
    status(String(err.message)); // e.g. 404 for a symbol the pipeline has not seen yet: live data still shows
  }
}

// ---- indicator overlays
// a gap (whitespace) where an indicator is not warm yet (null) or not a number
function point(row, field) { return Number.isFinite(row[field]) ? { time: row.time, value: row[field] } : { time: row.time }; }

function redrawOverlays() {
  const rows = [...state.indicators.values()].sort((a, b) => a.time - b.time);
  let drawn = 0;
  for (const [field, series] of Object.entries(overlaySeries)) {
    const on = state.overlays[overlayGroup[field]];
    const data = on ? rows.map((r) => point(r, field)) : [];
    series.setData(data);
    drawn += data.filter((p) => p.value !== undefined).length;
  }
  $("chart").dataset.overlays = String(drawn);
  legend(rows[rows.length - 1]);
}

function legend(row) {
  const parts = [];
  const add = (cls, text) => parts.push(Object.assign(document.createElement("span"), { className: cls, textContent: text }));
  const fmt = (v) => (typeof v === "number" ? v.toFixed(2) : "-");
  if (row) {
    if (state.overlays.sma) add("sma", `SMA ${fmt(row.sma)}`);
    if (state.overlays.ema) add("ema", `EMA ${fmt(row.ema)}`);
    if (state.overlays.bb) add("bb", `BB ${fmt(row.bb_lower)} / ${fmt(row.bb_middle)} / ${fmt(row.bb_upper)}`);
    if (typeof row.rsi === "number") add("rsi", `RSI ${fmt(row.rsi)}`);
  }
  $("legend").replaceChildren(...parts);
}

function addIndicators(row) {
  if (!ofChart(row)) return;
  const time = Math.floor(row.timestamp / 1000);
  const newest = time >= Math.max(0, ...state.indicators.keys());
  state.indicators.set(time, { ...row, time });
  if (!newest) { redrawOverlays(); return; }
  let drawn = Number($("chart").dataset.overlays);
  for (const [field, series] of Object.entries(overlaySeries)) {
    if (!state.overlays[overlayGroup[field]]) continue;
    const p = point({ ...row, time }, field);
    series.update(p);
    if (p.value !== undefined) drawn += 1;
  }
  $("chart").dataset.overlays = String(drawn);
  legend(state.indicators.get(time));
}

async function loadIndicators() {
  state.indicators.clear();
  redrawOverlays();
  try {
    const body = await api(`/api/events?${query({ symbol: state.symbol, kind: "indicator", timeframe: state.tf, since: historyStart().toISOString(), limit: 1000 })}`);
    for (const row of body.events) {
      const time = Math.floor(row.timestamp / 1000);
      if (ofChart(row) && !state.indicators.has(time)) state.indicators.set(time, { ...row, time });
    }
    redrawOverlays();
  } catch (err) {
    status(String(err.message));
  }
}

// ---- events: the feed and the markers
function label(e) { return e.type.replaceAll("_", " "); }
// U+0336 (combining long stroke) strikes the text through: a marker's text is drawn on a canvas
function struck(text) { return [...text].map((ch) => ch + "\u0336").join(""); }

function marker(e) {
  const { direction, status: st } = e;
  const shape = e.kind === "alert" ? "square" : direction === "up" ? "arrowUp" : direction === "down" ? "arrowDown" : "circle";
  const color = st === "retracted" ? COLORS.retracted : st === "amended" ? COLORS.amended
    : e.kind === "alert" ? COLORS.alert : COLORS[direction] || COLORS.neutral;
  const text = st === "retracted" ? struck(label(e)) : st === "amended" ? `${label(e)} (amended)` : label(e);
  return { id: e.id, time: bucket(e.timestamp), position: direction === "up" ? "belowBar" : "aboveBar", shape, color, text };
}

function drawMarkers() {
  state.markers = [...state.events.values()]
    .filter((e) => MARKED_KINDS.has(e.kind) && state.candles.has(bucket(e.timestamp)))
    .map(marker)
    .sort((a, b) => a.time - b.time);
  markerLayer.setMarkers(state.markers);
  $("chart").dataset.markers = String(state.markers.length);
}

function feedItem(e) {
  const li = document.createElement("li");
  li.className = e.direction || "neutral";
  li.dataset.kind = e.kind;
  li.dataset.id = e.id;
  li.dataset.status = e.status || "detected";
  const part = (tag, cls, text) => Object.assign(document.createElement(tag), { className: cls, textContent: text });
  const what = e.kind === "alert" ? e.message : `${label(e)} (confidence ${Number(e.confidence).toFixed(2)})`;
  li.append(part("span", "kind", e.kind), part("span", "what", what));
  if (e.status && e.status !== "detected") li.append(part("span", "status", `${e.status} r${e.revision}`));
  li.append(part("time", "", new Date(e.timestamp).toISOString().replace("T", " ").slice(0, 19) + " UTC"));
  return li;
}

function addEvent(e, redraw = true) {
  if (e.symbol !== state.symbol || (e.timeframe && e.timeframe !== state.tf)) return; // highlow has no timeframe
  const known = state.events.get(e.id);
  if (known && (known.revision || 0) > (e.revision || 0)) return; // an older copy (a replay) never undoes an amendment
  state.events.set(e.id, e);
  const feed = $("feed");
  const li = feedItem(e);
  const old = feed.querySelector(`li[data-id="${CSS.escape(e.id)}"]`);
  if (old) old.replaceWith(li); else feed.prepend(li);
  while (feed.children.length > 200) {
    state.events.delete(feed.lastChild.dataset.id);
    feed.lastChild.remove();
  }
  if (redraw && MARKED_KINDS.has(e.kind)) drawMarkers();
}

async function loadEvents() {
  state.events.clear();
  $("feed").replaceChildren();
  drawMarkers();
  try {
    const body = await api(`/api/events?${query({ symbol: state.symbol, timeframe: state.tf, since: historyStart().toISOString(), limit: 200 })}`);
    for (const e of body.events.reverse()) addEvent(e, false);
    drawMarkers();
  } catch (err) {
    status(String(err.message));
  }
}

// ---------------------------------------------------------------- sockets
// One WebSocket with reconnects (backoff) and resume: it keeps each channel's last position and
// sends those of its symbols back when it subscribes again.
class Feed {
  constructor(name, { onOpen, onData, onReset, onSubscribed = () => {}, onWatchlist = () => {} }) {
    Object.assign(this, { name, onOpen, onData, onReset, onSubscribed, onWatchlist, ws: null, positions: {}, retry: 500, failures: 0, open: false, opened: false, granted: [], subscribed: null });
  }

  connect() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const ws = new WebSocket(`${scheme}://${location.host}/ws${token ? "?token=" + encodeURIComponent(token) : ""}`);
    this.ws = ws;
    ws.onmessage = (event) => this.receive(JSON.parse(event.data));
    ws.onclose = (event) => {
      if (this.ws !== ws) return;
      this.failures += 1;
      this.open = false;
      const why = event.code === 1000 ? "" : ` (${event.code}${event.reason ? ": " + event.reason : ""})`;
      status(`${this.name}: disconnected${why}, retrying in ${(this.retry / 1000).toFixed(1)} s`);
      showConnection();
      setTimeout(() => this.connect(), this.retry);
      this.retry = Math.min(this.retry * 2, 15_000);
    };
  }

  get isOpen() { return this.ws !== null && this.ws.readyState === WebSocket.OPEN && this.open; }

  send(message) { if (this.isOpen) this.ws.send(JSON.stringify(message)); }

  // the positions of `symbols`' channels (and the shared indicator channel), to resume from
  resumeFrom(symbols) {
    const out = {};
    for (const [channel, pos] of Object.entries(this.positions)) {
      if (channel.endsWith(":indicators:streaming") || symbols.some((s) => channel.endsWith("." + s))) out[channel] = pos;
    }
    return out;
  }

  receive(m) {
    if (m.type === "welcome") {
      this.granted = m.kinds;
      this.open = true;
      this.opened = true;
      this.failures = 0;
      this.retry = 500;
      showConnection();
      this.onOpen(this);
    } else if (m.type === "batch") {
      for (const { channel, data } of m.messages) {
        this.positions[channel] = { epoch: data.epoch, offset: data.offset };
        try {
          this.onData(channel, data);
        } catch (err) { // one unreadable message must not cost the rest of the batch
          status(`${this.name}: skipped a message on ${channel}: ${err.message}`);
        }
      }
    } else if (m.type === "subscribed") {
      for (const [channel, pos] of Object.entries(m.positions)) {
        const known = this.positions[channel];
        if (!known || known.epoch !== pos.epoch) this.positions[channel] = pos;
      }
      this.subscribed = { symbols: m.symbols, kinds: m.kinds, timeframes: m.timeframes };
      this.onSubscribed(m);
      const bars = m.kinds.includes("live") || m.kinds.includes("bar") ? ` (${m.timeframes.join(", ")})` : "";
      status(`${this.name}: subscribed to ${m.symbols.join(", ") || "nothing"}${bars}`);
    } else if (m.type === "reset") {
      this.positions[m.channel] = { epoch: m.epoch, offset: m.offset };
      status(`${this.name}: missed too much on ${m.channel}: reloading`);
      this.onReset(m.channel);
    } else if (m.type === "watchlist") {
      this.onWatchlist(m);
    } else if (m.type === "error") {
      status(`${this.name}: gateway: ${m.code}: ${m.message}`);
    }
  }

  // the kinds of `wanted` the token grants (subscribing to another would be refused as a whole)
  kinds(wanted) { return wanted.filter((k) => this.granted.includes(k)); }
}

// connecting (never open yet), live (both open), reconnecting (one was open or has failed), offline
// (the browser says so, or a socket failed 6 times in a row: about 30 s of backoff)
function showConnection() {
  const down = [chartFeed, watchFeed].filter((f) => !f.isOpen);
  let kind = "live";
  if (!navigator.onLine || down.some((f) => f.failures >= 6)) kind = "offline";
  else if (down.some((f) => f.opened || f.failures > 0)) kind = "reconnecting";
  else if (down.length) kind = "connecting";
  state.connection = kind;
  const el = $("connection");
  el.className = "state " + kind;
  el.dataset.state = kind;
  el.textContent = kind;
}
const chartKinds = () => chartFeed.kinds(["live", "bar", "indicator", ...EVENT_KINDS]);

function subscribeChart(resume) {
  chartFeed.send({ type: "subscribe", symbols: [state.symbol], kinds: chartKinds(), timeframes: [state.tf],
                   positions: resume ? chartFeed.resumeFrom([state.symbol]) : {} });
}

const chartFeed = new Feed("chart", {
  onOpen: () => subscribeChart(true),
  onData: (channel, data) => {
    if (data.kind === undefined) drawBar(data);
    else if (data.kind === "indicator") addIndicators(data);
    else addEvent(data);
  },
  onReset: (channel) => {
    if (channel.endsWith(":indicators:streaming")) loadIndicators();
    else if (channel.includes(".events.")) loadEvents();
    else loadBars();
  },
});

// ---------------------------------------------------------------- watchlist
// Kept on the server (`/api/watchlists/{name}`, followed with `subscribe` `watchlist`: a change
// on another device comes back as a `watchlist` message) when the gateway serves watchlists;
// otherwise kept in this browser (localStorage) and subscribed by symbol.
const LIST_NAME = /^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$/;
const watchlist = { server: false, name: params.get("watchlist") || "default" };

function priceChannelSymbol(channel) {
  const at = channel.lastIndexOf(".market.prices.");
  return at < 0 ? null : channel.slice(at + ".market.prices.".length);
}

const watchFeed = new Feed("watchlist", {
  onOpen: (feed) => {
    if (!feed.granted.includes("price")) { $("watch-source").textContent = "(your token does not grant prices)"; return; }
    const positions = feed.resumeFrom(state.watch);
    if (watchlist.server) feed.send({ type: "subscribe", watchlist: watchlist.name, kinds: ["price"], positions });
    else if (state.watch.length) feed.send({ type: "subscribe", symbols: state.watch, kinds: ["price"], positions });
  },
  onData: (channel, data) => { if (typeof data.price === "number") showPrice(data); },
  onReset: () => {}, // prices need no reload: the next one replaces the row
  onSubscribed: (m) => {
    if (m.watchlist) listChanged(m.watchlist);
    primePrices(m.positions);
  },
  onWatchlist: (m) => { // the followed list changed (here or on another device)
    if (m.name !== watchlist.name) return;
    listChanged(m);
    primePrices(m.positions);
  },
});
state.feeds = { chart: chartFeed, watchlist: watchFeed };

function listChanged(list) {
  state.watch = list.symbols.filter((s) => typeof s === "string" && SYMBOL.test(s));
  for (const s of [...state.prices.keys()]) if (!state.watch.includes(s)) state.prices.delete(s);
  renderWatchlist();
  $("watch-source").textContent = `(${watchlist.name}, on the server${list.withheld ? `; ${list.withheld} not granted` : ""})`;
}

// A symbol just added has no price until its next trade: ask once for the channel's last
// message from its history (resume from one before the current offset), if it is still kept.
function primePrices(positions) {
  const last = {};
  for (const [channel, pos] of Object.entries(positions || {})) {
    const symbol = priceChannelSymbol(channel);
    if (symbol === null || state.primed.has(symbol)) continue;
    state.primed.add(symbol);
    if (pos.offset > 0 && !state.prices.has(symbol)) last[channel] = { epoch: pos.epoch, offset: pos.offset - 1 };
  }
  if (!Object.keys(last).length) return;
  // by the list when following one: a symbol subscribed by name would stay after leaving the list
  const target = watchlist.server ? { watchlist: watchlist.name } : { symbols: Object.keys(last).map(priceChannelSymbol) };
  watchFeed.send({ type: "subscribe", ...target, kinds: ["price"], positions: last });
}

function formatPrice(v) { return typeof v === "number" ? v.toFixed(Math.abs(v) < 1 ? 4 : 2) : "-"; }
function signed(v, digits) { return typeof v === "number" ? (v > 0 ? "+" : "") + v.toFixed(digits) : "-"; }

function watchRow(symbol) {
  const tr = document.createElement("tr");
  tr.dataset.symbol = symbol;
  for (const cls of ["symbol", "last", "change", "pct"]) tr.append(Object.assign(document.createElement("td"), { className: cls, textContent: "-" }));
  tr.querySelector(".symbol").textContent = symbol;
  const remove = Object.assign(document.createElement("button"), { className: "remove", type: "button", textContent: "\u00d7", title: "remove" });
  remove.addEventListener("click", (event) => { event.stopPropagation(); unwatch(symbol); });
  tr.append(Object.assign(document.createElement("td"), { className: "actions" }));
  tr.lastChild.append(remove);
  tr.addEventListener("click", () => show(symbol));
  return tr;
}

function renderWatchlist() {
  $("watchlist").tBodies[0].replaceChildren(...state.watch.map((s) => {
    const tr = watchRow(s);
    tr.classList.toggle("current", s === state.symbol);
    return tr;
  }));
  for (const p of state.prices.values()) showPrice(p);
}

function showPrice(p) {
  if (!state.watch.includes(p.symbol)) return;
  state.prices.set(p.symbol, p);
  const tr = $("watchlist").querySelector(`tr[data-symbol="${CSS.escape(p.symbol)}"]`);
  if (!tr) return;
  tr.querySelector(".last").textContent = formatPrice(p.price);
  tr.querySelector(".change").textContent = signed(p.change, 2);
  tr.querySelector(".pct").textContent = signed(p.change_pct, 2) + "%";
  tr.classList.toggle("up", p.change > 0);
  tr.classList.toggle("down", p.change < 0);
  tr.dataset.updated = String(p.timestamp);
}

// the server's list replaced by `symbols`; its notice (the `watchlist` message) redraws the panel
async function storeList(symbols) {
  try {
    listChanged(await api(`/api/watchlists/${encodeURIComponent(watchlist.name)}`, { method: "PUT", body: { symbols } }));
  } catch (err) {
    status(String(err.message));
  }
}

function saveLocally() { try { localStorage.setItem(WATCH_KEY, JSON.stringify(state.watch)); } catch { /* private mode: keep it in memory */ } }

function watch(symbol) {
  if (!SYMBOL.test(symbol) || state.watch.includes(symbol) || state.watch.length >= 500) return;
  if (watchlist.server) { storeList([...state.watch, symbol]); return; }
  state.watch.push(symbol);
  saveLocally();
  renderWatchlist();
  watchFeed.send({ type: "subscribe", symbols: [symbol], kinds: ["price"] });
}

function unwatch(symbol) {
  if (watchlist.server) { storeList(state.watch.filter((s) => s !== symbol)); return; }
  state.watch = state.watch.filter((s) => s !== symbol);
  state.prices.delete(symbol);
  saveLocally();
  renderWatchlist();
  watchFeed.send({ type: "unsubscribe", symbols: [symbol] });
}

// The server's list of that name (created from the busiest symbols on a first visit), or, when
// the gateway keeps no watchlists for this token, this browser's.
async function initialWatchlist(busiest) {
  const fromUrl = (params.get("watch") || "").split(",").map(normalise).filter((s) => SYMBOL.test(s));
  if (LIST_NAME.test(watchlist.name)) {
    try {
      const mine = await api("/api/watchlists");
      const found = mine.watchlists.find((l) => l.name === watchlist.name);
      watchlist.server = true;
      if (found) listChanged(found);
      else await storeList((fromUrl.length ? fromUrl : [state.symbol, ...busiest.slice(0, 7)]).filter((s, i, all) => all.indexOf(s) === i));
      return;
    } catch (err) {
      watchlist.server = false;
      status(`watchlists on the server: ${err.message}; keeping it in this browser`);
    }
  }
  let saved = [];
  try { saved = JSON.parse(localStorage.getItem(WATCH_KEY) || "[]"); } catch { saved = []; }
  const list = fromUrl.length ? fromUrl : Array.isArray(saved) && saved.length ? saved : busiest.slice(0, 8);
  state.watch = [...new Set([...list.filter((s) => typeof s === "string" && SYMBOL.test(s)), state.symbol])].slice(0, 50);
  $("watch-source").textContent = "(this browser)";
  renderWatchlist();
}

// ---------------------------------------------------------------- controls
async function show(symbol, tf = state.tf) {
  if (!SYMBOL.test(symbol) || (symbol === state.symbol && tf === state.tf)) return;
  const previous = state.symbol;
  state.symbol = symbol;
  state.tf = tf;
  $("symbol").value = symbol;
  titles();
  renderWatchlist();
  if (previous !== symbol) chartFeed.send({ type: "unsubscribe", symbols: [previous] });
  subscribeChart(false);
  await Promise.all([loadBars(), loadIndicators(), loadEvents()]);
}

function titles() {
  $("title").textContent = state.symbol;
  $("tf-label").textContent = state.tf;
  for (const b of $("timeframes").querySelectorAll("button")) b.setAttribute("aria-pressed", String(b.dataset.tf === state.tf));
  const url = new URL(location.href);
  url.searchParams.set("symbol", state.symbol);
  url.searchParams.set("timeframe", state.tf);
  history.replaceState(null, "", url);
}

$("pick").addEventListener("submit", (event) => { event.preventDefault(); show(normalise($("symbol").value)); });
$("timeframes").addEventListener("click", (event) => { const tf = event.target.dataset.tf; if (tf in TIMEFRAMES) show(state.symbol, tf); });
$("overlays").addEventListener("change", (event) => { state.overlays[event.target.dataset.overlay] = event.target.checked; redrawOverlays(); });
$("watch-add").addEventListener("submit", (event) => { event.preventDefault(); watch(normalise($("watch-symbol").value)); $("watch-symbol").value = ""; });
addEventListener("online", showConnection);
addEventListener("offline", showConnection);
setInterval(() => { for (const f of [chartFeed, watchFeed]) f.send({ type: "ping" }); }, 15_000);

// The symbols trading now, busiest first: suggestions for the picker, the default symbol and watchlist.
async function start() {
  let busiest = [];
  try {
    busiest = (await api("/api/symbols?limit=500")).symbols;
    $("symbols").replaceChildren(...busiest.map((s) => Object.assign(document.createElement("option"), { value: s })));
  } catch (err) {
    status(String(err.message));
  }
  if (!state.symbol) state.symbol = busiest[0] || "AAPL";
  $("symbol").value = state.symbol;
  titles();
  await initialWatchlist(busiest);
  await Promise.all([loadBars(), loadIndicators(), loadEvents()]);
}

start().finally(() => { chartFeed.connect(); watchFeed.connect(); });
