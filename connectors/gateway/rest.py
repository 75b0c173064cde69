"""REST on the gateway: recent bars (the old system's shape), bar ranges, events and alerts.

FastAPI validates the query string (422 with the offending parameter) and writes the OpenAPI
document (`/openapi.json`), which lists every status code each operation can answer; the checks
FastAPI cannot express answer 400 / 401 / 403 / 404 / 503 with a `detail` that says what to change:

- 400: a malformed symbol, an unknown or repeated parameter, `start` not before `end`, a range
  over the bar limit, a `since` in the future;
- 401: no, an invalid or an expired token; 403: a symbol or kind the token does not grant, or a
  browser Origin that is not allowed;
- 404: a symbol the pipeline has never seen; 422: an unparseable time (RFC 3339 only), an
  unknown timeframe or kind, a `limit` out of range;
- 503: PostgreSQL unreachable or too slow (with Retry-After); REST recovers by itself when it is back.

Grants: every /api endpoint needs a token (unless development mode) that grants the symbol and
a kind: /api/bars and /api/ticks/recent need `bar`; /api/symbols `bar` or `live`; /api/events
returns only the kinds the token grants (asking for another kind is a 403). /healthz and /metrics
need no token (probes and scrapers).

Times are RFC 3339 (`2026-11-02T14:30:00Z`, `...+01:00`). A time whose UTC equivalent falls
outside years 1-9999 is clamped to the first/last representable instant: it is before/after
every stored row, so the answer is the same. Queries run on an async psycopg pool; every one is
parameterised, tables come from fixed mappings.
"""


import logging
import re
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

import psycopg
from fastapi import Depends, FastAPI, HTTPException, Query, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.security import APIKeyQuery, HTTPBearer
from psycopg import sql
from starlette.requests import HTTPConnection
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from pydantic import BaseModel

from connectors.analyst import TIMEFRAMES
from connectors.gateway.auth import Grant, Policy, Refused
from connectors.gateway.protocol import safe_text
from schemas.symbols import MAX_SYMBOL_LENGTH, InvalidSymbol, normalise

log = logging.getLogger("tickstock.gateway.rest")

# What schemas/symbols.py `normalise` accepts, as one pattern for the OpenAPI document: a symbol
# as Polygon spells it, or an all-lower-case one (upper-cased by the gateway).
SYMBOL_QUERY_PATTERN = r"^(?:[A-Z0-9][A-Za-z0-9.\-]{0,19}|[a-z0-9][a-z0-9.\-]{0,19})$"
SymbolQuery = Annotated[str, Query(min_length=1, max_length=MAX_SYMBOL_LENGTH, examples=["AAPL"],
                                   description="ticker as Polygon spells it (BRK.A, BACpL); all lower case is upper-cased",
                                   json_schema_extra={"pattern": SYMBOL_QUERY_PATTERN})]


def _time_query(description: str) -> Any:
    return Query(min_length=20, max_length=40, examples=["2026-11-02T14:30:00Z"], description=description,
                 json_schema_extra={"format": "date-time"})


TIMEFRAME_MS = {"1m": 60_000, "5m": 300_000, "15m": 900_000, "1h": 3_600_000, "1d": 86_400_000}
EVENT_KINDS = ("highlow", "trend", "surge", "pattern", "alert")
BAR_KIND = "bar"
FUTURE_SLACK = timedelta(minutes=5)
RETRY_AFTER_S = 5


class Error(BaseModel):
    detail: str


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


class TaskReport(BaseModel):
    running: bool
    restarts: int
    last_error: str | None
    last_error_at: float | None


