"""Structured logs: one JSON object per line, with the ids that let one report be followed.

Log calls pass ids as `extra`: `log.info("hit", extra={"correlation_id": ..., ...})`.
The correlation id is the id of the report that started the chain, so
`grep <sighting id>` over the three services' logs shows its acceptance, its hits and the
alerts they raised, when `GIAPRANH_LOG_EVENTS=true` (those per-event lines go to the
`giapranh.events.<service>` loggers at DEBUG, off by default: counted in the metrics).
`GIAPRANH_LOG_FORMAT=text` gives plain lines for development.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

TRACE_FIELDS = ("event_id", "correlation_id", "hit_id", "alert_id", "entry_id", "unit", "count")


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str):
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "service": self.service,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for field in TRACE_FIELDS:
            value = getattr(record, field, None)
            if value is not None:
                entry[field] = value if isinstance(value, int) else str(value)
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


EVENTS_LOGGER = "giapranh.events"
"""Parent of the per-event loggers (`giapranh.events.ingest`, `.matcher`, `.notifier`)."""


def event_logger(service: str) -> logging.Logger:
    """The logger of one line per event of `service` (at DEBUG, so `isEnabledFor` skips
    building them unless `GIAPRANH_LOG_EVENTS` is on)."""
    return logging.getLogger(f"{EVENTS_LOGGER}.{service}")


def logging_config(service: str, level: str, fmt: str, *, events: bool = False
                   ) -> dict[str, Any]:
    """A `logging.config.dictConfig` for a service (faust's worker takes one too)."""
    formatter: dict[str, Any] = (
        {"()": JsonFormatter, "service": service} if fmt == "json"
        else {"format": f"%(levelname)s {service} %(name)s: %(message)s"}
    )
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"default": formatter},
        "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "default"}},
        "root": {"level": level, "handlers": ["console"]},
        "loggers": {EVENTS_LOGGER: {"level": "DEBUG" if events else "WARNING"}},
    }
