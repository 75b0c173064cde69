"""What the REST document (`/openapi.json`) says: the answers' shapes, the errors, the token schemes.

The response models are also what FastAPI checks each answer against. Every operation lists
every status it can answer (`error_responses`), with the `detail` model and the meaning; the
token schemes only document (the token is read by auth.py, the same for REST and WebSocket).
In development mode every operation also admits no token (an empty security requirement).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.security import APIKeyQuery, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import HTTPConnection

from schemas.watchlists import MAX_UNIVERSE_SYMBOLS, MAX_WATCHLIST_SYMBOLS


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


class SymbolList(BaseModel):
    """A PUT body: the whole list (replaces what was stored). Symbols as schemas/symbols.py spells them."""

    model_config = ConfigDict(extra="forbid")
    symbols: list[Annotated[str, Field(min_length=1, max_length=64)]] = Field(max_length=MAX_UNIVERSE_SYMBOLS)


class WatchlistBody(SymbolList):
    symbols: list[Annotated[str, Field(min_length=1, max_length=64)]] = Field(max_length=MAX_WATCHLIST_SYMBOLS)


class WatchlistOut(BaseModel):
    name: str
    symbols: list[str]
    revision: int
    withheld: int = Field(description="symbols of the list your token does not grant (not shown)")


class WatchlistWritten(WatchlistOut):
    created: bool
    announced: bool = Field(description="false: stored, but the change notice could not be published (Redis down)")


class WatchlistDeleted(BaseModel):
    name: str
    revision: int
    deleted: Literal[True]
    announced: bool


class Watchlists(BaseModel):
    user: str
    count: int
    max_watchlists: int
    max_symbols: int
    watchlists: list[WatchlistOut]


class UniverseOut(BaseModel):
    user: str
    symbols: list[str]
    revision: int = Field(description="0: never set")
    withheld: int
    max_symbols: int


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


class ReadyCondition(BaseModel):
    ok: bool
    detail: str


class Ready(BaseModel):
    service: Literal["gateway"]
    ready: bool
    conditions: dict[str, ReadyCondition]
    failing: dict[str, list[str]]


def error_responses(*statuses: int, meanings: dict[int, str] | None = None) -> dict[int | str, dict[str, Any]]:
    meaning = {
        400: "malformed symbol, unknown or repeated parameter, or a rule between parameters broken (the detail says which)",
        401: "missing, invalid or expired token",
        403: "the token does not grant this symbol or kind, or the browser Origin is not allowed",
        404: "a symbol the pipeline has never seen",
        409: "the most watchlists a user may have: delete one first",
        413: "the request body is larger than the gateway accepts",
        503: "PostgreSQL unreachable or too slow: retry after the Retry-After seconds",
    }
    meaning.update(meanings or {})
    out: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        entry: dict[str, Any] = {"model": Error, "description": meaning[status]}
        if status == 401:
            entry["headers"] = {"WWW-Authenticate": {"schema": {"type": "string"}, "description": "Bearer"}}
        if status == 503:
            entry["headers"] = {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds"}}
        out[status] = entry
    return out


class BearerScheme(HTTPBearer):
    """`Authorization: Bearer` in the OpenAPI document; the token is read by `Policy.admit_request`.

    One reader for REST and the WebSocket handshake (auth.py), so this scheme only documents.
    """

    async def __call__(self, request: HTTPConnection) -> None:
        return None


class QueryScheme(APIKeyQuery):
    """`?token=` in the OpenAPI document; read, like the header, by `Policy.admit_request`."""

    async def __call__(self, request: HTTPConnection) -> None:
        return None


class DocumentedAPI(FastAPI):
    """The gateway's FastAPI app: its document is FastAPI's, marking in development mode that no token is needed."""

    def __init__(self, *, dev_mode: bool, **options: Any) -> None:
        super().__init__(**options)
        self.dev_mode = dev_mode

    def openapi(self) -> dict[str, Any]:
        if self.openapi_schema is None:
            doc = get_openapi(title=self.title, version=self.version, description=self.description, routes=self.routes)
            for path in doc["paths"].values():
                for operation in path.values():
                    if self.dev_mode and "security" in operation:
                        operation["security"].append({})  # development mode: no token needed
            self.openapi_schema = doc
        return self.openapi_schema
