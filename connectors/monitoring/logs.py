"""Logging for every service: `LOG_LEVEL`, and `LOG_FORMAT=json` for one JSON object per line.

A JSON line carries `time` (UTC, ISO 8601, milliseconds), `level`, `logger`, `message`,
`service`, `process` and `thread`, plus `exception` (the formatted traceback) and
`exception_type` when the record has exception info, and `stack` for `stack_info`. Log shippers
(Loki, Elasticsearch, Cloud Logging) read it without a parsing rule.

>>> import io
>>> stream = io.StringIO()
>>> configure_logging(LogSettings(log_format="json"), "doc", stream=stream)
>>> logging.getLogger("tickstock.doc").warning("lag %d s", 7)
>>> line = json.loads(stream.getvalue())
>>> line["level"], line["logger"], line["message"], line["service"]
('WARNING', 'tickstock.doc', 'lag 7 s', 'doc')
>>> reset_logging()
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import TextIO

from connectors.monitoring.settings import LogSettings

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_OURS = "_tickstock_handler"  # marks the handler configure_logging installed, so a second call replaces it


class JsonFormatter(logging.Formatter):
    """One JSON object per record (never a line break inside: tracebacks are escaped)."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "service": self.service,
            "process": record.process,
            "thread": record.threadName,
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
            line["exception_type"] = record.exc_info[0].__name__ if record.exc_info[0] is not None else None
        elif record.exc_text:
            line["exception"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, ensure_ascii=False, default=str)


def configure_logging(settings: LogSettings, service: str, *, stream: TextIO | None = None) -> None:
    """The root logger at `LOG_LEVEL`, writing to stderr in `LOG_FORMAT`; calling it again replaces the first.

    Handlers others installed (pytest's, an embedding application's) stay; only ours is replaced,
    so building a flow twice in one process does not log every line twice.
    """
    root = logging.getLogger()
    reset_logging()
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter(service) if settings.log_format == "json" else logging.Formatter(TEXT_FORMAT))
    setattr(handler, _OURS, True)
    root.addHandler(handler)
    root.setLevel(settings.log_level)


def reset_logging() -> None:
    """Remove the handler `configure_logging` installed (tests, or an embedding program taking over)."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, _OURS, False)]:
        root.removeHandler(handler)
        handler.close()
