"""Logging: one format for every logger (the server's, uvicorn's, the libraries'), as text for a terminal or as one
JSON object per line for a log pipeline (Loki, ELK), with the request id and model of the request being handled on
each line logged while handling it.

Fields passed as `extra=` become keys of the JSON object, or `key=value` pairs after a text line's message. Nothing
here logs headers or bodies: callers pass the fields they mean to log, and API keys never reach a log call.
"""

from __future__ import annotations

import json
import logging
import sys
from contextvars import ContextVar, Token
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, TextIO

LogFormat = Literal["text", "json"]
LEVELS = ("debug", "info", "warning", "error", "critical")
# The loggers `--log-level` sets: the server's, the model code's and uvicorn's (whose access log stays off: the
# server's own, `server.access`, replaces it). Other libraries log at info and above whatever the level.
OWN_LOGGERS = ("server", "model_core", "uvicorn", "uvicorn.error", "uvicorn.asgi")
ACCESS_LOGGER = "server.access"

# Attributes every LogRecord has; anything else on a record came from `extra=` (or the context filter).
_STANDARD = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName", "color_message"}


@dataclass
class RequestContext:
    """The request being handled in this task: its id, and the configured model once the route has picked it."""

    request_id: str
    model: str = ""


_current: ContextVar[RequestContext | None] = ContextVar("perceiver_request", default=None)


def bind(context: RequestContext) -> Token[RequestContext | None]:
    """Make `context` the current request's (for this task and what it awaits) until `unbind`."""
    return _current.set(context)


def unbind(token: Token[RequestContext | None]) -> None:
    _current.reset(token)


def current() -> RequestContext | None:
    return _current.get()


class _RequestFilter(logging.Filter):
    """Adds the current request's id and model to every record logged while it is handled."""

    def filter(self, record: logging.LogRecord) -> bool:
        context = _current.get()
        if context is not None:
            if not hasattr(record, "request_id"):
                record.request_id = context.request_id
            if context.model and not hasattr(record, "model"):
                record.model = context.model
        return True


def extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}


def _timestamp(record: logging.LogRecord) -> str:
    return datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class JSONFormatter(logging.Formatter):
    """One JSON object per line: time (UTC), level, logger, message, the record's extra fields, and the traceback."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": _timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            **extras(record),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False, default=str, separators=(",", ":"))


class TextFormatter(logging.Formatter):
    """`time LEVEL logger: message key=value...`, values quoted when they hold spaces."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = " ".join(f"{k}={_text_value(v)}" for k, v in extras(record).items() if v not in ("", None))
        if not fields:
            return line
        first, newline, rest = line.partition("\n")  # a traceback stays below the fields
        return f"{first} {fields}{newline}{rest}"


def _text_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str, separators=(",", ":"))
    return json.dumps(text) if not text or any(c.isspace() or c in '"=' for c in text) else text


def default_format(stream: TextIO) -> LogFormat:
    """text on a terminal, json otherwise (a container's or a service's log is read by a pipeline)."""
    isatty = getattr(stream, "isatty", None)
    return "text" if isatty is not None and isatty() else "json"


def configure(level: str, fmt: LogFormat | None = None, *, stream: TextIO | None = None) -> LogFormat:
    """Route every logger through one handler on the root logger, at `level`, in `fmt` (default: by the stream)."""
    stream = stream or sys.stderr
    fmt = fmt or default_format(stream)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JSONFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(_RequestFilter())
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "perceiver", False)]:
        root.removeHandler(old)
    handler.perceiver = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    numeric = logging.getLevelName(level.upper())
    root.setLevel(max(numeric, logging.INFO))
    for name in OWN_LOGGERS:  # uvicorn adds its own handlers unless told otherwise (the cli passes log_config=None)
        logger = logging.getLogger(name)
        if name.startswith("uvicorn"):
            logger.handlers.clear()
            logger.propagate = True
        logger.setLevel(numeric)
    logging.getLogger("uvicorn.access").disabled = True
    return fmt
