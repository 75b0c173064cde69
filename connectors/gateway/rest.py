"""REST on the gateway: recent bars (the old system's shape), bar ranges, events and alerts.

FastAPI validates the query string (422 with the offending parameter) and writes the OpenAPI
document (`/openapi.json`); the checks FastAPI cannot express (time order, range size, unknown
symbols, grants) answer 400 / 403 / 404 with a `detail` that says what to change. Queries run on
an async psycopg pool; every one is parameterised, tables come from fixed mappings.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from psycopg import sql
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool
from pydantic import BaseModel

from connectors.analyst import TIMEFRAMES
from connectors.gateway.auth import Grant, Policy, Refused
from connectors.gateway.protocol import ALL
from connectors.gateway.protocol import SYMBOL_RE

SymbolQuery = Annotated[str, Query(min_length=1, max_length=20, description="ticker, e.g. AAPL", examples=["AAPL"])]
TIMEFRAME_MS = {"1m": 60_000, "5m": 300_000, "15m": 900_000, "1h": 3_600_000, "1d": 86_400_000}
EVENT_KINDS = ("highlow", "trend", "surge", "pattern", "alert")


class Tick(BaseModel):
    symbol: str
    timestamp: datetime
    open: float | None
    high: float | None
    low: float | None
    close: float | None
    volume: int


class RecentTicks(BaseModel):
    symbol: str
    count: int
    ticks: list[Tick]


class Symbols(BaseModel):
    count: int
    symbols: list[str]


class BarOut(Tick):
    vwap: float | None
    trades: int


class Bars(BaseModel):
    symbol: str
    timeframe: str
    start: datetime
    end: datetime
    count: int
    bars: list[BarOut]


class Events(BaseModel):
    symbol: str
    count: int
    events: list[dict[str, Any]]


def build_rest(pool: AsyncConnectionPool, policy: Policy, *, max_bars: int,
               health: Callable[[], dict], metrics: Callable[[], bytes], static_dir: str | None = None,
               vendor_dir: str | None = None) -> FastAPI:
    app = FastAPI(
        title="TickStock Streams gateway",
        version="1",
        description="Live delivery (WebSocket `/ws`, see README) and REST over the pipeline's tables.",
        docs_url=None,  # Swagger UI loads its assets from a CDN; /openapi.json is the document
        redoc_url=None,
    )

    def admitted(request: Request) -> Grant:
        auth = request.headers.get("authorization", "")
        token = auth[7:] if auth.lower().startswith("bearer ") else request.query_params.get("token")
        try:
            return policy.admit(token, request.headers.get("origin"), now=time.time())
        except Refused as exc:
            raise HTTPException(exc.status, exc.reason) from None

    def grant_for(request: Request, symbol: str) -> str:
        """The normalised symbol, after checking the caller's token allows it."""
        value = symbol.strip().upper()
        if not SYMBOL_RE.match(value):
            raise HTTPException(400, f"invalid symbol {symbol!r}: 1-20 letters, digits, '.' or '-'")
        grant = admitted(request)
        if not grant.allows_symbol(value):
            raise HTTPException(403, f"symbol {value} is not allowed by your token")
        return value

    async def known(conn: Any, symbol: str) -> None:
        row = await (await conn.execute("SELECT 1 FROM symbols WHERE symbol = %s", (symbol,))).fetchone()
        if row is None:
            raise HTTPException(404, f"unknown symbol {symbol} (never seen by the pipeline)")

    @app.get("/api/symbols", response_model=Symbols, summary="Symbols with a bar in the last hour, busiest minute first")
    async def symbols(request: Request, limit: Annotated[int, Query(ge=1, le=5000)] = 100) -> dict:
        grant = admitted(request)
        async with pool.connection() as conn:
            cur = await conn.execute(
                "SELECT symbol FROM latest_bars WHERE timestamp >= (SELECT max(timestamp) FROM latest_bars) - interval '1 hour'"
                " ORDER BY timestamp DESC, volume DESC LIMIT %s",
                (limit if ALL in grant.symbols else 5000,),
            )
            found = [row[0] for row in await cur.fetchall() if grant.allows_symbol(row[0])][:limit]
        return {"count": len(found), "symbols": found}

    @app.get("/api/ticks/recent", response_model=RecentTicks, summary="Latest 1-minute bars of a symbol, newest first")
    async def recent(request: Request, symbol: SymbolQuery,
                     since: Annotated[datetime | None, Query(description="ISO 8601; bars starting at or after")] = None,
                     limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> dict:
        symbol = grant_for(request, symbol)
        async with pool.connection() as conn:
            await known(conn, symbol)
            cur = await conn.execute(
                "SELECT symbol, timestamp, open::float8, high::float8, low::float8, close::float8, volume"
                " FROM ohlcv_1min WHERE symbol = %s AND timestamp >= %s ORDER BY timestamp DESC LIMIT %s",
                (symbol, _utc(since) if since else datetime(1970, 1, 1, tzinfo=UTC), limit),
            )
            cols = ("symbol", "timestamp", "open", "high", "low", "close", "volume")
            ticks = [dict(zip(cols, row, strict=True)) for row in await cur.fetchall()]
        return {"symbol": symbol, "count": len(ticks), "ticks": ticks}

    @app.get("/api/bars", response_model=Bars, summary="Bars of a symbol whose bucket starts in [start, end)")
    async def bars(request: Request, symbol: SymbolQuery,
                   start: Annotated[datetime, Query(description="ISO 8601, inclusive")],
                   end: Annotated[datetime, Query(description="ISO 8601, exclusive")],
                   timeframe: Literal["1m", "5m", "15m", "1h", "1d"] = "1m") -> dict:
        symbol = grant_for(request, symbol)
        start, end = _utc(start), _utc(end)
        if start >= end:
            raise HTTPException(400, f"start {start.isoformat()} must be before end {end.isoformat()}")
        buckets = (end - start) / timedelta(milliseconds=TIMEFRAME_MS[timeframe])
        if buckets > max_bars:
            raise HTTPException(
                400, f"range too large: {buckets:.0f} {timeframe} bars > {max_bars}; narrow it or use a coarser timeframe"
            )
        query = sql.SQL(
            "SELECT symbol, timestamp, open::float8, high::float8, low::float8, close::float8, volume,"
            " vwap::float8, trades FROM {table} WHERE symbol = %s AND timestamp >= %s AND timestamp < %s"
            " ORDER BY timestamp"
        ).format(table=sql.Identifier(TIMEFRAMES[timeframe]))
        async with pool.connection() as conn:
            await known(conn, symbol)
            conn.row_factory = dict_row  # type: ignore[assignment]
            rows = await (await conn.execute(query, (symbol, start, end))).fetchall()
        return {"symbol": symbol, "timeframe": timeframe, "start": start, "end": end, "count": len(rows), "bars": rows}

    @app.get("/api/events", response_model=Events, summary="Detection events and alerts of a symbol, newest first")
    async def events(request: Request, symbol: SymbolQuery,
                     kind: Annotated[list[Literal["highlow", "trend", "surge", "pattern", "alert"]] | None,
                                     Query(description="repeat for several; default all")] = None,
                     since: Annotated[datetime | None, Query(description="ISO 8601; default 24 hours ago")] = None,
                     limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> dict:
        symbol = grant_for(request, symbol)
        since_utc = _utc(since) if since else datetime.now(UTC) - timedelta(days=1)
        if since_utc > datetime.now(UTC) + timedelta(minutes=5):
            raise HTTPException(400, f"since {since_utc.isoformat()} is in the future")
        kinds = sorted(set(kind or EVENT_KINDS))
        detection = [k for k in kinds if k != "alert"]
        out: list[dict[str, Any]] = []
        async with pool.connection() as conn:
            conn.row_factory = dict_row  # type: ignore[assignment]
            if detection:
                rows = await (await conn.execute(
                    "SELECT kind, id, type, symbol, timestamp, timeframe, direction, confidence, price, revision,"
                    " params, detail FROM events WHERE symbol = %s AND timestamp >= %s AND kind = ANY(%s)"
                    " ORDER BY timestamp DESC LIMIT %s", (symbol, since_utc, detection, limit))).fetchall()
                out += [_event(r) for r in rows]
            if "alert" in kinds:
                rows = await (await conn.execute(
                    "SELECT 'alert' AS kind, id, rule AS type, symbol, timestamp, timeframe, direction, confidence,"
                    " severity, indicator, value, threshold, message, revision, params FROM alerts"
                    " WHERE symbol = %s AND timestamp >= %s ORDER BY timestamp DESC LIMIT %s",
                    (symbol, since_utc, limit))).fetchall()
                out += [_alert(r) for r in rows]
        out.sort(key=lambda e: e["timestamp"], reverse=True)
        out = out[:limit]
        return {"symbol": symbol, "count": len(out), "events": out}

    @app.get("/healthz", summary="healthy / degraded / error, the reason and counters")
    async def healthz() -> JSONResponse:
        report = health()
        return JSONResponse(report, status_code=503 if report["status"] == "error" else 200)

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response)
    async def prometheus() -> Response:
        return Response(metrics(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/", include_in_schema=False)
    async def root() -> RedirectResponse:
        return RedirectResponse("/dashboard/")

    if static_dir is not None:
        from starlette.staticfiles import StaticFiles

        app.mount("/dashboard", StaticFiles(directory=static_dir, html=True), name="dashboard")
    if vendor_dir is not None:
        from starlette.staticfiles import StaticFiles

        app.mount("/vendor", StaticFiles(directory=vendor_dir, check_dir=False), name="vendor")
    return app


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def _event(row: dict) -> dict:
    """An `events` row in the shape of its schemas/events.py record (`detail` spread out)."""
    detail = row.pop("detail") or {}
    price = row.pop("price")
    out = {**row, **detail, "timestamp": _ms(row["timestamp"])}
    if price is not None:
        out.setdefault("price", price)
    if out.get("timeframe") is None:
        out.pop("timeframe", None)
    return out


def _alert(row: dict) -> dict:
    return {**row, "timestamp": _ms(row["timestamp"])}