class Health(BaseModel):
    status: Literal["healthy", "degraded", "error"]
    reason: str
    redis_lag_ms: float
    uptime_s: float
    dev_mode: bool
    database: Literal["ok", "unreachable"]
    counters: dict[str, int]
    dropped_by_reason: dict[str, int]
    ignored_by_reason: dict[str, int]
    tasks: dict[str, TaskReport]


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    meaning = {
        400: "malformed symbol, unknown or repeated parameter, or a rule between parameters broken (the detail says which)",
        401: "missing, invalid or expired token",
        403: "the token does not grant this symbol or kind, or the browser Origin is not allowed",
        404: "a symbol the pipeline has never seen",
        503: "PostgreSQL unreachable or too slow: retry after the Retry-After seconds",
    }
    out: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        entry: dict[str, Any] = {"model": Error, "description": meaning[status]}
        if status == 401:
            entry["headers"] = {"WWW-Authenticate": {"schema": {"type": "string"}, "description": "Bearer"}}
        if status == 503:
            entry["headers"] = {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds"}}
        out[status] = entry
    return out


_RFC3339 = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt ]([0-9]{2}):([0-9]{2}):([0-9]{2})(\.[0-9]{1,12})?"
                      r"([Zz]|[+-][0-9]{2}:[0-9]{2})")
_FIRST = datetime.min.replace(tzinfo=UTC)
_LAST = datetime.max.replace(tzinfo=UTC)


def _invalid(name: str, text: str, why: str) -> RequestValidationError:
    return RequestValidationError([{"type": "value_error", "loc": ("query", name), "msg": why, "input": text[:60]}])


def parse_time(name: str, text: str) -> datetime:
    """An RFC 3339 date-time as an aware UTC datetime (clamped to years 1-9999), or a 422 naming `name`.

    >>> parse_time("since", "2026-11-02T14:30:00.5+01:00").isoformat()
    '2026-11-02T13:30:00.500000+00:00'
    >>> parse_time("since", "0001-01-01T00:00:00+05:00") == datetime.min.replace(tzinfo=UTC)
    True
    """
    m = _RFC3339.fullmatch(text)
    if m is None:
        raise _invalid(name, text, "must be an RFC 3339 date-time, e.g. 2026-11-02T14:30:00Z")
    year, month, day, hour, minute, second = (int(m[i]) for i in range(1, 7))
    micro = int((m[7][1:] + "000000")[:6]) if m[7] else 0
    if second == 60:  # a leap second: the last instant of its minute
        second, micro = 59, 999_999
    try:
        naive = datetime(year, month, day, hour, minute, second, micro)
    except ValueError as exc:
        raise _invalid(name, text, f"not a valid date-time: {exc}") from None
    offset_min = 0
    if m[8] not in ("Z", "z"):
        hours, minutes = int(m[8][1:3]), int(m[8][4:6])
        if hours > 23 or minutes > 59:
            raise _invalid(name, text, "the UTC offset must be at most 23:59")
        offset_min = (hours * 60 + minutes) * (1 if m[8][0] == "+" else -1)
    try:
        return (naive - timedelta(minutes=offset_min)).replace(tzinfo=UTC)
    except OverflowError:
        return _FIRST if offset_min > 0 else _LAST


class _BearerScheme(HTTPBearer):
    """`Authorization: Bearer` in the OpenAPI document; the token is read by `Policy.admit_request`.

    One reader for REST and the WebSocket handshake (auth.py), so this scheme only documents.
    """

    async def __call__(self, request: HTTPConnection) -> None:
        return None


class _QueryScheme(APIKeyQuery):
    """`?token=` in the OpenAPI document; read, like the header, by `Policy.admit_request`."""

    async def __call__(self, request: HTTPConnection) -> None:
        return None


