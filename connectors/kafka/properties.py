"""librdkafka properties from the deployment: where they come from, which the code keeps, and their check.

A managed Kafka needs properties the code cannot know (`security.protocol`, SASL, TLS, client
ids, quotas' tuning). Any librdkafka property (its CONFIGURATION.md) can be given, from three
places, later ones winning:

1. `KAFKA_PROPERTIES_FILE`: a Java-style properties file (`key=value`, `key: value` or
   `key value`; `#`/`!` comments; `\\` continues a line; `\\uXXXX` escapes), UTF-8, as Kafka
   users know it (e.g. the client configuration Confluent Cloud offers for librdkafka);
2. `KAFKA_PROPERTY_<NAME>`: the property in upper case, dots as underscores
   (`KAFKA_PROPERTY_SECURITY_PROTOCOL=SASL_SSL` sets `security.protocol`). No librdkafka name a
   string can set contains `_` except `log_level` and `enabled_events`, which are mapped, so
   the mapping is unambiguous;
3. `KAFKA_PROPERTY_<NAME>_FILE=/run/secrets/...`: the value is the file's content (one
   trailing newline removed), for secrets. librdkafka's own `*.file` properties (paths, such
   as `sasl.oauthbearer.assertion.file`) are set by their `KAFKA_PROPERTY_..._FILE` as paths.

A name may start with `consumer.`, `producer.` or `admin.` (Kafka Connect's convention; no
librdkafka property starts so) to reach only that kind of client, over the common value.

Properties the code relies on for its guarantees (offsets in the recovery state, `acks=all`,
no delivery deadline, the statistics the source reads, callbacks) are refused with the
setting to use instead (`PROTECTED`); the tuning the code sets (linger, batch sizes, fetch
sizes, group id, ...) is overridable. Values never appear in errors or `repr`; names whose
values are secrets are masked wherever properties are shown (`redacted`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Final, Literal

Role = Literal["consumer", "producer", "admin"]
ROLES: Final[tuple[Role, ...]] = ("consumer", "producer", "admin")

ENV_PREFIX: Final = "KAFKA_PROPERTY_"
FILE_SUFFIX: Final = "_FILE"
MAX_FILE_BYTES: Final = 1 << 20

# librdkafka names with '_' (CONFIGURATION.md), by the dotted name their variable maps to.
# Only log_level and enabled_events take text; the rest are callbacks or pointers, refused below.
_UNDERSCORED: Final = {
    name.replace("_", "."): name
    for name in (
        "log_level", "enabled_events", "error_cb", "throttle_cb", "stats_cb", "log_cb", "background_event_cb",
        "socket_cb", "connect_cb", "closesocket_cb", "open_cb", "resolve_cb", "default_topic_conf", "ssl_key",
        "ssl_certificate", "ssl_ca", "ssl_engine_callback_data", "oauthbearer_token_refresh_cb", "consume_cb",
        "rebalance_cb", "offset_commit_cb", "dr_cb", "dr_msg_cb", "partitioner_cb", "msg_order_cmp",
    )
}  # fmt: skip
_UNDERSCORED["ssl.certificate.verify.cb"] = "ssl.certificate.verify_cb"
_TEXT_UNDERSCORED: Final = frozenset({"log_level", "enabled_events"})

# librdkafka's properties whose own name ends in ".file" (they take a path).
FILE_PROPERTIES: Final = frozenset(
    {
        "sasl.oauthbearer.assertion.file",
        "sasl.oauthbearer.assertion.private.key.file",
        "sasl.oauthbearer.assertion.jwt.template.file",
    }
)

# Aliases (CONFIGURATION.md "Alias for"), so a protected property cannot come in by its other name.
ALIASES: Final = {
    "metadata.broker.list": "bootstrap.servers",
    "request.required.acks": "acks",
    "delivery.timeout.ms": "message.timeout.ms",
    "auto.commit.enable": "enable.auto.commit",
    "queue.buffering.max.ms": "linger.ms",
    "compression.codec": "compression.type",
    "fetch.message.max.bytes": "max.partition.fetch.bytes",
    "max.in.flight.requests.per.connection": "max.in.flight",
    "message.send.max.retries": "retries",
    "sasl.mechanism": "sasl.mechanisms",
    "sasl.oauthbearer.client.credentials.client.id": "sasl.oauthbearer.client.id",
    "sasl.oauthbearer.client.credentials.client.secret": "sasl.oauthbearer.client.secret",
}

_OFFSETS = "the flows keep their offsets in the Bytewax recovery state, never in a consumer group"
_NO_LOSS = "'nothing lost' rests on it"
PROTECTED: Final[Mapping[str, str]] = {
    "enable.auto.commit": _OFFSETS,
    "enable.auto.offset.store": _OFFSETS,
    "auto.offset.reset": "set KAFKA_START; an offset gone from the broker is the source's decision, logged and counted",
    "enable.partition.eof": "set KAFKA_TAIL",
    "statistics.interval.ms": "the source reads the statistics every second to know a partition is caught up",
    "enable.idempotence": "set BRIDGE_IDEMPOTENCE (bridge) or --no-idempotence (synthetic feed); the sinks need it",
    "acks": f"acks=all: {_NO_LOSS}",
    "message.timeout.ms": f"the sinks and the bridge retry without a deadline: {_NO_LOSS}",
    "delivery.report.only.error": "the delivery callbacks are written for failures only",
    "queue.buffering.max.messages": "set BRIDGE_MAX_IN_FLIGHT (the bridge's window)",
    "queue.buffering.max.kbytes": "set BRIDGE_MAX_IN_FLIGHT_MB (the bridge's window)",
    "transactional.id": "transactions are not used: exactly-once comes from recovery state and idempotent sinks",
    "logger": "a callback the code sets",
    "on_delivery": "a callback the code sets",
    "on_commit": "a callback the code sets",
    "oauth_cb": "a callback the code sets",
}

_SECRET = re.compile(r"password|secret|\.pem$|passphrase|jaas|token|^ssl_key$|sasl\.oauthbearer\.config")
_NAME = re.compile(r"[A-Za-z0-9._-]{1,200}")


class PropertyError(ValueError):
    """A property cannot be used; the message names where it came from (never its value)."""


def is_secret(name: str) -> bool:
    """Whether `name`'s value is shown masked (passwords, secrets, keys, tokens)."""
    return _SECRET.search(name) is not None


