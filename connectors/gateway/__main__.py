"""Run the gateway, or issue a token.

    python -m connectors.gateway                       # serve (settings: GATEWAY_* env vars, README)
    python -m connectors.gateway token alice --symbols AAPL,MSFT --kinds live,bar,alert --ttl 3600
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import time

import uvloop
from pydantic import ValidationError

from connectors.gateway.app import Gateway, GatewayUnavailable
from connectors.gateway.auth import Policy
from connectors.gateway.settings import GatewaySettings


def _settings() -> GatewaySettings:
    try:
        return GatewaySettings()
    except ValidationError as exc:
        sys.exit(f"error: invalid gateway settings:\n{exc}")


def token(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m connectors.gateway token",
                                     description="Print a signed token (GATEWAY_JWT_SECRET) for a user.")
    parser.add_argument("user")
    parser.add_argument("--symbols", default="*", help="comma-separated tickers, or * (default)")
    parser.add_argument("--kinds", default="*", help="comma-separated kinds (live,bar,highlow,trend,surge,pattern,indicator,alert) or *")
    parser.add_argument("--ttl", type=float, default=None, help="seconds (default GATEWAY_TOKEN_TTL_S)")
    args = parser.parse_args(argv)
    s = _settings()
    try:
        policy = Policy(s.jwt_secret, (), dev_mode=False)
        print(policy.issue(args.user, args.symbols.split(","), args.kinds.split(","),
                           ttl_s=args.ttl or s.token_ttl_s, now=time.time()))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


async def serve(settings: GatewaySettings) -> None:
    gateway = Gateway(settings)
    await gateway.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"gateway: http://{settings.host}:{gateway.port}/dashboard/  ws://{settings.host}:{gateway.port}/ws", flush=True)
    await stop.wait()
    await gateway.stop()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["token"]:
        return token(argv[1:])
    if argv and argv[0] not in ("serve",):
        print(__doc__, file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("websockets").setLevel(logging.WARNING)
    settings = _settings()
    try:
        Gateway(settings).validate()
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if settings.dev_mode:
        logging.getLogger("tickstock.gateway").warning(
            "GATEWAY_DEV_MODE=true: no token required, any Origin accepted; never expose this gateway")
    try:
        uvloop.run(serve(settings))
    except GatewayUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
