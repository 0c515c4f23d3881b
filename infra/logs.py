"""Structured logs: one JSON object a line (or plain text), each carrying the exchange id.

The exchange id is the request id of the broker's signed query: the broker binds it when it signs
the query, each node when it has verified it, so the lines of one exchange can be joined across
processes. It lives in a context variable that the gRPC edge clears at the start and end of every
call (the server's worker threads are reused).

No personal data: callers log ids of parties, agreements and exchanges, codes and reasons, never
resident ids, consent terms or query values. Exceptions are written as their type and stack frames
only, because exception messages (database errors above all) can carry the values a statement
was run with.
"""

from __future__ import annotations

import json
import logging
import sys
import traceback
from contextvars import ContextVar, Token
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, TextIO

EXCHANGE_ID: ContextVar[str | None] = ContextVar("citybroker_exchange_id", default=None)

# Attributes every LogRecord has; the rest came in `extra=` and are written as fields.
_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "exchange_id"}


class LogFormat(StrEnum):
    """How `citybroker node serve` and `broker serve` write their logs to stderr."""

    JSON = "json"
    TEXT = "text"


def bind_exchange(exchange_id: str) -> None:
    """Tag what this call logs from now on with `exchange_id` (until the edge clears it)."""
    EXCHANGE_ID.set(exchange_id)


def start_call() -> Token[str | None]:
    """Clear the exchange id for a new call; the token restores the previous value."""
    return EXCHANGE_ID.set(None)


def end_call(token: Token[str | None]) -> None:
    """Forget the call's exchange id."""
    EXCHANGE_ID.reset(token)


class _ExchangeFilter(logging.Filter):
    """Stamps each record with the exchange id of the thread that emits it."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.exchange_id = EXCHANGE_ID.get()
        return True


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD}


def _error(record: logging.LogRecord) -> dict[str, Any] | None:
    """An exception as its type and frames (file:line function), never its message."""
    if not record.exc_info or record.exc_info[0] is None:
        return None
    kind, _, tb = record.exc_info
    frames = traceback.extract_tb(tb)
    return {
        "type": kind.__name__,
        "stack": [f"{f.filename}:{f.lineno} {f.name}" for f in frames],
    }


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time (UTC), level, logger, message, exchange_id when bound, the
    record's extra fields, and `error` (type and frames) for an exception."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of JSON."""
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        exchange = getattr(record, "exchange_id", None)
        if exchange:
            line["exchange_id"] = exchange
        line.update(_fields(record))
        error = _error(record)
        if error is not None:
            line["error"] = error
        return json.dumps(line, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """`TIME LEVEL LOGGER MESSAGE key=value ...`, the same fields as JSON for a terminal."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of text."""
        at = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
        parts = [at, record.levelname, record.name, record.getMessage()]
        exchange = getattr(record, "exchange_id", None)
        if exchange:
            parts.append(f"exchange_id={exchange}")
        parts += [f"{k}={v}" for k, v in _fields(record).items()]
        error = _error(record)
        if error is not None:
            parts.append(f"error={error['type']} at {' < '.join(reversed(error['stack']))}")
        return " ".join(str(p) for p in parts)


def handler(fmt: LogFormat, stream: TextIO | None = None) -> logging.Handler:
    """A handler writing `fmt` lines, stamped with the exchange id, to `stream` (stderr)."""
    out = logging.StreamHandler(stream or sys.stderr)
    out.addFilter(_ExchangeFilter())
    out.setFormatter(JsonFormatter() if fmt is LogFormat.JSON else TextFormatter())
    return out


def configure(fmt: LogFormat, level: int = logging.INFO) -> None:
    """Send every `citybroker.*` logger's records, and warnings from libraries, to stderr."""
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler(fmt))
    root.setLevel(logging.WARNING)
    logging.getLogger("citybroker").setLevel(level)