def redacted(properties: Mapping[str, str]) -> dict[str, str]:
    """`properties` fit to show: secret values as `***`."""
    return {name: "***" if is_secret(name) else value for name, value in properties.items()}


def from_env_name(rest: str) -> str:
    """`SECURITY_PROTOCOL` -> `security.protocol`; `PRODUCER_LINGER_MS` -> `producer.linger.ms`."""
    dotted = rest.lower().replace("_", ".")
    role, dot, name = dotted.partition(".")
    if role in ROLES and dot:
        return f"{role}.{_UNDERSCORED.get(name, name)}"
    return _UNDERSCORED.get(dotted, dotted)


def to_env_name(name: str, secret_file: bool = False) -> str:
    """The variable that sets `name` (the inverse of `from_env_name`), or its `_FILE` one."""
    return ENV_PREFIX + name.upper().replace(".", "_") + (FILE_SUFFIX if secret_file else "")


def split_env(environ: Mapping[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """The `KAFKA_PROPERTY_*` variables of `environ`: (values by property, secret files by property)."""
    values: dict[str, str] = {}
    files: dict[str, str] = {}
    for variable, value in environ.items():
        upper = variable.upper()
        if not upper.startswith(ENV_PREFIX) or upper == ENV_PREFIX:
            continue
        rest = upper[len(ENV_PREFIX) :]
        name = from_env_name(rest)
        role, dot, bare = name.partition(".")
        if not (role in ROLES and dot):
            bare = name
        if rest.endswith(FILE_SUFFIX) and len(rest) > len(FILE_SUFFIX) and bare not in FILE_PROPERTIES:
            files[from_env_name(rest[: -len(FILE_SUFFIX)])] = value
        else:
            values[name] = value
    return values, files


def _read_text(path: Path, variable: str) -> str:
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise PropertyError(f"{variable}: cannot read {str(path)!r}: {exc.strerror or exc}") from None
    if len(raw) > MAX_FILE_BYTES:
        raise PropertyError(f"{variable}: {str(path)!r} is larger than {MAX_FILE_BYTES} bytes")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise PropertyError(f"{variable}: {str(path)!r} is not UTF-8 text") from None


def read_secret(path: Path, variable: str) -> str:
    """A secret file's content without its trailing newline; PropertyError naming `variable` and the path."""
    text = _read_text(path, variable).rstrip("\r\n")
    if not text:
        raise PropertyError(f"{variable}: {str(path)!r} is empty")
    return text


_ESCAPES = {"t": "\t", "n": "\n", "r": "\r", "f": "\f"}


def _unescape(text: str, where: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(text):
        c = text[i]
        if c != "\\":
            out.append(c)
            i += 1
            continue
        nxt = text[i + 1 : i + 2]
        if nxt == "u":
            digits = text[i + 2 : i + 6]
            if not re.fullmatch(r"[0-9A-Fa-f]{4}", digits):
                raise PropertyError(f"{where}: malformed \\uXXXX escape")
            out.append(chr(int(digits, 16)))
            i += 6
        else:
            out.append(_ESCAPES.get(nxt, nxt))
            i += 2
    return "".join(out)


def _logical_lines(text: str) -> list[tuple[int, str]]:
    """(first line number, line) with continuations joined (a line ending in an odd number of `\\`)."""
    lines = text.splitlines()
    out: list[tuple[int, str]] = []
    i = 0
    while i < len(lines):
        start, line = i + 1, lines[i].lstrip(" \t\f")
        i += 1
        if not line or line[0] in "#!":
            continue
        while (len(line) - len(line.rstrip("\\"))) % 2 == 1:
            line = line[:-1]
            if i >= len(lines):
                break
            line += lines[i].lstrip(" \t\f")
            i += 1
        out.append((start, line))
    return out


def parse_properties(text: str, where: str) -> dict[str, tuple[str, int]]:
    """A Java properties text as {key: (value, line)}; PropertyError for a repeated key or a bad escape."""
    found: dict[str, tuple[str, int]] = {}
    for number, line in _logical_lines(text):
        at = f"{where} line {number}"
        i = 0
        while i < len(line) and line[i] not in "=: \t\f":
            i += 2 if line[i] == "\\" else 1
        key = _unescape(line[:i], at)
        rest = line[i:].lstrip(" \t\f")
        if rest[:1] in ("=", ":"):
            rest = rest[1:].lstrip(" \t\f")
        value = _unescape(rest, at)
        if key in found:
            raise PropertyError(f"{at}: {key!r} is already set on line {found[key][1]}")
        found[key] = (value, number)
    return found


def read_properties_file(path: Path) -> dict[str, tuple[str, str]]:
    """`KAFKA_PROPERTIES_FILE` as {key: (value, where)}; PropertyError naming the file and line."""
    variable = "KAFKA_PROPERTIES_FILE"
    where = f"{variable} {path}"
    text = _read_text(path, variable)
    return {key: (value, f"{where} line {line}") for key, (value, line) in parse_properties(text, where).items()}


def check_name(name: str, where: str) -> tuple[Role | None, str]:
    """(role or None, property) of a given name; PropertyError when it is protected or not a name at all."""
    if not _NAME.fullmatch(name):
        raise PropertyError(f"{where}: {name[:60]!r} is not a librdkafka property name")
    role, dot, rest = name.partition(".")
    scoped: Role | None = role if dot and role in ROLES else None
    prop = rest if scoped else name
    canonical = ALIASES.get(prop, prop)
    if canonical == "bootstrap.servers" and scoped:
        raise PropertyError(f"{where}: {name} cannot differ per client: every client talks to one cluster")
    callback = "_" in canonical and canonical not in _TEXT_UNDERSCORED
    reason = PROTECTED.get(canonical) or ("a callback or pointer the code sets" if callback else None)
    if reason is not None:
        raise PropertyError(f"{where}: {prop} is set by the code and cannot be changed ({reason})")
    return scoped, prop
