"""`node serve` and `broker serve`: structured logs, and a graceful stop on SIGTERM or SIGINT.

Stopping: health turns NOT_SERVING and new calls are refused at once, calls in flight get the
config's `shutdown_grace_s` to finish, then the log commits what was submitted and the process exits
with status 0 (the servers' `stop` does the work; this module waits for the signal).

A second SIGTERM or SIGINT during the grace exits at once, with status 128 + the signal's number
(143 for SIGTERM, 130 for SIGINT): the calls still in flight are cut and their callers see
UNAVAILABLE. Nothing committed is lost or damaged by that: SQLite and PostgreSQL commits are
atomic, a log append answers only once its entry and checkpoint are committed together, and an
open transaction that never committed is rolled back by the database.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Annotated

import typer

from infra import logs
from infra.logs import LogFormat
from infra.native_heap import NativeHeap

log = logging.getLogger("citybroker.serve")

LogFormatOption = Annotated[
    LogFormat,
    typer.Option(
        "--log-format",
        help="json: one JSON object a line (for log collectors); text: for a terminal.",
        case_sensitive=False,
    ),
]


def prepare(fmt: LogFormat) -> NativeHeap:
    """Before the server opens anything: log to stderr in `fmt`, and limit the C heap's arenas
    (infra.native_heap; its trimming starts with the server)."""
    logs.configure(fmt)
    return NativeHeap()


def until_signalled(
    start: Callable[[], object],
    stop: Callable[[float], object],
    grace_s: float,
    what: str,
    heap: NativeHeap,
) -> None:
    """Start, wait for SIGTERM or SIGINT, then `stop(grace_s)`; a second signal exits at once."""
    done = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        if done.is_set():
            log.warning("second signal: exiting now")
            # No cleanup (that is what the operator cut short): committed data is safe as it is,
            # since commits are atomic (see the module's doc).
            os._exit(128 + signum)
        done.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    start()
    heap.start()
    log.info(f"{what}; SIGTERM or Ctrl-C stops it")
    done.wait()
    log.info("stopping: no new calls; calls in flight get %gs", grace_s)
    stop(grace_s)
    heap.stop()
    log.info("stopped")
