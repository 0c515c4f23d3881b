"""Background WAL checkpoints while an import runs on SQLite (see `Checkpoints`)."""

from __future__ import annotations

import sqlite3
import threading

import sqlalchemy as sa

from infra import storage

CHECKPOINT_PAGES = 20_000  # WAL pages (80 MB of 4 KiB) after which an import lets it start over


class Checkpoints:
    """On SQLite in WAL mode, while an import runs: the WAL is copied back into the database by
    a thread of its own, while the writer goes on with the next batch. By default the commit
    that crosses the autocheckpoint threshold copies it, and the writer waits for that copy and
    its disk syncs: about a seventh of an import's time. Here every connection the engine hands
    out (the writer's, the log's, the lookups') has autocheckpoint off; after each batch this
    thread copies what is committed. The WAL starts over from its beginning only when a write
    begins with all of it copied, so once it holds `CHECKPOINT_PAGES` pages the writer waits
    for one more pass (by then little is left to copy) before its next batch. Connections go
    back to the pool with SQLite's default (infra.storage.ManualCheckpoints; an engine made
    otherwise keeps SQLite's own checkpoints)."""

    def __init__(self, engine: sa.Engine) -> None:
        self._engine = engine
        self._switch = storage.manual_checkpoints(engine)
        self._on = self._switch is not None and journal_mode(engine) == "wal"
        self._lock = threading.Condition()
        self._asked = self._done = 0  # passes asked for, and finished
        self._pages = 0  # in the WAL at the last pass
        self._closing = False
        self._thread: threading.Thread | None = None
        if self._switch is not None and self._on:
            self._switch.hold()
            self._thread = threading.Thread(
                target=self._run, name="consent-import-checkpoints", daemon=True
            )
            self._thread.start()

    def committed(self) -> None:
        """A batch is committed: copy it (in the background)."""
        if self._on:
            with self._lock:
                self._asked += 1
                self._lock.notify_all()

    def before_write(self) -> None:
        """Before a batch is written: once the WAL is long, wait until it is all copied, so
        that the write starts it over."""
        if not self._on or self._pages < CHECKPOINT_PAGES:
            return
        with self._lock:
            self._asked += 1
            wanted = self._asked
            self._lock.notify_all()
            while self._done < wanted and self._thread is not None:
                self._lock.wait()

    def _run(self) -> None:
        try:
            raw = self._engine.raw_connection()
        except sa.exc.SQLAlchemyError:
            return self._stop_waiting()
        try:
            while True:
                with self._lock:
                    while self._done == self._asked and not self._closing:
                        self._lock.wait()
                    if self._closing:
                        return
                    target = self._asked
                try:
                    row = raw.cursor().execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                    pages = int(row[1]) if row is not None else 0
                except sqlite3.Error:
                    pages = 0  # the database is locked: the next pass tries again
                with self._lock:
                    self._pages, self._done = pages, target
                    self._lock.notify_all()
        finally:
            raw.close()
            self._stop_waiting()

    def _stop_waiting(self) -> None:
        with self._lock:
            self._thread, self._done = None, self._asked
            self._lock.notify_all()

    def close(self) -> None:
        """Stop the thread; connections checkpoint as SQLite does by default again."""
        if not self._on:
            return
        thread = self._thread
        with self._lock:
            self._closing = True
            self._lock.notify_all()
        if thread is not None:
            thread.join()
        if self._switch is not None:
            self._switch.release()
        self._on = False


def journal_mode(engine: sa.Engine) -> str:
    """The database's journal mode, lower case ("" if it cannot be read)."""
    try:
        with engine.connect() as conn:
            return str(conn.exec_driver_sql("PRAGMA journal_mode").scalar()).lower()
    except sa.exc.SQLAlchemyError:
        return ""
