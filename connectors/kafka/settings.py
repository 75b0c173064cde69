"""Kafka settings: where the broker is, how every client reaches it, the topics and how the flows consume them.

Any librdkafka property reaches every client (`KAFKA_PROPERTY_*`, `KAFKA_PROPERTIES_FILE`,
secrets from `KAFKA_PROPERTY_*_FILE`; the rules in `connectors.kafka.properties`); they are
read and checked here, once, so a bad one stops a program at start with the variable named,
and every client gets them through `connectors.kafka.clients`. Topic creation takes the
replication factor, `min.insync.replicas` and each kind of topic's retention from here.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, PrivateAttr, field_serializer, model_validator
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

from connectors.kafka import properties as props
from connectors.kafka.properties import PropertyError, Role
from connectors.settings import CONFIG, NonBlank, matching

# Kafka's own rule for topic names: 1-249 of these characters, and not "." or "..".
TopicName = Annotated[
    str,
    matching(
        r"(?!\.{1,2}$)[A-Za-z0-9._-]{1,249}", "not a Kafka topic name (1-249 letters, digits, '.', '_', '-'; not '.' or '..')"
    ),
]

DAY_MS = 86_400_000
_PATH_SUFFIXES = (".location", ".file", ".keytab")  # properties that name a file (ssl.ca.location=probe: librdkafka's search)
_MAX_RETENTION_MS = 100 * 365 * DAY_MS


def _retention(default: int, what: str) -> Any:
    return Field(default, ge=-1, le=_MAX_RETENTION_MS, description=f"retention.ms of {what} when we create them (-1: forever)")


class _PropertyVariables(PydanticBaseSettingsSource):
    """`KAFKA_PROPERTY_*` variables, mapped to librdkafka names (see `connectors.kafka.properties`)."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # everything comes from __call__

    def __call__(self) -> dict[str, Any]:
        values, files = props.split_env(os.environ)
        found: dict[str, Any] = {}
        if values:
            found["kafka_properties"] = values
        if files:
            found["kafka_secret_files"] = files
        return found


log = logging.getLogger(__name__)


class _CheckLog(logging.Handler):
    """librdkafka's lines while the check builds its clients: its configuration warnings (a property
    that applies to another kind of client, or does nothing with this security protocol) are the
    deployment's to see, once, with secrets masked; the rest (no bootstrap servers: on purpose) is dropped."""

    def __init__(self, secrets: list[str], seen: set[str]) -> None:
        super().__init__()
        self._secrets = secrets
        self._seen = seen  # one line per warning, not one per kind of client

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if "CONFWARN" not in text or "bootstrap.servers" in text:
            return
        for secret in self._secrets:
            text = text.replace(secret, "***")
        text = text.split("]: ", 1)[-1]
        if text not in self._seen:
            self._seen.add(text)
            log.warning("Kafka properties: %s", text)


# What the check builds each kind of client with besides the deployment's properties: what the
# code sets that a property could conflict with (an idempotent producer takes max.in.flight <= 5).
_CHECK_WITH: dict[Role, dict[str, object]] = {
    "consumer": {"group.id": "tickstock-settings-check", "enable.auto.commit": False},
    "producer": {"enable.idempotence": True, "acks": "all"},
    "admin": {},
}


