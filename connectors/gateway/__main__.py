"""Run the gateway, or issue a token.

    python -m connectors.gateway                       # serve (settings: GATEWAY_* env vars, README)
    python -m connectors.gateway token alice --symbols AAPL,MSFT --kinds live,bar,alert --ttl 3600

Installed, the same are `tickstock-gateway` and `tickstock-token alice --symbols ...`.

Exit codes: 0 stopped cleanly; 1 a dependency (Redis, PostgreSQL) unreachable at start; 2 a bad
setting or argument, or an address that cannot be bound (the message names it; never a
traceback). Only `main` exits: the library raises (errors.py) and this maps the errors to codes.
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

from connectors.gateway.auth import Policy
from connectors.gateway.errors import CannotListen, GatewayUnavailable
from connectors.gateway.server import Gateway
from connectors.gateway.settings import GatewaySettings, describe_errors
from connectors.monitoring.logs import configure_logging
from connectors.monitoring.settings import LogSettings
from connectors.settings import describe


class BadSettings(Exception):
    """Invalid GATEWAY_* settings: the message lists each variable and its rule."""


def _settings() -> GatewaySettings:
    try:
        return GatewaySettings()
    except ValidationError as exc:
        raise BadSettings(f"invalid gateway settings:\n{describe_errors(exc)}") from None


def token(argv: list[str], prog: str = "python -m connectors.gateway token") -> int:
    parser = argparse.ArgumentParser(prog=prog, description="Print a signed token (GATEWAY_JWT_SECRET) for a user.")
    parser.add_argument("user")
    parser.add_argument("--symbols", default="*", help="comma-separated tickers, or * (default): written into the token")
    parser.add_argument(
        "--kinds",
        default="*",
        help="comma-separated kinds (live,bar,highlow,trend,surge,pattern,indicator,alert), or * (default)",
    )
    parser.add_argument(
        "--ttl", type=float, default=None, help="seconds (default GATEWAY_TOKEN_TTL_S; at most GATEWAY_MAX_TOKEN_LIFETIME_S)"
    )
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse printed the usage and the problem
        return 2 if exc.code else 0
    try:
        s = _settings()
        policy = Policy(
            s.jwt_secret, (), dev_mode=False, audience=s.jwt_audience, issuer=s.jwt_issuer, max_lifetime_s=s.max_token_lifetime_s
        )
        symbols = [x for x in args.symbols.split(",") if x.strip()]
        kinds = [x.strip() for x in args.kinds.split(",") if x.strip()]
        if not symbols or not kinds:
            raise ValueError("--symbols and --kinds must each name at least one (or *)")
        print(policy.issue(args.user, symbols, kinds, ttl_s=s.token_ttl_s if args.ttl is None else args.ttl, now=time.time()))
    except (ValueError, BadSettings) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def token_main(argv: list[str] | None = None) -> int:
    """`tickstock-token USER [--symbols ...]`: `token` as a program of its own."""
    return token(sys.argv[1:] if argv is None else argv, prog="tickstock-token")


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
    if argv[:1] in (["-h"], ["--help"]):
        print(__doc__)
        return 0
    if argv and argv[0] not in ("serve",):
        print(__doc__, file=sys.stderr)
        return 2
    try:
        configure_logging(LogSettings(), "gateway")
    except ValidationError as exc:
        print(f"error: invalid settings: {describe(exc)}", file=sys.stderr)
        return 2
    logging.getLogger("websockets").setLevel(logging.WARNING)
    try:
        settings = _settings()
        Gateway(settings).validate()
    except (BadSettings, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if settings.dev_mode:
        logging.getLogger("tickstock.gateway").warning(
            "GATEWAY_DEV_MODE=true: no token required, any Origin accepted, on %s%s; never expose this gateway",
            settings.host,
            " (GATEWAY_DEV_MODE_ALLOW_REMOTE=true: reachable from other machines)" if settings.dev_mode_allow_remote else "",
        )
    try:
        uvloop.run(serve(settings))
    except CannotListen as exc:  # the address is a setting
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except GatewayUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
