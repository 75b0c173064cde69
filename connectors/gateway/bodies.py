"""HTTP requests with a body on the gateway's one port: what REST's PUT needs from the websockets server.

The `websockets` server parses each request's head and refuses any body (a WebSocket handshake
has none): it closes the connection without an answer. REST writes (`PUT /api/watchlists/...`)
carry a JSON body, so the gateway's connections parse the request themselves (`read_request`:
websockets' own line and header parsers, then the body), bounded:

- a body needs `Content-Length` (at most `MAX_REQUEST_BODY` bytes): a larger one is answered 413
  before a byte of it is read; `Transfer-Encoding` (chunked) 411; a malformed or conflicting
  length 400; every answer a JSON `{"detail": ...}` naming the fix, then the connection closes;
- `Expect: 100-continue` (curl sends it) gets its `100 Continue` once the length is accepted;
- the whole request, head and body, must arrive within the server's open timeout.

Everything after the request (the handshake, frames, HTTP answers) is websockets' own.
`install` swaps a new connection's request parser before it has received a byte.
"""

from __future__ import annotations

import dataclasses
import http
import json
from collections.abc import Generator

from websockets.datastructures import Headers
from websockets.exceptions import HeaderLineTooLong, InvalidMessage, RequestLineTooLong, TooManyHeaders
from websockets.http11 import Request, Response, parse_headers, parse_line
from websockets.protocol import CONNECTING, Protocol
from websockets.server import ServerProtocol
from websockets.streams import StreamReader

MAX_REQUEST_BODY = 128 * 1024  # a universe of 5000 of the longest symbols fits
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


@dataclasses.dataclass
class BodyRequest(Request):
    """A request as websockets represents it, plus its body (empty for a handshake or a GET)."""

    body: bytes = b""


class BodyRefused(Exception):
    """The request's body cannot be read as sent; answered `status` with `detail`."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def read_request(reader: StreamReader, max_body: int, writes: list[bytes]) -> Generator[None, None, BodyRequest]:
    """Parse one request (head as websockets does, then its body); BodyRefused for a body it will not read.

    `writes`: where to queue the interim `100 Continue` (the protocol's outgoing data).
    """
    request_line = yield from parse_line(reader.read_line, RequestLineTooLong)
    try:
        raw_method, raw_path, raw_protocol = request_line.split(b" ", 2)
    except ValueError:
        raise ValueError("invalid HTTP request line") from None
    if raw_protocol not in (b"HTTP/1.1", b"HTTP/1.0"):
        raise ValueError("unsupported protocol; expected HTTP/1.1 or HTTP/1.0")
    method, path, protocol = raw_method.decode("ascii"), raw_path.decode("ascii"), raw_protocol.decode("ascii")
    headers: Headers = yield from parse_headers(reader.read_line)
    if "Transfer-Encoding" in headers:
        raise BodyRefused(411, "Transfer-Encoding is not supported: send the body with a Content-Length")
    lengths = set(headers.get_all("Content-Length"))
    if len(lengths) > 1:
        raise BodyRefused(400, "conflicting Content-Length headers")
    body = b""
    if lengths:
        raw = lengths.pop().strip()
        if not raw.isascii() or not raw.isdigit() or len(raw) > 18:
            raise BodyRefused(400, "invalid Content-Length: a number of bytes")
        size = int(raw)
        if size > max_body:
            raise BodyRefused(413, f"request body of {size} bytes is larger than the {max_body} bytes accepted")
        if size:
            if headers.get("Expect", "").lower() == "100-continue":
                writes.append(CONTINUE)
            body = bytes((yield from reader.read_exact(size)))
    return BodyRequest(path, headers, method, protocol, body=body)


def _json_response(status: int, detail: str) -> Response:
    body = json.dumps({"detail": detail}).encode()
    headers = Headers([("Content-Type", "application/json"), ("Content-Length", str(len(body))), ("Connection", "close")])
    return Response(status, http.HTTPStatus(status).phrase, headers, body)


def _parse(protocol: ServerProtocol, max_body: int) -> Generator[None]:
    """ServerProtocol.parse with `read_request` for the request; the rest is websockets' own."""
    if protocol.state is CONNECTING:
        try:
            request = yield from read_request(protocol.reader, max_body, protocol.writes)
        except BodyRefused as exc:
            protocol.handshake_exc = exc
            protocol.send_response(_json_response(exc.status, exc.detail))
            yield
        except RequestLineTooLong as exc:
            protocol.handshake_exc = exc
            protocol.send_response(protocol.reject(http.HTTPStatus.REQUEST_URI_TOO_LONG, f"{exc}.\n"))
            yield
        except (HeaderLineTooLong, TooManyHeaders) as exc:
            protocol.handshake_exc = exc
            protocol.send_response(protocol.reject(http.HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, f"{exc}.\n"))
            yield
        except Exception as exc:  # noqa: BLE001 - what websockets does with an unreadable request: close
            protocol.handshake_exc = InvalidMessage("did not receive a valid HTTP request")
            protocol.handshake_exc.__cause__ = exc
            protocol.send_eof()
            protocol.parser = protocol.discard()
            next(protocol.parser)
            yield
        protocol.events.append(request)
    yield from Protocol.parse(protocol)


def install(protocol: ServerProtocol, max_body: int = MAX_REQUEST_BODY) -> None:
    """Read request bodies on this (new, not yet fed) connection."""
    protocol.parser.close()
    protocol.parser = _parse(protocol, max_body)
    next(protocol.parser)
