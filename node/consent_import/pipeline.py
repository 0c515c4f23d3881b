"""One import run: the batch pipeline.

This thread reads, looks up, hands rows to the workers and resolves; a writer thread writes the
batch before (one transaction) and appends its statements to the log, meanwhile. A batch is
resolved on top of the one being written (`Batch.view`); if that one fails, or had to be resolved
again, the next is resolved again from the store before it is handed over. At most one batch is
being prepared, one resolved and one written, so memory stays bounded whatever the file's size.
"""

from __future__ import annotations

import gc
import itertools
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from typing import TYPE_CHECKING

from keys import timefmt
from node.consent_import import workers
from node.consent_import.checkpoints import Checkpoints
from node.consent_import.chunks import Chunk
from node.consent_import.model import (
    BATCH_FAILED,
    ErrorSink,
    ImportReport,
    Prepared,
    Progress,
    RowError,
)
from node.consent_import.parse import Preparer
from node.consent_import.reader import RowReader
from node.consent_import.records import RecordStore
from node.consent_import.resolve import Batch, Resolver
from node.consent_import.write import BatchWriter

if TYPE_CHECKING:
    from node.consent_import.importer import ConsentImporter

_COLLECT_EVERY = 100  # batches between collector passes (see Run.run)
_AHEAD = 1  # batches handed to the workers before the one being resolved is written
Pending = deque[tuple[Batch, list[Future[list[Prepared]]]]]


class Run:
    """One run of an importer over one opened file."""

    def __init__(
        self,
        importer: ConsentImporter,
        reader: RowReader,
        default_actor: str,
        on_error: ErrorSink | None,
        progress: Progress | None,
    ) -> None:
        self.imp, self.limits = importer, importer.limits
        self.reader = reader
        self.setup = importer.setup(default_actor, reader.header)
        store = RecordStore(importer.engine, importer.city, importer.codec.driver_level)
        self.resolver = Resolver(store, Preparer(self.setup), importer.codec.dt)
        self.on_error, self.progress = on_error, progress
        self.report = ImportReport()
        self.pool: Executor | None = None
        self.writer = ThreadPoolExecutor(1, thread_name_prefix="consent-import-writer")

    def run(self) -> ImportReport:
        """Import every batch of the file; the counts."""
        # The collector's passes over the batches in flight (hundreds of thousands of tuples)
        # cost this process about a fifth of its time, and even one pass every 10 batches
        # measured 12 % slower than every 100: the batches make no reference cycles, so it
        # runs only now and then, as a safety net.
        collecting = gc.isenabled()
        gc.disable()
        gc.freeze()
        checkpoints = Checkpoints(self.imp.engine)
        writer = BatchWriter(self.imp, checkpoints, self.resolver.again)
        try:
            self._pipeline(writer)
        finally:
            if self.pool is not None:
                self.pool.shutdown(cancel_futures=True)
            self.writer.shutdown(wait=True, cancel_futures=True)
            writer.close()
            checkpoints.close()
            gc.unfreeze()
            if collecting:
                gc.enable()
        return self.report

    def _pipeline(self, writer: BatchWriter) -> None:
        resolver = self.resolver
        writing: tuple[Batch, Future[None]] | None = None
        # Batches handed to the workers, in file order: they prepare the next ones while this
        # thread resolves one and the writer writes the one before.
        ahead: Pending = deque()
        batches = self._batches()
        for _ in range(_AHEAD):
            self._hand_over(batches, ahead)
        while ahead:
            batch, pending = ahead.popleft()
            self._collect(batch, pending)
            self._hand_over(batches, ahead)
            stored = resolver.store.lookup(batch.record_ids())
            overlay = writing[0].view if writing is not None else {}
            resolver.resolve(batch, stored, overlay)
            if writing is not None:
                self._settle(*writing)
                if writing[0].view is not overlay:
                    # It failed (nothing of it stored) or was resolved again: start over from
                    # what is stored now.
                    resolver.again(batch)
            writing = (batch, self.writer.submit(writer.write_and_log, batch))
        if writing is not None:
            self._settle(*writing)

    def _batches(self) -> Iterator[tuple[Batch, list[Chunk]]]:
        """The input as batches of about `batch_size` rows, each in one chunk per part (two
        per worker, so that the workers stay evenly busy)."""
        parts = 1 if self.limits.workers == 0 else self._worker_count() * 2
        chunks = self.reader.chunks(max(1, -(-self.limits.batch_size // parts)))
        for index in itertools.count():
            group = list(itertools.islice(chunks, parts))
            if not group:
                return
            yield Batch(index, timefmt.now(), group[-1].bytes_read), group

    def _hand_over(self, batches: Iterator[tuple[Batch, list[Chunk]]], ahead: Pending) -> None:
        """Read the next batch and start preparing it."""
        item = next(batches, None)
        if item is None:
            return
        batch, chunks = item
        if self.pool is None and self._want_pool(batch.index):
            self.pool = workers.start_pool(self._worker_count(), self.setup)
        ahead.append((batch, self._dispatch(batch, chunks)))

    def _want_pool(self, index: int) -> bool:
        count = self.limits.workers
        if count == 0:
            return False
        return count is not None or index >= 1

    def _worker_count(self) -> int:
        return self.limits.workers or workers.default_workers()

    def _dispatch(self, batch: Batch, chunks: list[Chunk]) -> list[Future[list[Prepared]]]:
        if self.pool is None:
            local = self.resolver.preparer
            return [workers.done(local.prepare_chunk(c, batch.at)) for c in chunks]
        return [self.pool.submit(workers.prepare_chunk, c, batch.at) for c in chunks]

    def _collect(self, batch: Batch, pending: list[Future[list[Prepared]]]) -> None:
        out: list[Prepared] = []
        for f in pending:
            out.extend(workers.result(f))
        batch.prepared, batch.rows = out, len(out)
        if out:
            batch.first_line, batch.last_line = out[0].line, out[-1].line

    def _settle(self, batch: Batch, writing: Future[None]) -> None:
        """Wait for the writer to finish a batch; count and report its rows."""
        writing.result()  # a log failure is fatal: raised here
        report = self.report
        report.batches += 1
        report.rows += batch.rows
        report.duplicates += batch.duplicates
        report.bytes_read = batch.bytes_read
        errors = batch.errors
        if batch.failure:
            report.failed_batches += 1
            message = (
                f"batch {batch.index + 1} (lines {batch.first_line}-{batch.last_line}) was "
                f"rolled back, nothing of it applied: {batch.failure}"
            )
            failed = [RowError(e.line, e.record_id, BATCH_FAILED, message) for e in batch.events]
            errors = sorted([*errors, *failed], key=lambda e: e.row)
        else:
            report.applied += len(batch.events)
        for error in errors:
            report.errors[error.reason] += 1
            if self.on_error is not None:
                self.on_error(error)
        # Only the view stays, for the next batch; the rest can go.
        batch.prepared, batch.events, batch.errors, batch.creates, batch.changes = (
            [],
            [],
            [],
            {},
            {},
        )
        if batch.index % _COLLECT_EVERY == _COLLECT_EVERY - 1:
            gc.collect()
        if self.progress is not None:
            self.progress(report)
