"""Logs, readiness, the ops server and the example alert rules and dashboard, without any server."""

from __future__ import annotations

import io
import json
import logging
import re
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import ClassVar

import orjson
import pytest
import yaml
from confluent_kafka import OFFSET_BEGINNING
from prometheus_client import REGISTRY, CollectorRegistry, Counter
from prometheus_client.core import Metric
from pydantic import ValidationError

from connectors.backoff import with_backoff
from connectors.kafka.settings import KafkaSettings
from connectors.monitoring.logs import configure_logging, reset_logging
from connectors.monitoring.readiness import READINESS, Readiness
from connectors.monitoring.server import CannotServe, OpsServer
from connectors.monitoring.settings import LogSettings
from flows.monitoring import ops_port, process_id, spread_bytewax_api_port
from tests.support.monitoring import MONITORING, alert_exprs, dashboard_exprs, used_metrics

# --- logs ----------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _root_level_restored() -> Iterator[None]:
    """configure_logging sets the root logger's level; later tests expect pytest's."""
    level = logging.getLogger().level
    yield
    logging.getLogger().setLevel(level)


def _json_lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_a_json_log_line_carries_level_logger_message_and_the_exception() -> None:
    stream = io.StringIO()
    configure_logging(LogSettings(log_format="json", log_level="debug"), "unit", stream=stream)
    try:
        log = logging.getLogger("tickstock.unit")
        log.debug("plain %s", "line")
        try:
            raise ValueError('bad "value"\nwith a line break')
        except ValueError:
            log.exception("writing %d bars failed", 3)
    finally:
        reset_logging()
    first, second = _json_lines(stream)  # one line per record: the traceback's line breaks are escaped
    assert (first["level"], first["logger"], first["message"], first["service"]) == (
        "DEBUG",
        "tickstock.unit",
        "plain line",
        "unit",
    )
    assert "exception" not in first
    assert second["level"] == "ERROR" and second["message"] == "writing 3 bars failed"
    assert second["exception_type"] == "ValueError"
    assert second["exception"].startswith("Traceback") and 'bad "value"\nwith a line break' in second["exception"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", second["time"])


def test_log_level_filters_and_a_second_configuration_replaces_the_first() -> None:
    first, second = io.StringIO(), io.StringIO()
    configure_logging(LogSettings(log_format="json"), "unit", stream=first)
    configure_logging(LogSettings(log_level="WARNING"), "unit", stream=second)  # text, at WARNING
    try:
        logging.getLogger("tickstock.unit").info("not shown")
        logging.getLogger("tickstock.unit").warning("shown")
    finally:
        reset_logging()
    assert first.getvalue() == ""
    assert second.getvalue().rstrip().endswith("WARNING tickstock.unit: shown") and "not shown" not in second.getvalue()


@pytest.mark.parametrize(("name", "value"), [("LOG_LEVEL", "verbose"), ("LOG_FORMAT", "xml")])
def test_bad_log_settings_name_the_variable(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError, match=name.lower()):
        LogSettings()


# --- readiness -----------------------------------------------------------------------------------


def test_a_condition_without_fresh_reports_goes_stale() -> None:
    r = Readiness()
    r.set("kafka t[0]", True, "lag 0 messages", ttl_s=15, now=100.0)
    assert r.verdict(now=110.0)["ready"]
    stale = r.verdict(now=120.0)
    assert not stale["ready"] and stale["conditions"]["kafka t[0]"]["detail"].startswith("no report for 20 s")


def test_a_failing_probe_is_not_ready_and_says_why() -> None:
    r = Readiness()

    def broken() -> tuple[bool, str]:
        raise ConnectionError("refused")

    r.probe("kafka", broken)
    assert r.verdict()["conditions"]["kafka"] == {"ok": False, "detail": "ConnectionError: refused", "age_s": 0.0}


def test_liveness_stalls_only_while_no_dependency_fails() -> None:
    r = Readiness()
    r.heartbeat("kafka t[0]", now=0.0)
    assert r.liveness(60, now=30.0)["alive"]
    assert r.liveness(60, now=61.0) == {"alive": False, "stalled": {"kafka t[0]": 61.0}, "dependency_failing": False}
    key = r.failing("redis", "publishing: ConnectionError")
    assert r.liveness(60, now=61.0)["alive"]  # waiting out Redis: not ready, but a restart would not help
    r.recovered(key)
    assert not r.liveness(60, now=61.0)["alive"]


def test_a_retrying_dependency_is_not_ready_until_it_succeeds() -> None:
    seen: list[dict] = []
    attempts = iter([ConnectionError("down"), ConnectionError("down"), None])

    def action() -> str:
        failure = next(attempts)
        if failure is not None:
            raise failure
        return "written"

    def looked() -> None:
        seen.append(READINESS.verdict())

    retries = REGISTRY.get_sample_value("tickstock_dependency_retries_total", {"dependency": "unit-db"}) or 0.0
    result = with_backoff(action, retry_on=(ConnectionError,), what="unit write", log=logging.getLogger("unit"),
                          max_backoff_s=0.001, on_retry=looked, dependency="unit-db")  # fmt: skip
    assert result == "written"
    assert [v["failing"].get("unit-db") for v in seen] == [["unit write: ConnectionError: down"]] * 2
    assert "unit-db" not in READINESS.verdict()["failing"]
    assert REGISTRY.get_sample_value("tickstock_dependency_retries_total", {"dependency": "unit-db"}) == retries + 2


def test_a_source_partition_is_ready_only_once_its_lag_is_known_and_small() -> None:
    from connectors.kafka.source import _BatchPartition

    kafka = KafkaSettings(kafka_bootstrap_servers="127.0.0.1:1")
    config = {"group.id": "unit", "enable.auto.commit": False}
    part = _BatchPartition(kafka, config, "unit.trades", 0, OFFSET_BEGINNING, 100, True, OFFSET_BEGINNING, ready_max_lag=10)
    name = "kafka unit.trades[0]"

    def stats(hi: int, position: int, state: str = "UP") -> str:
        return orjson.dumps({
            "brokers": {"b": {"nodeid": 1, "state": state}},
            "topics": {"unit.trades": {"partitions": {"0": {"leader": 1, "fetch_state": "active",
                                                            "hi_offset": hi, "next_offset": position}}}},
        }).decode()  # fmt: skip

    try:
        assert READINESS.verdict()["conditions"][name]["ok"] is False  # before any statistics
        part._on_stats(stats(hi=500, position=0))
        behind = READINESS.verdict()["conditions"][name]
        assert not behind["ok"] and behind["detail"] == "lag 500 messages (READY_MAX_LAG_MESSAGES=10)"
        part._on_stats(stats(hi=500, position=495))
        assert READINESS.verdict()["conditions"][name] | {"age_s": 0} == {"ok": True, "detail": "lag 5 messages", "age_s": 0}
        part._on_stats(stats(hi=500, position=500, state="DOWN"))
        assert READINESS.verdict()["conditions"][name]["detail"].startswith("broker unreachable")
    finally:
        part.close()
    assert name not in READINESS.verdict()["conditions"]


# --- the ops server ------------------------------------------------------------------------------


def _get(url: str) -> tuple[int, bytes, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read(), response.headers["Content-Type"]
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), exc.headers["Content-Type"]


def test_the_ops_server_answers_health_readiness_and_metrics() -> None:
    readiness = Readiness()
    registry = CollectorRegistry()
    Counter("tickstock_unit_events", "unit", registry=registry).inc(3)
    server = OpsServer("127.0.0.1", 0, service="unit", variable="UNIT_OPS_PORT", readiness=readiness, registry=registry).start()
    base = f"http://127.0.0.1:{server.port}"
    try:
        readiness.set("kafka t[0]", False, "not caught up yet")
        status, body, kind = _get(f"{base}/readyz")
        assert (status, kind) == (503, "application/json")
        assert json.loads(body)["conditions"]["kafka t[0]"]["detail"] == "not caught up yet"
        assert b"tickstock_ready 0.0" in _get(f"{base}/metrics")[1]
        readiness.set("kafka t[0]", True, "lag 0 messages")
        assert _get(f"{base}/readyz")[0] == 200
        status, body, kind = _get(f"{base}/metrics")
        assert status == 200 and kind.startswith("text/plain; version=0.0.4")
        assert b"tickstock_unit_events_total 3.0" in body and b"tickstock_ready 1.0" in body
        status, body, _ = _get(f"{base}/healthz")
        assert status == 200 and json.loads(body)["status"] == "alive"
        assert _get(f"{base}/nothing")[0] == 404
        request = urllib.request.Request(f"{base}/readyz", data=b"x", method="POST")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        assert refused.value.code == 405 and refused.value.headers["Allow"] == "GET"
        with pytest.raises(CannotServe, match="set UNIT_OPS_PORT"):
            OpsServer("127.0.0.1", server.port, service="unit", variable="UNIT_OPS_PORT")
    finally:
        server.stop()


def test_each_process_of_a_cluster_gets_its_own_ports() -> None:
    argv = ["flows.ohlcv:build_flow()", "-i", "1", "-a", "localhost:2101;localhost:2102", "-w", "2"]
    assert [ops_port(9500, process_id(argv, {}), True), ops_port(9600, process_id(argv, {}), True)] == [9501, 9601]
    assert ops_port(9500, process_id(argv, {}), per_process=False) == 9500  # one process per pod (Kubernetes)
    env = {"BYTEWAX_DATAFLOW_API_ENABLED": "1", "BYTEWAX_DATAFLOW_API_PORT": "4000"}
    assert spread_bytewax_api_port(process_id(argv, {}), True, env) == 4001 and env["BYTEWAX_DATAFLOW_API_PORT"] == "4001"
    with pytest.raises(SystemExit, match="BYTEWAX_DATAFLOW_API_PORT"):
        spread_bytewax_api_port(0, True, {"BYTEWAX_DATAFLOW_API_ENABLED": "1", "BYTEWAX_DATAFLOW_API_PORT": "http"})


# --- alert rules and the dashboard ---------------------------------------------------------------


def _exposed_names(families: list[Metric]) -> set[str]:
    """Every sample name a family can expose, whether or not it has samples yet (labelled metrics start empty)."""
    names: set[str] = set()
    for family in families:
        if family.type == "counter":
            names |= {family.name + "_total", family.name + "_created"}
        elif family.type == "histogram":
            names |= {family.name + suffix for suffix in ("_bucket", "_sum", "_count", "_created")}
        else:
            names.add(family.name)
        names |= {sample.name for sample in family.samples}
    return names


def declared_metrics() -> set[str]:
    """What the four services expose: the default registry once their modules are imported, and their collectors."""
    import flows.detection
    import flows.ohlcv  # noqa: F401 - registers the flows' metrics
    from connectors.feeds.bridge import monitoring as bridge_monitoring
    from connectors.gateway import metrics as gateway_metrics
    from connectors.monitoring.server import _ReadyCollector

    class _Bridge:  # what the bridge's collector reads
        stats = __import__("connectors.feeds.bridge.health", fromlist=["Stats"]).Stats()
        retry: ClassVar[list] = []
        subscribed = False
        last_event_ms = 0

        def in_flight(self) -> int:
            return 0

    stats = gateway_metrics.Stats()
    stats.dropped["slow"] = stats.rejected[401] = stats.ignored["x"] = 1
    stats.task("flusher")
    families = list(REGISTRY.collect())
    families += list(gateway_metrics._Collector(stats, lambda: gateway_metrics.QueueDepths(0, 0, 0), lambda: True).collect())
    families += list(bridge_monitoring._Collector(_Bridge()).collect())  # type: ignore[arg-type]
    families += list(_ReadyCollector(Readiness(), 0.0).collect())
    return _exposed_names(families)


def test_the_alert_rules_are_complete() -> None:
    rules = yaml.safe_load((MONITORING / "alerts.yml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            assert {"alert", "expr", "labels", "annotations"} <= set(rule), rule
            assert rule["labels"]["severity"] in ("page", "warn") and rule["annotations"]["summary"]


@pytest.mark.parametrize("exprs", [alert_exprs, dashboard_exprs], ids=["alerts.yml", "grafana-dashboard.json"])
def test_every_metric_the_rules_and_the_dashboard_use_exists(exprs) -> None:
    used = {name for expr in exprs() for name in re.findall(r"\btickstock_[a-z0-9_]+", expr)}
    assert len(used) >= 10
    assert used - declared_metrics() == set()
    assert used <= used_metrics()


def test_every_metric_is_named_by_the_conventions() -> None:
    for name in declared_metrics():
        if name.startswith("tickstock_"):
            assert re.fullmatch(r"tickstock_[a-z][a-z0-9_]*", name), name
            assert not name.endswith("_total_total"), name
