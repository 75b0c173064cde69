"""Who may connect and what they may subscribe to: HMAC-signed JWTs, an Origin allowlist, a dev mode.

A token (HS256, PyJWT) carries `sub` (the user), `exp` (required), and the grants:
`symbols` and `kinds`, lists where `*` means all. Tokens come from `python -m
connectors.gateway token` (operators) with the deployment's GATEWAY_JWT_SECRET.

Pure: the app passes in the request's token, Origin and the clock.

>>> policy = Policy(secret="s" * 32, origins=("http://dash.example",))
>>> token = policy.issue("alice", symbols=["AAPL"], kinds=["live", "bar"], ttl_s=60, now=1000)
>>> grant = policy.admit(token, "http://dash.example", now=1030)
>>> grant.user, grant.allows_symbol("AAPL"), grant.allows_symbol("MSFT")
('alice', True, False)
>>> policy.admit(token, "http://evil.example", now=1030)
Traceback (most recent call last):
...
connectors.gateway.auth.Refused: origin 'http://evil.example' is not allowed (GATEWAY_ALLOWED_ORIGINS)
>>> policy.admit(token, None, now=2000).user
Traceback (most recent call last):
...
connectors.gateway.auth.Refused: token expired
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import jwt

from connectors.gateway.protocol import ALL, KINDS, check_symbol

ALGORITHM = "HS256"
MIN_SECRET_BYTES = 32  # RFC 7518 3.2: an HS256 key at least as long as the hash


class Refused(Exception):
    """Not admitted: the reason is shown to the client (HTTP 401 / 403 at the handshake)."""

    def __init__(self, reason: str, status: int = 401) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


@dataclass(frozen=True)
class Grant:
    """What an admitted user may subscribe to; `expires` is epoch seconds (None in dev mode)."""

    user: str
    symbols: frozenset[str]
    kinds: frozenset[str]
    expires: float | None

    def allows_symbol(self, symbol: str) -> bool:
        return ALL in self.symbols or symbol in self.symbols

    def forbidden_symbols(self, symbols: Iterable[str]) -> list[str]:
        if ALL in self.symbols:
            return []
        return [s for s in symbols if s not in self.symbols]

    def allowed_kinds(self, wanted: Iterable[str] | None) -> frozenset[str]:
        """`wanted` limited to the grant (all granted kinds when None)."""
        if wanted is None:
            return self.kinds
        return frozenset(wanted) & self.kinds


DEV_GRANT = Grant("dev", frozenset({ALL}), frozenset(KINDS), None)


class Policy:
    """Admission rules of one gateway: the signing secret, allowed origins, dev mode."""

    def __init__(self, secret: str | None, origins: Iterable[str] = (), dev_mode: bool = False) -> None:
        if not dev_mode and (secret is None or len(secret.encode()) < MIN_SECRET_BYTES):
            raise ValueError(
                f"GATEWAY_JWT_SECRET must be set to at least {MIN_SECRET_BYTES} bytes "
                "(e.g. `openssl rand -hex 32`), or GATEWAY_DEV_MODE=true for local development"
            )
        self.secret = secret
        self.origins = frozenset(o.rstrip("/") for o in origins)
        self.dev_mode = dev_mode

    def issue(self, user: str, symbols: Iterable[str] = (ALL,), kinds: Iterable[str] = (ALL,), *,
              ttl_s: float, now: float) -> str:
        """A signed token for `user`, valid `ttl_s` seconds from `now`."""
        if self.secret is None:
            raise ValueError("no GATEWAY_JWT_SECRET: cannot sign tokens")
        symbols = sorted({check_symbol(s) for s in symbols})
        kinds = sorted(set(kinds))
        unknown = [k for k in kinds if k != ALL and k not in KINDS]
        if unknown:
            raise ValueError(f"unknown kind(s) {', '.join(unknown)}; expected some of {', '.join(KINDS)} or *")
        claims = {"sub": user, "iat": int(now), "exp": int(now + ttl_s), "symbols": symbols, "kinds": kinds}
        return jwt.encode(claims, self.secret, algorithm=ALGORITHM)

    def check_origin(self, origin: str | None) -> None:
        """Browsers always send Origin: it must be allowed. Non-browser clients send none."""
        if origin is not None and origin.rstrip("/") not in self.origins and not self.dev_mode:
            raise Refused(f"origin {origin!r} is not allowed (GATEWAY_ALLOWED_ORIGINS)", 403)

    def admit(self, token: str | None, origin: str | None, *, now: float) -> Grant:
        """The grant for a connection or request, or Refused with the reason."""
        self.check_origin(origin)
        if not token:
            if self.dev_mode:
                return DEV_GRANT
            raise Refused("missing token: pass ?token=... or an `Authorization: Bearer` header")
        try:
            # `exp` is checked below against the caller's clock (PyJWT would read the real one)
            claims = jwt.decode(
                token, self.secret, algorithms=[ALGORITHM],
                options={"require": ["exp", "sub"], "verify_exp": False},
            )
        except jwt.InvalidTokenError as exc:
            raise Refused(f"invalid token: {exc}") from None
        if not isinstance(claims["exp"], int | float) or claims["exp"] <= now:
            raise Refused("token expired")
        symbols = claims.get("symbols", [ALL])
        kinds = claims.get("kinds", [ALL])
        if not isinstance(symbols, list) or not isinstance(kinds, list):
            raise Refused("invalid token: `symbols` and `kinds` must be lists")
        return Grant(
            user=str(claims["sub"]),
            symbols=frozenset(str(s) for s in symbols),
            kinds=frozenset(KINDS) if ALL in kinds else frozenset(k for k in kinds if k in KINDS),
            expires=float(claims["exp"]),
        )

