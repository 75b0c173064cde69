"""Who may connect and what they may read: HMAC-signed JWTs, an Origin allowlist, a dev mode.

A token (HS256, PyJWT) carries `sub` (the user), `iat` and `exp` (both required; `exp - iat` at
most the maximum lifetime), optionally `nbf`, `aud` and `iss` (checked when the gateway is
configured with an audience / issuer), and the grants, both required: `symbols` and `kinds`,
lists where `*` means all. A token without grant claims is refused, never read as "everything".
Times are checked against the caller's clock with a small leeway for clock skew. Tokens come
from `python -m connectors.gateway token` (operators) with the deployment's GATEWAY_JWT_SECRET.

Pure: the app passes in what the request carries and the clock. A request presents its token
the same way to REST and to the WebSocket handshake (`Policy.admit_request`, as Starlette's
authentication backends serve HTTP and WebSocket alike): `Authorization: Bearer <token>`, else
`?token=` (a browser cannot set headers on a WebSocket); a header or parameter given twice is
refused (400), never guessed between.

>>> policy = Policy(secret="s" * 32, origins=("http://dash.example",))
>>> token = policy.issue("alice", symbols=["AAPL"], kinds=["live", "bar"], ttl_s=60, now=1000)
>>> grant = policy.admit(token, "http://dash.example", now=1030)
>>> grant.user, grant.allows_symbol("AAPL"), grant.allows_symbol("MSFT"), grant.allows_kind("alert")
('alice', True, False, False)
>>> policy.admit(token, "http://evil.example", now=1030)
Traceback (most recent call last):
...
connectors.gateway.auth.Refused: origin 'http://evil.example' is not allowed (GATEWAY_ALLOWED_ORIGINS)
>>> policy.admit(token, None, now=2000).user
Traceback (most recent call last):
...
connectors.gateway.auth.Refused: token expired
>>> policy.admit_request(authorization=[f"Bearer {token}"], tokens=[], origins=[], now=1030).user
'alice'
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import jwt

from connectors.gateway.protocol import ALL, KINDS, BadMessage, check_symbol, safe_text

ALGORITHM = "HS256"
MIN_SECRET_BYTES = 32  # RFC 7518 3.2: an HS256 key at least as long as the hash
MAX_TOKEN_BYTES = 8192
MAX_USER_LENGTH = 256
MAX_GRANT_SYMBOLS = 100_000
DEFAULT_MAX_LIFETIME_S = 86_400.0


class Refused(Exception):
    """Not admitted: the reason is shown to the client (HTTP 401 / 403 at the handshake)."""

    def __init__(self, reason: str, status: int = 401) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


@dataclass(frozen=True)
class Grant:
    """What an admitted user may read; `expires` is epoch seconds (None in dev mode)."""

    user: str
    symbols: frozenset[str]
    kinds: frozenset[str]
    expires: float | None

    def allows_symbol(self, symbol: str) -> bool:
        return ALL in self.symbols or symbol in self.symbols

    def allows_kind(self, kind: str) -> bool:
        return kind in self.kinds

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


def _number(claims: dict, name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise Refused(f"invalid token: `{name}` must be a number of seconds since the epoch")
    return float(value)


def _grant_list(claims: dict, name: str) -> list[str]:
    if name not in claims:
        raise Refused(f'invalid token: no `{name}` claim (a token must name its grants; `["*"]` for all)')
    value = claims[name]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise Refused(f"invalid token: `{name}` must be a list of strings")
    if len(value) > MAX_GRANT_SYMBOLS:
        raise Refused(f"invalid token: more than {MAX_GRANT_SYMBOLS} `{name}`")
    return value


def grant_symbols(symbols: Iterable[str]) -> frozenset[str]:
    """Granted symbols, normalised (schemas/symbols.py) or `*`; ValueError names a bad one."""
    out = set()
    for s in symbols:
        try:
            out.add(check_symbol(s))
        except BadMessage as exc:
            raise ValueError(str(exc)) from None
    return frozenset(out)


def grant_kinds(kinds: Iterable[str]) -> frozenset[str]:
    """Granted kinds (`*` = every kind); ValueError names an unknown one."""
    kinds = set(kinds)
    unknown = sorted(k for k in kinds if k != ALL and k not in KINDS)
    if unknown:
        raise ValueError(
            f"unknown kind(s) {', '.join(safe_text(k, 32) for k in unknown[:5])}; expected some of {', '.join(KINDS)} or *"
        )
    return frozenset(KINDS) if ALL in kinds else frozenset(kinds)


def request_token(authorization: Sequence[str], tokens: Sequence[str]) -> str | None:
    """The token a request carries: its `Authorization: Bearer` header, else its `token` parameter.

    `authorization`: the request's Authorization header values; `tokens`: its `token` query
    parameter values (blank ones included). Another scheme (Basic, ...) is no token.

    >>> request_token(["Bearer abc"], []), request_token(["bearer abc"], ["xyz"]), request_token(["Basic eHk="], ["xyz"])
    ('abc', 'abc', 'xyz')
    >>> request_token([], []) is None
    True
    """
    if len(authorization) > 1:
        raise Refused("more than one Authorization header", 400)
    if len(tokens) > 1:
        raise Refused("`token` given more than once", 400)
    if authorization:
        scheme, _, credentials = authorization[0].strip().partition(" ")
        if scheme.lower() == "bearer" and credentials.strip():
            return credentials.strip()
    return tokens[0] if tokens else None


class Policy:
    """Admission rules of one gateway: the signing secret, allowed origins, dev mode, claim checks."""

    def __init__(
        self,
        secret: str | None,
        origins: Iterable[str] = (),
        dev_mode: bool = False,
        *,
        audience: str | None = None,
        issuer: str | None = None,
        leeway_s: float = 0.0,
        max_lifetime_s: float = DEFAULT_MAX_LIFETIME_S,
    ) -> None:
        if not dev_mode and (secret is None or len(secret.encode()) < MIN_SECRET_BYTES):
            raise ValueError(
                f"GATEWAY_JWT_SECRET must be set to at least {MIN_SECRET_BYTES} bytes "
                "(e.g. `openssl rand -hex 32`), or GATEWAY_DEV_MODE=true for local development"
            )
        if secret is not None and len(secret.encode()) < MIN_SECRET_BYTES:
            raise ValueError(f"GATEWAY_JWT_SECRET must be at least {MIN_SECRET_BYTES} bytes (e.g. `openssl rand -hex 32`)")
        self.secret = secret
        self.origins = frozenset(o.rstrip("/") for o in origins)
        self.dev_mode = dev_mode
        self.audience = audience
        self.issuer = issuer
        self.leeway_s = leeway_s
        self.max_lifetime_s = max_lifetime_s

    def issue(
        self, user: str, symbols: Iterable[str] = (ALL,), kinds: Iterable[str] = (ALL,), *, ttl_s: float, now: float
    ) -> str:
        """A signed token for `user`, valid `ttl_s` seconds from `now`; ValueError says what is wrong."""
        if self.secret is None:
            raise ValueError("no GATEWAY_JWT_SECRET: cannot sign tokens")
        if not user or len(user) > MAX_USER_LENGTH or not user.isprintable():
            raise ValueError(f"the user must be 1-{MAX_USER_LENGTH} printable characters")
        if not math.isfinite(ttl_s) or ttl_s <= 0:
            raise ValueError(f"the lifetime must be a positive number of seconds, not {ttl_s}")
        if ttl_s > self.max_lifetime_s:
            raise ValueError(f"a lifetime of {ttl_s:g} s exceeds GATEWAY_MAX_TOKEN_LIFETIME_S ({self.max_lifetime_s:g} s)")
        granted_symbols = sorted(grant_symbols(symbols))
        kinds = set(kinds)
        grant_kinds(kinds)
        claims: dict[str, object] = {
            "sub": user,
            "iat": int(now),
            "exp": int(now + ttl_s),
            "symbols": granted_symbols,
            "kinds": sorted(kinds),
        }
        if self.audience is not None:
            claims["aud"] = self.audience
        if self.issuer is not None:
            claims["iss"] = self.issuer
        return jwt.encode(claims, self.secret, algorithm=ALGORITHM)

    def check_origin(self, origin: str | None) -> None:
        """Browsers always send Origin: it must be allowed. Non-browser clients send none."""
        if origin is not None and origin.rstrip("/") not in self.origins and not self.dev_mode:
            raise Refused(f"origin {origin[:200]!r} is not allowed (GATEWAY_ALLOWED_ORIGINS)", 403)

    def admit_request(self, *, authorization: Sequence[str], tokens: Sequence[str], origins: Sequence[str], now: float) -> Grant:
        """`admit` for an HTTP request or a WebSocket handshake: its token (`request_token`) and its Origin.

        Each argument lists the values the request carries (headers may repeat; so may parameters).
        """
        token = request_token(authorization, tokens)
        if len(origins) > 1:
            raise Refused("more than one Origin header", 400)
        return self.admit(token, origins[0] if origins else None, now=now)

    def admit(self, token: str | None, origin: str | None, *, now: float) -> Grant:
        """The grant for a connection or request, or Refused with the reason (never another exception)."""
        self.check_origin(origin)
        if not token:
            if self.dev_mode:
                return DEV_GRANT
            raise Refused("missing token: pass ?token=... or an `Authorization: Bearer` header")
        if self.secret is None:
            raise Refused(
                "development mode without GATEWAY_JWT_SECRET cannot verify tokens: send none, "
                "or set GATEWAY_JWT_SECRET to test grants"
            )
        if len(token) > MAX_TOKEN_BYTES:
            raise Refused(f"invalid token: longer than {MAX_TOKEN_BYTES} characters")
        try:
            # times are checked below against the caller's clock (PyJWT would read the real one)
            claims = jwt.decode(
                token,
                self.secret,
                algorithms=[ALGORITHM],
                audience=self.audience,
                issuer=self.issuer,
                options={
                    "require": ["exp", "iat", "sub"],
                    "verify_exp": False,
                    "verify_iat": False,
                    "verify_nbf": False,
                    "verify_aud": self.audience is not None,
                    "verify_iss": self.issuer is not None,
                },
            )
        except jwt.InvalidTokenError as exc:
            raise Refused(f"invalid token: {str(exc)[:200]}") from None
        except Exception:  # noqa: BLE001 - whatever a forged token makes PyJWT raise, it is a 401
            raise Refused("invalid token: unreadable") from None
        if not isinstance(claims, dict):
            raise Refused("invalid token: the payload is not an object")
        exp, iat, nbf = _number(claims, "exp"), _number(claims, "iat"), _number(claims, "nbf")
        assert exp is not None and iat is not None  # required above
        leeway = self.leeway_s
        if exp <= now - leeway:
            raise Refused("token expired")
        if iat > now + leeway:
            raise Refused("invalid token: issued in the future (`iat`); check the issuer's clock")
        if nbf is not None and nbf > now + leeway:
            raise Refused("token not valid yet (`nbf`)")
        if exp <= iat:
            raise Refused("invalid token: `exp` is not after `iat`")
        if exp - iat > self.max_lifetime_s:
            raise Refused(
                f"invalid token: lifetime {exp - iat:.0f} s exceeds GATEWAY_MAX_TOKEN_LIFETIME_S ({self.max_lifetime_s:g} s)"
            )
        user = claims["sub"]
        if not isinstance(user, str) or not user or len(user) > MAX_USER_LENGTH or not user.isprintable():
            raise Refused(f"invalid token: `sub` must be 1-{MAX_USER_LENGTH} printable characters")
        try:
            symbols = grant_symbols(_grant_list(claims, "symbols"))
            kinds = grant_kinds(_grant_list(claims, "kinds"))
        except ValueError as exc:
            raise Refused(f"invalid token: {exc}") from None
        return Grant(user=user, symbols=symbols, kinds=kinds, expires=exp)