class KafkaSettings(BaseSettings):
    model_config = CONFIG

    kafka_bootstrap_servers: NonBlank = Field("127.0.0.1:9092", max_length=4096)
    kafka_properties: dict[str, str] = Field(
        default_factory=dict, repr=False, description="librdkafka properties by name (KAFKA_PROPERTY_<NAME>)"
    )
    kafka_secret_files: dict[str, Path] = Field(
        default_factory=dict, description="librdkafka properties read from files (KAFKA_PROPERTY_<NAME>_FILE)"
    )
    kafka_properties_file: Path | None = Field(None, description="a Java-style properties file of librdkafka properties")
    topic_trades: TopicName = "stocks.trades"
    topic_quotes: TopicName = "stocks.quotes"
    topic_second_aggs: TopicName = "stocks.aggs.second"
    topic_minute_aggs: TopicName = "stocks.aggs.minute"
    topic_dead_letter: TopicName = "stocks.deadletter"
    topic_bars: TopicName = Field(
        "stocks.bars.1m", description="final bars and revisions of every timeframe (`timeframe`), key = symbol (JSON)"
    )
    topic_partitions: int = Field(4, ge=1, le=10_000, description="partitions per topic when we create them")
    topic_replication_factor: int = Field(1, ge=1, le=32, description="replicas per partition when we create topics")
    topic_min_insync_replicas: int | None = Field(
        None, ge=1, le=32, description="min.insync.replicas of the topics we create (default: the broker's)"
    )
    topic_retention_ms: int = _retention(7 * DAY_MS, "the feed topics (trades, quotes, second and minute aggregates)")
    topic_bars_retention_ms: int = _retention(7 * DAY_MS, "the bars topic")
    topic_dead_letter_retention_ms: int = _retention(30 * DAY_MS, "the dead-letter topic")
    kafka_batch_size: int = Field(10_000, ge=1, le=1_000_000, description="max messages per consume call")
    kafka_start: Literal["earliest", "latest"] = Field(
        "earliest",
        description="where a flow without recovery state starts, and where it resumes when its offset is no longer "
        "on the broker (deleted by retention, or the topic was recreated): logged and counted either way",
    )
    kafka_tail: bool = Field(True, description="keep waiting at the end of the topic; false = stop at EOF")

    # Resolved at validation: the properties by scope (None = every client), and where each came from.
    _scoped: dict[Role | None, dict[str, str]] = PrivateAttr(default_factory=dict)
    _where: dict[str, str] = PrivateAttr(default_factory=dict)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, _PropertyVariables(settings_cls), env_settings, dotenv_settings, file_secret_settings

    @field_serializer("kafka_properties")
    def _masked(self, value: dict[str, str]) -> dict[str, str]:
        return props.redacted(value)

    @model_validator(mode="after")
    def _resolve(self) -> KafkaSettings:
        if self.topic_min_insync_replicas is not None and self.topic_min_insync_replicas > self.topic_replication_factor:
            _fail(
                f"TOPIC_MIN_INSYNC_REPLICAS={self.topic_min_insync_replicas} exceeds TOPIC_REPLICATION_FACTOR="
                f"{self.topic_replication_factor}: no write could ever be acknowledged"
            )
        for variable, value in (
            ("TOPIC_RETENTION_MS", self.topic_retention_ms),
            ("TOPIC_BARS_RETENTION_MS", self.topic_bars_retention_ms),
            ("TOPIC_DEAD_LETTER_RETENTION_MS", self.topic_dead_letter_retention_ms),
        ):
            if value != -1 and value < 60_000:
                _fail(f"{variable}={value}: must be -1 (forever) or at least 60000 (a minute)")
        if not (self.kafka_properties or self.kafka_secret_files or self.kafka_properties_file):
            return self
        try:
            self._resolve_properties()
        except PropertyError as exc:
            _fail(str(exc))
        return self

    def _resolve_properties(self) -> None:
        given: dict[str, tuple[str, str]] = {}  # name -> (value, where)
        if self.kafka_properties_file is not None:
            given.update(props.read_properties_file(self.kafka_properties_file))
        for name, value in self.kafka_properties.items():
            given[name] = (value, props.to_env_name(name))
        for name, path in self.kafka_secret_files.items():
            variable = props.to_env_name(name, secret_file=True)
            if name in self.kafka_properties:
                raise PropertyError(f"{variable} and {props.to_env_name(name)} both set {name}: keep one")
            given[name] = (props.read_secret(path, variable), f"{variable} ({path})")
        scoped: dict[Role | None, dict[str, str]] = {}
        where: dict[str, str] = {}
        secrets = [value for name, (value, _) in given.items() if props.is_secret(name) or name in self.kafka_secret_files]
        for name, (value, at) in given.items():
            role, prop = props.check_name(name, at)
            if props.ALIASES.get(prop, prop) == "bootstrap.servers":
                self._take_bootstrap(value, at)
                continue
            if prop.endswith(_PATH_SUFFIXES) and value != "probe" and not Path(value).exists():
                raise PropertyError(f"{at}: {prop} names {value!r}, which does not exist")  # librdkafka says "BIO lib"
            scoped.setdefault(role, {})[prop] = value
            where[name] = at
        self._scoped, self._where = scoped, where
        seen: set[str] = set()
        for role in props.ROLES:
            _check_with_librdkafka(role, self.client_properties(role), self._source_of, secrets, seen)

    def _take_bootstrap(self, value: str, at: str) -> None:
        """A properties file may name the cluster (Confluent Cloud's does); KAFKA_BOOTSTRAP_SERVERS must agree."""
        if "kafka_bootstrap_servers" in self.model_fields_set and value.strip() != self.kafka_bootstrap_servers.strip():
            raise PropertyError(f"{at}: bootstrap.servers differs from KAFKA_BOOTSTRAP_SERVERS: set one of them")
        if not value.strip():
            raise PropertyError(f"{at}: bootstrap.servers is empty")
        object.__setattr__(self, "kafka_bootstrap_servers", value.strip())

    def _source_of(self, role: Role, prop: str) -> str | None:
        """Where the value `role`'s client gets for `prop` came from (its own scope first)."""
        return self._where.get(f"{role}.{prop}") or self._where.get(prop)

    def client_properties(self, role: Role) -> dict[str, str]:
        """The deployment's librdkafka properties for one kind of client (the common ones, then its own)."""
        return self._scoped.get(None, {}) | self._scoped.get(role, {})

    def shown_properties(self) -> dict[str, dict[str, str]]:
        """Every kind of client's properties fit to show (logs, health pages): secrets as `***`."""
        secret_files = set(self.kafka_secret_files)
        shown: dict[str, dict[str, str]] = {}
        for role in props.ROLES:
            values = self.client_properties(role)
            shown[role] = {
                k: "***" if (k in secret_files or f"{role}.{k}" in secret_files) else v for k, v in props.redacted(values).items()
            }
        return shown

    def kafka_env(self) -> dict[str, str]:
        """The variables that give another process these properties (the secret files as paths, not contents)."""
        env = {props.to_env_name(name): value for name, value in self.kafka_properties.items()}
        env |= {props.to_env_name(name, secret_file=True): str(path) for name, path in self.kafka_secret_files.items()}
        if self.kafka_properties_file is not None:
            env["KAFKA_PROPERTIES_FILE"] = str(self.kafka_properties_file)
        return env

    def topics(self) -> list[str]:
        """Every topic the system uses, for creation at set-up."""
        return [
            self.topic_trades,
            self.topic_quotes,
            self.topic_second_aggs,
            self.topic_minute_aggs,
            self.topic_dead_letter,
            self.topic_bars,
        ]

    def topic_config(self, topic: str) -> dict[str, str]:
        """The topic-level configuration `topic` is created with (and checked against when it exists)."""
        if topic == self.topic_dead_letter:
            retention = self.topic_dead_letter_retention_ms
        elif topic == self.topic_bars:
            retention = self.topic_bars_retention_ms
        else:
            retention = self.topic_retention_ms
        config = {"retention.ms": str(retention)}
        if self.topic_min_insync_replicas is not None:
            config["min.insync.replicas"] = str(self.topic_min_insync_replicas)
        return config


