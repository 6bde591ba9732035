"""The log output of ``streamctl serve``: one line per record, as text or as JSON.

Without this, uvicorn's ``log_config`` configures only its own loggers and the root logger has no
handler, so Python's last-resort handler printed ``streamctl.*`` records at WARNING and above
only: INFO lines (purges, run ends) were dropped whatever ``--log-level`` said. ``log_config``
gives uvicorn a configuration that routes its loggers and streamctl's own through one handler on
stderr, at the configured level; third-party libraries stay quiet (aiosqlite logs every
operation at DEBUG).

Every line carries a UTC timestamp, the level and the logger. Fields passed with ``extra=`` (for
runs: ``run_id``, ``thread_id``, ``owner``, ``status``, ``duration``, ``events``) are appended as
``key=value`` in text and become keys of the object in JSON.

A host that embeds streamctl keeps its own logging; it may use ``log_config(level, "json")`` with
``logging.config.dictConfig`` to get the same lines.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import unquote_plus

LogFormat = Literal["text", "json"]
TRACE = 5

_REDACTED = "[redacted]"

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_RECORD_ATTRS = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys() | {"message", "asctime"}
)
# uvicorn's coloured duplicate of its start-up message: not a field.
_IGNORED_EXTRAS = frozenset({"color_message"})


def record_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The fields a record was given with ``extra=``, in the order they were given."""
    return {
        k: v
        for k, v in vars(record).items()
        if k not in _RECORD_ATTRS and k not in _IGNORED_EXTRAS and not k.startswith("_")
    }


def _timestamp(record: logging.LogRecord) -> str:
    moment = datetime.fromtimestamp(record.created, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class TextFormatter(logging.Formatter):
    """``2026-11-30T06:00:00.123Z INFO streamctl.run_task run ended run_id=… status=…``"""

    def format(self, record: logging.LogRecord) -> str:
        line = f"{_timestamp(record)} {record.levelname} {record.name} {record.getMessage()}"
        for key, value in record_fields(record).items():
            line += f" {key}={value}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time``, ``level``, ``logger``, ``message``, then the fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": _timestamp(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record_fields(record).items():
            entry.setdefault(key, value)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def redact_query(target: str) -> str:
    """``target`` (a request's path and query) with the value of every ``token`` parameter
    replaced. The query is split as the server parses it (``&``, then percent- and plus-decoded
    names), so ``?%74oken=`` or ``?tok%65n=``, which the server reads as ``token``, are redacted
    too: matching the raw text missed them."""
    path, sep, query = target.partition("?")
    if not sep:
        return target
    parts = []
    for part in query.split("&"):
        name, eq, _ = part.partition("=")
        if unquote_plus(name) == "token":
            part = f"{name}={_REDACTED}" if eq else part
        parts.append(part)
    return f"{path}?{'&'.join(parts)}"


class RedactTokens(logging.Filter):
    """Keep stream tokens (``?token=…``) out of the access log."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                redact_query(a) if isinstance(a, str) and "?" in a else a for a in record.args
            )
        return True


def log_config(level: str, fmt: LogFormat = "text") -> dict[str, Any]:
    """A ``logging.config.dictConfig`` dictionary (also uvicorn's ``log_config``)."""
    formatter = JsonFormatter if fmt == "json" else TextFormatter
    logging.addLevelName(TRACE, "TRACE")  # uvicorn's level below DEBUG
    number = TRACE if level.lower() == "trace" else logging.getLevelName(level.upper())
    if not isinstance(number, int):
        raise ValueError(f"unknown log level {level!r}")
    logger = {"handlers": ["stderr"], "level": number, "propagate": False}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"line": {"()": formatter}},
        "filters": {"redact_tokens": {"()": RedactTokens}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "line",
                "stream": "ext://sys.stderr",
            }
        },
        "loggers": {
            "streamctl": logger,
            "uvicorn": logger,
            "uvicorn.error": {"level": number},
            "uvicorn.access": {**logger, "filters": ["redact_tokens"]},
        },
    }
