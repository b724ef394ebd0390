"""Structured (JSON-lines) logs that carry the Snowflake query and batch ids, and never prompt or output text.

Handlers set :data:`query_id` and :data:`batch_id` for the duration of a request; every record logged
meanwhile carries them. Log calls pass only counts, names, statuses and timings.
"""

from __future__ import annotations

import contextvars
import logging
import sys
import time

import orjson

query_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("query_id", default=None)
batch_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("batch_id", default=None)

log = logging.getLogger("spcs_llm")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "event": record.getMessage(),
        }
        if (qid := query_id.get()) is not None:
            entry["query_id"] = qid
        if (bid := batch_id.get()) is not None:
            entry["batch_id"] = bid
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str, option=orjson.OPT_SERIALIZE_NUMPY).decode()  # vectors (log_content)


def setup_logging(level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    log.handlers[:] = [handler]
    log.setLevel(level.upper())
    log.propagate = False


def event(name: str, level: int = logging.INFO, /, **fields: object) -> None:
    """Log one structured event. Callers pass only metadata (never prompt or output text)."""
    if log.isEnabledFor(level):
        log.log(level, name, extra={"fields": fields})
