"""infra.logs: JSON and text lines, the exchange id of the emitting call, exceptions without their
messages (which can carry the values a statement was run with)."""

from __future__ import annotations

import contextvars
import io
import json
import logging

from infra import logs
from infra.logs import LogFormat


def _logger(fmt: LogFormat) -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    log = logging.getLogger(f"citybroker.test.{fmt}")
    log.handlers[:] = [logs.handler(fmt, stream)]
    log.setLevel(logging.INFO)
    log.propagate = False
    return log, stream


def test_json_lines_carry_fields_and_the_bound_exchange_id_only_within_the_call() -> None:
    # In a context of its own: tests before this one may have bound an id in this thread.
    contextvars.Context().run(_one_call_then_a_line)


def _one_call_then_a_line() -> None:
    log, stream = _logger(LogFormat.JSON)
    token = logs.start_call()
    logs.bind_exchange("0190-exchange")
    log.info("call", extra={"method": "/a.B/C", "code": "OK"})
    logs.end_call(token)
    log.info("later")
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["exchange_id"] == "0190-exchange" and first["method"] == "/a.B/C"
    assert (first["level"], first["logger"], first["message"]) == ("info", log.name, "call")
    assert "exchange_id" not in second


def test_an_exception_is_logged_as_its_type_and_frames_never_its_message() -> None:
    for fmt in LogFormat:
        log, stream = _logger(fmt)
        try:
            raise ValueError("INSERT failed [parameters: ('resident-0042', 'mobility')]")
        except ValueError:
            log.exception("round failed")
        text = stream.getvalue()
        assert "resident-0042" not in text and "ValueError" in text
        if fmt is LogFormat.JSON:
            error = json.loads(text)["error"]
            assert error["type"] == "ValueError" and "test_logs.py" in error["stack"][0]
