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

This module is the REST surface only: parameters, grants and the status of each answer. The SQL
is in queries.py, the answers' models and documented errors in openapi.py, and the RFC 3339
times (`2026-11-02T14:30:00Z`, `...+01:00`) in rfc3339.py. Queries run on an async psycopg pool.
"""

# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations at runtime, and
# `Admitted` is local to build_rest.

import logging
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any, Literal

import psycopg
from fastapi import Depends, FastAPI, HTTPException, Path, Query, Request, Security
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import JSONResponse, RedirectResponse, Response
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import BaseRoute, Match
from starlette.staticfiles import StaticFiles

from connectors.gateway import queries
from connectors.gateway import watchlists as lists
from connectors.gateway.auth import Grant, Policy, Refused
from connectors.gateway.openapi import (
    Bars,
    BearerScheme,
    DocumentedAPI,
    Events,
    Health,
    QueryScheme,
    Ready,
    RecentTicks,
    SymbolList,
    Symbols,
    UniverseOut,
    WatchlistBody,
    WatchlistDeleted,
    WatchlistOut,
    Watchlists,
    WatchlistWritten,
    error_responses,
)
from connectors.gateway.protocol import ALL, safe_text
from connectors.gateway.rfc3339 import FIRST, parse_time
from connectors.postgres import watchlists as stored
from schemas.events import EVENT_TABLE_KINDS
from schemas.sessions import SessionName
from schemas.symbols import MAX_SYMBOL_LENGTH, SYMBOL_PATTERN, InvalidSymbol, normalise
from schemas.timeframes import TIMEFRAMES, TimeframeName
from schemas.watchlists import (
    MAX_NAME_LENGTH,
    MAX_UNIVERSE_SYMBOLS,
    MAX_WATCHLIST_SYMBOLS,
    MAX_WATCHLISTS,
    NAME_PATTERN,
    InvalidName,
    WatchlistChange,
    check_name,
)

log = logging.getLogger("tickstock.gateway.rest")

# What schemas/symbols.py `normalise` accepts, as one pattern for the OpenAPI document: a symbol
# as Polygon spells it, or the same in all lower case (upper-cased by the gateway).
SYMBOL_QUERY_PATTERN = f"^(?:{SYMBOL_PATTERN}|{SYMBOL_PATTERN.replace('A-Za-z', 'a-z').replace('A-Z', 'a-z')})$"
SymbolQuery = Annotated[
    str,
    Query(
        min_length=1,
        max_length=MAX_SYMBOL_LENGTH,
        examples=["AAPL"],
        description="ticker as Polygon spells it (BRK.A, BACpL); all lower case is upper-cased",
        json_schema_extra={"pattern": SYMBOL_QUERY_PATTERN},
    ),
]

ALERT_KIND = "alert"  # alerts have a table of their own (`alerts`)
INDICATOR_KIND = "indicator"  # so have indicator values (`indicator_values`): served when asked for
EVENT_KINDS: tuple[str, ...] = (*EVENT_TABLE_KINDS, ALERT_KIND)  # what /api/events serves by default
QUERY_KINDS: tuple[str, ...] = (*EVENT_KINDS, INDICATOR_KIND)  # what `kind` may name
if TYPE_CHECKING:
    EventKind = str
else:  # FastAPI validates and documents the kinds from the Literal, built from schemas' names
    EventKind = Literal[QUERY_KINDS]
BAR_KIND = "bar"
FUTURE_SLACK = timedelta(minutes=5)
RETRY_AFTER_S = 5


WatchlistName = Annotated[
    str,
    Path(
        min_length=1,
        max_length=MAX_NAME_LENGTH,
        examples=["tech"],
        description="the list's name: a letter or digit, then letters, digits, '_', '.' or '-' (at most 64)",
        json_schema_extra={"pattern": NAME_PATTERN},
    ),
]
NO_SUCH_LIST = {404: "you have no watchlist of that name"}


def _time_query(description: str) -> Any:
    return Query(
        min_length=20,
        max_length=40,
        examples=["2026-11-02T14:30:00Z"],
        description=description,
        json_schema_extra={"format": "date-time"},
    )


def build_rest(
    pool: AsyncConnectionPool,
    policy: Policy,
    *,
    max_bars: int,
    health: Callable[[], dict],
    metrics: Callable[[], bytes],
    readiness: Callable[[], dict] | None = None,
    static_dir: str | None = None,
    vendor_dir: str | None = None,
    db_timeout_s: float = 5.0,
    on_database_error: Callable[[], None] | None = None,
    announce: Callable[[WatchlistChange], Awaitable[bool]] | None = None,
    max_watchlists: int = MAX_WATCHLISTS,
) -> FastAPI:
    app = DocumentedAPI(
        dev_mode=policy.dev_mode,
        title="TickStock Streams gateway",
        version="1",
        description=(
            "Live delivery (WebSocket `/ws`, see README) and REST over the pipeline's tables. Every /api operation "
            "needs a token (HS256 JWT from `python -m connectors.gateway token`) as `Authorization: Bearer` or "
            "`?token=`, granting the symbol and the kind it reads; unknown or repeated parameters are refused (400). "
            "The user's watchlists and universe (`/api/watchlists`, `/api/users/universe`) are the token user's own, "
            "within the symbols the token grants; a PUT replaces the whole list. A method a path does not serve "
            "answers 405 with an `Allow` header."
        ),
        docs_url=None,  # Swagger UI loads its assets from a CDN; /openapi.json is the document
        redoc_url=None,
    )
    bearer = BearerScheme(
        auto_error=False, scheme_name="HTTPBearer", description="a token from `python -m connectors.gateway token`"
    )
    token_query = QueryScheme(
        name="token", auto_error=False, scheme_name="APIKeyQuery", description="the same token, for browsers"
    )

    def admitted(
        request: Request, _bearer: Annotated[None, Security(bearer)], _query: Annotated[None, Security(token_query)]
    ) -> Grant:
        try:
            return policy.admit_request(
                authorization=request.headers.getlist("authorization"),
                tokens=request.query_params.getlist("token"),
                origins=request.headers.getlist("origin"),
                now=time.time(),
            )
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
            detail = (
                "PostgreSQL took too long to answer; retry later"
                if isinstance(exc, psycopg.errors.QueryCanceled)
                else "PostgreSQL is unavailable; retry later"
            )
            raise HTTPException(503, detail, headers={"Retry-After": str(RETRY_AFTER_S)}) from None

    async def known(conn: psycopg.AsyncConnection, symbol: str) -> None:
        if not await queries.is_known(conn, symbol):
            raise HTTPException(404, f"unknown symbol {symbol} (never seen by the pipeline)")

    @app.get(
        "/api/symbols",
        response_model=Symbols,
        responses=error_responses(400, 401, 403, 503),
        summary="Symbols with a bar in the last hour, busiest minute first (needs kind bar or live)",
    )
    async def symbols(
        grant: Admitted, _: Annotated[None, only("limit")], limit: Annotated[int, Query(ge=1, le=5000)] = 100
    ) -> dict:
        if not (grant.allows_kind("bar") or grant.allows_kind("live")):
            raise HTTPException(403, "this endpoint needs kind bar or live, which your token does not grant")
        everything = ALL in grant.symbols
        async with database() as conn:
            found = await queries.busiest_symbols(conn, limit if everything else queries.BUSIEST_SCAN)
        names = [s for s in found if grant.allows_symbol(s)][:limit]
        return {"count": len(names), "symbols": names}

    @app.get(
        "/api/ticks/recent",
        response_model=RecentTicks,
        responses=error_responses(400, 401, 403, 404, 503),
        summary="Latest 1-minute bars of a symbol, newest first (needs kind bar)",
    )
    async def recent(
        grant: Admitted,
        _: Annotated[None, only("symbol", "since", "limit")],
        symbol: SymbolQuery,
        since: Annotated[str | None, _time_query("RFC 3339; bars starting at or after")] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> dict:
        symbol = symbol_for(grant, symbol, BAR_KIND)
        since_utc = parse_time("since", since) if since is not None else FIRST
        async with database() as conn:
            await known(conn, symbol)
            ticks = await queries.recent_ticks(conn, symbol, since_utc, limit)
        return {"symbol": symbol, "count": len(ticks), "ticks": ticks}

    @app.get(
        "/api/bars",
        response_model=Bars,
        responses=error_responses(400, 401, 403, 404, 503),
        summary="Bars of a symbol whose bucket starts in [start, end) (needs kind bar)",
    )
    async def bars(
        grant: Admitted,
        _: Annotated[None, only("symbol", "start", "end", "timeframe", "session")],
        symbol: SymbolQuery,
        start: Annotated[str, _time_query("RFC 3339, inclusive")],
        end: Annotated[str, _time_query("RFC 3339, exclusive; after start")],
        timeframe: TimeframeName = "1m",
        session: Annotated[
            SessionName | None,
            Query(description="with timeframe 1d: US/Eastern trading days, 09:30-16:00 or 04:00-20:00 New York"),
        ] = None,
    ) -> dict:
        symbol = symbol_for(grant, symbol, BAR_KIND)
        start_utc, end_utc = parse_time("start", start), parse_time("end", end)
        if start_utc >= end_utc:
            raise HTTPException(400, f"start {start_utc.isoformat()} must be before end {end_utc.isoformat()}")
        if session is not None and timeframe != "1d":
            raise HTTPException(400, f"session {session} has daily bars: use timeframe 1d, not {timeframe}")
        frame = TIMEFRAMES[timeframe]
        buckets = (end_utc - start_utc) / timedelta(milliseconds=frame.ms)
        if buckets > max_bars:
            raise HTTPException(
                400, f"range too large: {buckets:.0f} {timeframe} bars > {max_bars}; narrow it or use a coarser timeframe"
            )
        async with database() as conn:
            await known(conn, symbol)
            found = await queries.bars(conn, frame, symbol, start_utc, end_utc, session)
        return {"symbol": symbol, "timeframe": timeframe, "session": session, "start": start_utc, "end": end_utc,
                "count": len(found), "bars": found}  # fmt: skip

    @app.get(
        "/api/events",
        response_model=Events,
        responses=error_responses(400, 401, 403, 503),
        summary="Detection events, alerts (and indicator values when asked) of a symbol, newest first (the kinds the token grants)",
    )
    async def events(
        grant: Admitted,
        _: Annotated[None, only("symbol", "since", "limit", "timeframe", repeatable=("kind",))],
        symbol: SymbolQuery,
        kind: Annotated[
            list[EventKind] | None,
            Query(
                description="repeat for several; default every kind the token grants but indicator",
                max_length=len(QUERY_KINDS) * 2,
            ),
        ] = None,
        since: Annotated[str | None, _time_query("RFC 3339; default 24 hours ago")] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        timeframe: Annotated[
            TimeframeName | None, Query(description="only rows of this timeframe (and those without one: highlow)")
        ] = None,
    ) -> dict:
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
        detection = [k for k in kinds if k in EVENT_TABLE_KINDS]
        out: list[dict[str, Any]] = []
        async with database() as conn:
            if detection:
                out += await queries.detection_events(conn, symbol, since_utc, detection, limit, timeframe)
            if ALERT_KIND in kinds:
                out += await queries.alerts(conn, symbol, since_utc, limit, timeframe)
            if INDICATOR_KIND in kinds:
                out += await queries.indicators(conn, symbol, since_utc, limit, timeframe)
        out.sort(key=lambda e: e["timestamp"], reverse=True)
        out = out[:limit]
        return {"symbol": symbol, "count": len(out), "events": out}

    async def checked_symbols(conn: psycopg.AsyncConnection, raw: list[str], grant: Grant) -> list[str]:
        """A body's symbols normalised, granted and known to the pipeline (400 / 403 naming the first offenders)."""
        try:
            symbols = lists.granted_symbols(raw, grant)
        except lists.ListRefused as exc:
            raise HTTPException(exc.status, exc.detail) from None
        unknown = await stored.unknown_symbols(conn, symbols)
        if unknown:
            shown = ", ".join(unknown[:20]) + (f" (and {len(unknown) - 20} more)" if len(unknown) > 20 else "")
            raise HTTPException(400, f"unknown symbol(s) {shown} (never seen by the pipeline)")
        return symbols

    def list_name(name: str) -> str:
        try:
            return check_name(name)
        except InvalidName as exc:
            raise HTTPException(400, safe_text(str(exc))) from None

    async def announced(change: WatchlistChange) -> bool:
        return False if announce is None else await announce(change)

    def shown(grant: Grant, found: stored.Watchlist) -> dict:
        symbols, withheld = lists.visible(found.symbols, grant)
        return {"name": found.name, "symbols": symbols, "revision": found.revision, "withheld": withheld}

    @app.get(
        "/api/watchlists",
        response_model=Watchlists,
        responses=error_responses(400, 401, 403, 503),
        summary="Your watchlists, by name (the symbols your token grants)",
    )
    async def watchlists(grant: Admitted, _: Annotated[None, only()]) -> dict:
        async with database() as conn:
            found = await stored.watchlists(conn, grant.user)
        return {
            "user": grant.user,
            "count": len(found),
            "max_watchlists": max_watchlists,
            "max_symbols": MAX_WATCHLIST_SYMBOLS,
            "watchlists": [shown(grant, w) for w in found],
        }

    @app.get(
        "/api/watchlists/{name}",
        response_model=WatchlistOut,
        responses=error_responses(400, 401, 403, 404, 503, meanings=NO_SUCH_LIST),
        summary="One of your watchlists (the symbols your token grants)",
    )
    async def watchlist(grant: Admitted, _: Annotated[None, only()], name: WatchlistName) -> dict:
        name = list_name(name)
        async with database() as conn:
            found = await stored.watchlist(conn, grant.user, name)
        if found is None:
            raise HTTPException(404, f"you have no watchlist {name!r}")
        return shown(grant, found)

    @app.put(
        "/api/watchlists/{name}",
        response_model=WatchlistWritten,
        status_code=200,
        responses={
            201: {"model": WatchlistWritten, "description": "created"},
            **error_responses(400, 401, 403, 409, 413, 503),
        },
        summary=f"Create or replace one of your watchlists: at most {MAX_WATCHLIST_SYMBOLS} symbols your token grants",
    )
    async def put_watchlist(
        grant: Admitted, _: Annotated[None, only()], name: WatchlistName, body: WatchlistBody
    ) -> JSONResponse:
        name = list_name(name)
        async with database() as conn:
            symbols = await checked_symbols(conn, body.symbols, grant)
            try:
                written, created = await stored.put_watchlist(conn, grant.user, name, symbols, max_lists=max_watchlists)
            except stored.TooManyWatchlists as exc:
                raise HTTPException(409, str(exc)) from None
        ok = await announced(WatchlistChange(user=grant.user, name=name, symbols=written.symbols, revision=written.revision))
        out = {**shown(grant, written), "created": created, "announced": ok}
        return JSONResponse(WatchlistWritten(**out).model_dump(), status_code=201 if created else 200)

    @app.delete(
        "/api/watchlists/{name}",
        response_model=WatchlistDeleted,
        responses=error_responses(400, 401, 403, 404, 503, meanings=NO_SUCH_LIST),
        summary="Delete one of your watchlists",
    )
    async def delete_watchlist(grant: Admitted, _: Annotated[None, only()], name: WatchlistName) -> dict:
        name = list_name(name)
        async with database() as conn:
            revision = await stored.delete_watchlist(conn, grant.user, name)
        if revision is None:
            raise HTTPException(404, f"you have no watchlist {name!r}")
        ok = await announced(WatchlistChange(user=grant.user, name=name, symbols=[], revision=revision, deleted=True))
        return {"name": name, "revision": revision, "deleted": True, "announced": ok}

    @app.get(
        "/api/users/universe",
        response_model=UniverseOut,
        responses=error_responses(400, 401, 403, 503),
        summary="Your symbol universe (the symbols your token grants; empty until set)",
    )
    async def universe(grant: Admitted, _: Annotated[None, only()]) -> dict:
        async with database() as conn:
            found = await stored.universe(conn, grant.user)
        symbols, withheld = lists.visible(found.symbols, grant)
        return {
            "user": grant.user,
            "symbols": symbols,
            "revision": found.revision,
            "withheld": withheld,
            "max_symbols": MAX_UNIVERSE_SYMBOLS,
        }

    @app.put(
        "/api/users/universe",
        response_model=UniverseOut,
        responses=error_responses(400, 401, 403, 413, 503),
        summary=f"Replace your symbol universe: at most {MAX_UNIVERSE_SYMBOLS} symbols your token grants",
    )
    async def put_universe(grant: Admitted, _: Annotated[None, only()], body: SymbolList) -> dict:
        async with database() as conn:
            symbols = await checked_symbols(conn, body.symbols, grant)
            written = await stored.put_universe(conn, grant.user, symbols)
        return {
            "user": grant.user,
            "symbols": written.symbols,
            "revision": written.revision,
            "withheld": 0,
            "max_symbols": MAX_UNIVERSE_SYMBOLS,
        }

    @app.get(
        "/healthz",
        summary="healthy / degraded / error, the reason and counters (no token needed)",
        responses={
            200: {"model": Health, "description": "healthy or degraded"},
            503: {"model": Health, "description": "error: live delivery is down"},
        },
    )
    async def healthz() -> JSONResponse:
        report = health()
        return JSONResponse(report, status_code=503 if report["status"] == "error" else 200)

    @app.get(
        "/readyz",
        summary="ready to take clients: Redis delivers, PostgreSQL answers, the tasks run (no token needed)",
        responses={
            200: {"model": Ready, "description": "ready"},
            503: {"model": Ready, "description": "not ready: the failing conditions say why"},
        },
    )
    async def readyz() -> JSONResponse:
        report = readiness() if readiness is not None else {"service": "gateway", "ready": True, "conditions": {}, "failing": {}}
        return JSONResponse(report, status_code=200 if report["ready"] else 503)

    @app.get(
        "/metrics",
        summary="Prometheus metrics (no token needed)",
        response_class=Response,
        responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}, "description": "Prometheus text"}},
    )
    async def prometheus() -> Response:
        return Response(metrics(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/", include_in_schema=False)
    async def root() -> RedirectResponse:
        return RedirectResponse("/dashboard/")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        """FastAPI's answer, except that a 405's `Allow` lists every method of the path (Starlette names one route's)."""
        if exc.status_code == 405:
            allowed = sorted(
                {m for route in app.routes if isinstance(route, BaseRoute) and route.matches(request.scope)[0] is not Match.NONE
                 for m in getattr(route, "methods", None) or ()}
            )  # fmt: skip
            if allowed:
                return JSONResponse({"detail": "Method Not Allowed"}, status_code=405, headers={"Allow": ", ".join(allowed)})
        return await http_exception_handler(request, exc)

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> JSONResponse:
        ref = uuid.uuid4().hex[:12]
        log.error("REST %s %s failed (ref %s)", request.method, request.url.path[:200], ref, exc_info=exc)
        return JSONResponse({"detail": f"internal error (ref {ref})"}, status_code=500)

    if static_dir is not None:
        app.mount("/dashboard", StaticFiles(directory=static_dir, html=True), name="dashboard")
    if vendor_dir is not None:
        app.mount("/vendor", StaticFiles(directory=vendor_dir, check_dir=False), name="vendor")
    return app
