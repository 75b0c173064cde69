"""Answer a plain HTTP GET received by the `websockets` server with an ASGI app (FastAPI).

The gateway serves WebSockets with the `websockets` library (see README: it costs less than
half the CPU per frame of Starlette on uvicorn here) and everything else with FastAPI. Both
share one port: `websockets` parses every request and hands non-WebSocket ones to
`process_request`, which runs the ASGI app for that one request and returns its response.
websockets parses any method; the gateway's connections also read a bounded request body
(bodies.py), passed to the app. The app sees the real method: a method a path does not serve gets
the app's 405 with `Allow`. The
connection closes after each response. Whatever the app raises, the client gets an HTTP answer
(the app's own 500 if it sent one, else a bare 500) and never the exception's text.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
from urllib.parse import unquote, urlsplit

from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

MAX_BODY = 64 * 1024 * 1024
log = logging.getLogger("tickstock.gateway.http")
_OURS = {"content-length", "connection", "date", "server"}  # websockets adds Server itself


async def respond_from(app, connection: ServerConnection, request: Request) -> Response:
    url = urlsplit(request.path)
    headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in request.headers.raw_items()]
    local = connection.local_address
    remote = connection.remote_address
    method, path = request.method.upper(), unquote(url.path)
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": url.path.encode(),
        "query_string": url.query.encode(),
        "root_path": "",
        "headers": headers,
        "client": (remote[0], remote[1]) if remote else None,
        "server": (local[0], local[1]) if local else None,
        "state": {},
    }
    status = 500
    out_headers = Headers()
    body = bytearray()
    sent_request = False
    started = False
    declared_length: str | None = None  # the app's Content-Length (HEAD: it sends no body)

    async def receive() -> dict:
        nonlocal sent_request
        if not sent_request:
            sent_request = True
            return {"type": "http.request", "body": getattr(request, "body", b""), "more_body": False}
        # Streaming responses watch `receive` for a disconnect while they send: there is none
        # to report (the response is buffered), so wait until they are done and cancel this.
        await asyncio.Event().wait()
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        nonlocal status, started, declared_length
        if message["type"] == "http.response.start":
            started = True
            status = message["status"]
            for k, v in message.get("headers", []):
                name = k.decode("latin-1")
                if name.lower() == "content-length":
                    declared_length = v.decode("latin-1")
                if name.lower() not in _OURS:  # websockets' Headers is a multi-dict: set ours once, below
                    out_headers[name] = v.decode("latin-1")
        elif message["type"] == "http.response.body":
            body.extend(message.get("body", b""))
            if len(body) > MAX_BODY:
                raise RuntimeError("response too large")

    try:
        await app(scope, receive, send)
    except Exception:  # Starlette re-raises after sending its 500; answer, never crash the handshake
        log.exception("HTTP %s %s failed", method, path[:200])
        if not started:
            status, body = 500, bytearray(b'{"detail":"internal error"}')
            out_headers = Headers()
            out_headers["Content-Type"] = "application/json"
    if method == "HEAD":  # headers only, with the length GET would send
        out_headers["Content-Length"] = declared_length if declared_length is not None and not body else str(len(body))
        body = bytearray()
    else:
        out_headers["Content-Length"] = str(len(body))
    out_headers["Connection"] = "close"
    out_headers["Date"] = email.utils.formatdate(usegmt=True)
    reason = _REASONS.get(status, "")
    return Response(status, reason, out_headers, bytes(body))


_REASONS = {
    200: "OK",
    201: "Created",
    204: "No Content",
    301: "Moved Permanently",
    302: "Found",
    304: "Not Modified",
    307: "Temporary Redirect",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    411: "Length Required",
    413: "Content Too Large",
    422: "Unprocessable Content",
    500: "Internal Server Error",
    503: "Service Unavailable",
}
