"""The worker pool: processes that parse, validate and prepare chunks of rows (`Preparer`) while
the importing process resolves and writes. Spawned, never forked, and without the city's key."""

from __future__ import annotations

import gc
import multiprocessing
import os
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from datetime import datetime
from typing import Any

from domain.errors import StoreError
from node.consent_import.chunks import Chunk
from node.consent_import.model import Prepared
from node.consent_import.parse import Preparer, Setup

_WORKER: Preparer | None = None


def default_workers() -> int:
    """Worker processes when `ImportLimits.workers` is None: one per CPU but one, at least one.
    The importing process resolves and writes (SQLite's work is most of it) and needs a CPU of
    its own: on 2 CPUs, one worker measured up to 30 % faster than two, and never slower."""
    return max(1, (os.cpu_count() or 1) - 1)


def start_pool(workers: int, setup: Setup) -> Executor:
    """A pool of `workers` processes, each set up once with `setup`."""
    # spawn: a fresh interpreter, never a fork of this process and its threads.
    return ProcessPoolExecutor(
        workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_init_worker,
        initargs=(setup,),
    )


def _init_worker(setup: Setup) -> None:
    global _WORKER
    _WORKER = Preparer(setup)
    # What a worker makes holds no reference cycles; the collector's passes over millions of
    # short-lived tuples cost about a sixth of its time.
    gc.freeze()
    gc.disable()


def prepare_chunk(chunk: Chunk, at: datetime) -> list[Prepared]:
    """In a worker: the chunk's rows, prepared."""
    worker = _WORKER
    assert worker is not None, "worker not initialised"
    return worker.prepare_chunk(chunk, at)


def done(value: Any) -> Future[Any]:
    """A future already holding `value` (work done in this process)."""
    future: Future[Any] = Future()
    future.set_result(value)
    return future


def result(future: Future[Any]) -> Any:
    """A worker's result; StoreError if its process died."""
    try:
        return future.result()
    except BrokenProcessPool:
        raise StoreError(
            "an import worker process died (out of memory?); nothing of the current batch "
            "was written",
            reason="IMPORT_WORKER_FAILED",
        ) from None