def _fail(problem: str) -> None:
    # The message goes through a context value: braces in it are not a template.
    raise PydanticCustomError("kafka_settings", "{problem}", {"problem": problem})


def _refused_alone(kind: Any, role: Role, name: str, value: str) -> bool:
    """Whether librdkafka refuses `name` even on its own (to find which property an error is about)."""
    from confluent_kafka import KafkaException

    try:
        client = kind(_CHECK_WITH[role] | {name: value, "log_level": 0})
    except (KafkaException, ValueError, TypeError):
        return True
    if role == "consumer":
        client.close()
    return False


_QUOTED = re.compile(r'"([A-Za-z0-9._-]+)"')


def _check_with_librdkafka(role: Role, given: dict[str, str], source_of: Any, secrets: list[str], seen: set[str]) -> None:
    """librdkafka judges the properties (unknown names, bad values, files it cannot load, conflicts):
    its error becomes a PropertyError naming the variable or file line the property came from."""
    if not given:
        return
    from confluent_kafka import Consumer, KafkaException, Producer
    from confluent_kafka.admin import AdminClient

    kind = {"consumer": Consumer, "producer": Producer, "admin": AdminClient}[role]
    librdkafka = logging.getLogger(f"connectors.kafka.settings.check.{role}")
    librdkafka.propagate = False
    librdkafka.handlers = [_CheckLog(secrets, seen)]
    config = _CHECK_WITH[role] | given | {"logger": librdkafka}  # no bootstrap.servers: nothing connects
    try:
        client = kind(config)
    except (KafkaException, ValueError, TypeError) as exc:
        text = exc.args[0].str() if exc.args and hasattr(exc.args[0], "str") else str(exc)
        for secret in secrets:
            text = text.replace(secret, "***")
        named = {props.ALIASES.get(n, n) for n in _QUOTED.findall(text)}
        dotted = text.lower().replace(" ", ".")  # "Unsupported SASL mechanism" names sasl.mechanism
        culprits = (
            [p for p in given if props.ALIASES.get(p, p) in named]
            or [p for p in given if p in text]
            or [p for p in given if any(n in dotted for n, c in [(p, p), *props.ALIASES.items()] if c == props.ALIASES.get(p, p))]
            or [p for p in given if len(given[p]) > 2 and given[p] in text and not props.is_secret(p)]
            or [p for p in given if _refused_alone(kind, role, p, given[p])]
        )
        where = sorted({source_of(role, p) or p for p in culprits}) or ["KAFKA_PROPERTY_* / KAFKA_PROPERTIES_FILE"]
        raise PropertyError(f"{', '.join(where)}: librdkafka refuses it for the {role} clients: {text}") from None
    if isinstance(client, Consumer):
        client.close()
    else:
        client.poll(0)  # serves the log lines still queued
