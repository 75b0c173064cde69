"""The metric names the example alert rules and the Grafana dashboard use, and those a /metrics page exposes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

MONITORING = Path(__file__).resolve().parents[2] / "infra" / "monitoring"
_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("_sum", "_count", "_created"),
}


def alert_exprs() -> list[str]:
    rules = yaml.safe_load((MONITORING / "alerts.yml").read_text())
    return [rule["expr"] for group in rules["groups"] for rule in group["rules"]]


def dashboard_exprs() -> list[str]:
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def used_metrics() -> set[str]:
    """Every `tickstock_*` name in the PromQL of the rules and the dashboard."""
    return {name for expr in alert_exprs() + dashboard_exprs() for name in re.findall(r"\btickstock_[a-z0-9_]+", expr)}


def exposed_metrics(text: str) -> set[str]:
    """The sample names a Prometheus text page can carry: from its `# TYPE` lines (families without samples too)."""
    names: set[str] = set()
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", text, re.MULTILINE):
        names.add(name)
        base = name.removesuffix("_total")
        names |= {base + suffix for suffix in _SUFFIXES.get(kind, ())}
    return names