def build_rest(pool: AsyncConnectionPool, policy: Policy, *, max_bars: int,
               health: Callable[[], dict], metrics: Callable[[], bytes], static_dir: str | None = None,
               vendor_dir: str | None = None, db_timeout_s: float = 5.0,
               on_database_error: Callable[[], None] | None = None) -> FastAPI:
    app = FastAPI(
        title="TickStock Streams gateway",
        version="1",
        description=(
            "Live delivery (WebSocket `/ws`, see README) and REST over the pipeline's tables. Every /api operation "
            "needs a token (HS256 JWT from `python -m connectors.gateway token`) as `Authorization: Bearer` or "
            "`?token=`, granting the symbol and the kind it reads; unknown or repeated parameters are refused (400). "
            "Only GET is served: any other method answers 405 with an `Allow` header."
        ),
        docs_url=None,  # Swagger UI loads its assets from a CDN; /openapi.json is the document
        redoc_url=None,
    )
    bearer = _BearerScheme(auto_error=False, scheme_name="HTTPBearer",
                           description="a token from `python -m connectors.gateway token`")
    token_query = _QueryScheme(name="token", auto_error=False, scheme_name="APIKeyQuery",
                               description="the same token, for browsers")

    def admitted(request: Request, _bearer: Annotated[None, Security(bearer)],
                 _query: Annotated[None, Security(token_query)]) -> Grant:
        try:
            return policy.admit_request(authorization=request.headers.getlist("authorization"),
                                        tokens=request.query_params.getlist("token"),
                                        origins=request.headers.getlist("origin"), now=time.time())
        except Refused as exc:
            headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
            raise HTTPException(exc.status, exc.reason, headers=headers) from None

    Admitted = Annotated[Grant, Depends(admitted)]

    def only(*names: str, repeatable: tuple[str, ...] = ()) -> Any:
        """A dependency refusing parameters the endpoint does not take, or scalars given twice."""
        allowed = set(names) | set(repeatable) | {"token"}
        expected = ", ".join(sorted(set(names) | set(repeatable)))

        def check(request: Request) -> None:
            seen = Counter(k for k, _ in request.query_params.multi_items())
            unknown = sorted(k for k in seen if k not in allowed)
            if unknown:
                shown = ", ".join(safe_text(repr(k), 40) for k in unknown[:5])
                raise HTTPException(400, f"unknown parameter(s) {shown}; this endpoint takes {expected or 'none'}")
            repeated = sorted(k for k, n in seen.items() if n > 1 and k not in repeatable)
            if repeated:
                raise HTTPException(400, f"parameter(s) {', '.join(repeated)} given more than once; give each once")

        return Depends(check)

    def symbol_for(grant: Grant, symbol: str, *kinds: str) -> str:
        """The normalised symbol, after checking the grant allows it and one of `kinds`."""
        try:
            value = normalise(symbol)
        except InvalidSymbol as exc:
            raise HTTPException(400, safe_text(str(exc))) from None
        if not grant.allows_symbol(value):
            raise HTTPException(403, f"symbol {value} is not allowed by your token")
        if kinds and not any(grant.allows_kind(k) for k in kinds):
            raise HTTPException(403, f"this endpoint needs kind {' or '.join(kinds)}, which your token does not grant")
        return value

    @asynccontextmanager
    async def database() -> AsyncIterator[psycopg.AsyncConnection]:
        """A pooled connection; PostgreSQL down or too slow is a 503 with Retry-After, not a 500."""
        try:
            async with pool.connection(timeout=db_timeout_s) as conn:
                yield conn
        except HTTPException:
            raise
        except (PoolTimeout, psycopg.OperationalError, psycopg.InterfaceError) as exc:
            if on_database_error is not None:
                on_database_error()
            log.warning("PostgreSQL failed for a REST request: %s", type(exc).__name__)
            detail = ("PostgreSQL took too long to answer; retry later" if isinstance(exc, psycopg.errors.QueryCanceled)
                      else "PostgreSQL is unavailable; retry later")
            raise HTTPException(503, detail, headers={"Retry-After": str(RETRY_AFTER_S)}) from None

    async def known(conn: psycopg.AsyncConnection, symbol: str) -> None:
        row = await (await conn.execute("SELECT 1 FROM symbols WHERE symbol = %s", (symbol,))).fetchone()
        if row is None:
            raise HTTPException(404, f"unknown symbol {symbol} (never seen by the pipeline)")

    async def rows(conn: psycopg.AsyncConnection, query: Any, params: tuple) -> list[dict]:
        # row factory per cursor: a pooled connection must not carry it to the next request
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute(query, params)
        return await cur.fetchall()

    @app.get("/api/symbols", response_model=Symbols, responses=_errors(400, 401, 403, 503),
             summary="Symbols with a bar in the last hour, busiest minute first (needs kind bar or live)")
    async def symbols(grant: Admitted, _: Annotated[None, only("limit")],
                      limit: Annotated[int, Query(ge=1, le=5000)] = 100) -> dict:
        if not (grant.allows_kind("bar") or grant.allows_kind("live")):
            raise HTTPException(403, "this endpoint needs kind bar or live, which your token does not grant")
        everything = "*" in grant.symbols
        async with database() as conn:
            found = await rows(conn,
                "SELECT symbol FROM latest_bars WHERE timestamp >= (SELECT max(timestamp) FROM latest_bars) - interval '1 hour'"
                " ORDER BY timestamp DESC, volume DESC LIMIT %s", (limit if everything else 5000,))
        names = [r["symbol"] for r in found if grant.allows_symbol(r["symbol"])][:limit]
        return {"count": len(names), "symbols": names}

    @app.get("/api/ticks/recent", response_model=RecentTicks, responses=_errors(400, 401, 403, 404, 503),
             summary="Latest 1-minute bars of a symbol, newest first (needs kind bar)")
    async def recent(grant: Admitted, _: Annotated[None, only("symbol", "since", "limit")], symbol: SymbolQuery,
                     since: Annotated[str | None, _time_query("RFC 3339; bars starting at or after")] = None,
                     limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> dict:
        symbol = symbol_for(grant, symbol, BAR_KIND)
        since_utc = parse_time("since", since) if since is not None else _FIRST
        async with database() as conn:
            await known(conn, symbol)
            ticks = await rows(conn,
                "SELECT symbol, timestamp, open::float8 AS open, high::float8 AS high, low::float8 AS low,"
                " close::float8 AS close, volume FROM ohlcv_1min WHERE symbol = %s AND timestamp >= %s"
                " ORDER BY timestamp DESC LIMIT %s", (symbol, since_utc, limit))
        return {"symbol": symbol, "count": len(ticks), "ticks": ticks}

    @app.get("/api/bars", response_model=Bars, responses=_errors(400, 401, 403, 404, 503),
             summary="Bars of a symbol whose bucket starts in [start, end) (needs kind bar)")
    async def bars(grant: Admitted, _: Annotated[None, only("symbol", "start", "end", "timeframe")], symbol: SymbolQuery,
                   start: Annotated[str, _time_query("RFC 3339, inclusive")],
                   end: Annotated[str, _time_query("RFC 3339, exclusive; after start")],
                   timeframe: Literal["1m", "5m", "15m", "1h", "1d"] = "1m") -> dict:
        symbol = symbol_for(grant, symbol, BAR_KIND)
        start_utc, end_utc = parse_time("start", start), parse_time("end", end)
        if start_utc >= end_utc:
            raise HTTPException(400, f"start {start_utc.isoformat()} must be before end {end_utc.isoformat()}")
        buckets = (end_utc - start_utc) / timedelta(milliseconds=TIMEFRAME_MS[timeframe])
        if buckets > max_bars:
            raise HTTPException(
                400, f"range too large: {buckets:.0f} {timeframe} bars > {max_bars}; narrow it or use a coarser timeframe"
            )
        query = sql.SQL(
            "SELECT symbol, timestamp, open::float8 AS open, high::float8 AS high, low::float8 AS low,"
            " close::float8 AS close, volume, vwap::float8 AS vwap, trades FROM {table}"
            " WHERE symbol = %s AND timestamp >= %s AND timestamp < %s ORDER BY timestamp"
        ).format(table=sql.Identifier(TIMEFRAMES[timeframe]))
        async with database() as conn:
            await known(conn, symbol)
            found = await rows(conn, query, (symbol, start_utc, end_utc))
        return {"symbol": symbol, "timeframe": timeframe, "start": start_utc, "end": end_utc, "count": len(found),
                "bars": found}

    @app.get("/api/events", response_model=Events, responses=_errors(400, 401, 403, 503),
             summary="Detection events and alerts of a symbol, newest first (the kinds the token grants)")
    async def events(grant: Admitted, _: Annotated[None, only("symbol", "since", "limit", repeatable=("kind",))],
                     symbol: SymbolQuery,
                     kind: Annotated[list[Literal["highlow", "trend", "surge", "pattern", "alert"]] | None,
                                     Query(description="repeat for several; default every kind the token grants",
                                           max_length=len(EVENT_KINDS) * 2)] = None,
                     since: Annotated[str | None, _time_query("RFC 3339; default 24 hours ago")] = None,
                     limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> dict:
        symbol = symbol_for(grant, symbol)
        if kind:
            refused = sorted(set(kind) - grant.kinds)
            if refused:
                raise HTTPException(403, f"kind(s) {', '.join(refused)} not allowed by your token")
            kinds = sorted(set(kind))
        else:
            kinds = [k for k in EVENT_KINDS if grant.allows_kind(k)]
            if not kinds:
                raise HTTPException(403, f"your token grants none of the event kinds ({', '.join(EVENT_KINDS)})")
        now = datetime.now(UTC)
        since_utc = parse_time("since", since) if since is not None else now - timedelta(days=1)
        if since_utc > now + FUTURE_SLACK:
            raise HTTPException(400, f"since {since_utc.isoformat()} is in the future")
        detection = [k for k in kinds if k != "alert"]
        out: list[dict[str, Any]] = []
        async with database() as conn:
            if detection:
                found = await rows(conn,
                    "SELECT kind, id, type, symbol, timestamp, timeframe, direction, confidence, price, revision,"
                    " params, detail FROM events WHERE symbol = %s AND timestamp >= %s AND kind = ANY(%s)"
                    " ORDER BY timestamp DESC LIMIT %s", (symbol, since_utc, detection, limit))
                out += [_event(r) for r in found]
            if "alert" in kinds:
                found = await rows(conn,
                    "SELECT 'alert' AS kind, id, rule AS type, symbol, timestamp, timeframe, direction, confidence,"
                    " severity, indicator, value, threshold, message, revision, params FROM alerts"
                    " WHERE symbol = %s AND timestamp >= %s ORDER BY timestamp DESC LIMIT %s",
                    (symbol, since_utc, limit))
                out += [_alert(r) for r in found]
        out.sort(key=lambda e: e["timestamp"], reverse=True)
        out = out[:limit]
        return {"symbol": symbol, "count": len(out), "events": out}

    @app.get("/healthz", summary="healthy / degraded / error, the reason and counters (no token needed)",
             responses={200: {"model": Health, "description": "healthy or degraded"},
                        503: {"model": Health, "description": "error: live delivery is down"}})
    async def healthz() -> JSONResponse:
        report = health()
        return JSONResponse(report, status_code=503 if report["status"] == "error" else 200)

    @app.get("/metrics", summary="Prometheus metrics (no token needed)", response_class=Response,
             responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}, "description": "Prometheus text"}})
    async def prometheus() -> Response:
        return Response(metrics(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/", include_in_schema=False)
    async def root() -> RedirectResponse:
        return RedirectResponse("/dashboard/")

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> JSONResponse:
        ref = uuid.uuid4().hex[:12]
        log.error("REST %s %s failed (ref %s)", request.method, request.url.path[:200], ref, exc_info=exc)
        return JSONResponse({"detail": f"internal error (ref {ref})"}, status_code=500)

    if static_dir is not None:
        from starlette.staticfiles import StaticFiles

        app.mount("/dashboard", StaticFiles(directory=static_dir, html=True), name="dashboard")
    if vendor_dir is not None:
        from starlette.staticfiles import StaticFiles

        app.mount("/vendor", StaticFiles(directory=vendor_dir, check_dir=False), name="vendor")

    def document() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            for path in doc["paths"].values():
                for operation in path.values():
                    if policy.dev_mode and "security" in operation:
                        operation["security"].append({})  # development mode: no token needed
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = document  # type: ignore[method-assign]
    return app


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
