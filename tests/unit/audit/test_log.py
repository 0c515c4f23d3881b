"""MerkleLog on SQLite files (and on PostgreSQL when reachable): appends, restarts, proofs."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, event, select, text, update
from sqlalchemy.exc import OperationalError

from audit.log import LogLimits, MerkleLog
from audit.merkle import (
    EMPTY_ROOT,
    leaf_hash,
    root_from_leaf_hashes,
    verify_consistency,
    verify_inclusion,
)
from audit.note import NoteVerifier, parse_checkpoint, verify_note
from audit.schema import log_checkpoints, log_nodes, metadata
from domain.errors import InvalidArgument, NotFound, StoreError, TooLarge
from keys.ed25519 import Signer

ORIGIN = "city-a.example/log"


def sqlite_engine(path: Path) -> Engine:
    engine = create_engine(f"sqlite:///{path}")

    @event.listens_for(engine, "connect")
    def _durable(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA busy_timeout=10000")
        cursor.close()

    metadata.create_all(engine)
    return engine


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "log.db"


@pytest.fixture
def signer() -> Signer:
    return Signer.generate()


@pytest.fixture
def log(db_path: Path, signer: Signer) -> Iterator[MerkleLog]:
    engine = sqlite_engine(db_path)
    merkle_log = MerkleLog(engine, ORIGIN, signer)
    yield merkle_log
    merkle_log.close()
    engine.dispose()


def checked_checkpoint(log: MerkleLog) -> tuple[int, bytes]:
    origin, size, root = parse_checkpoint(verify_note(log.checkpoint(), [log.verifier]))
    assert origin == ORIGIN
    return size, root


def test_empty_log_has_a_signed_checkpoint(log: MerkleLog) -> None:
    assert log.size() == 0
    assert log.root() == EMPTY_ROOT
    assert checked_checkpoint(log) == (0, EMPTY_ROOT)
    assert log.entries(0, 0) == []


def test_append_returns_consecutive_indexes_and_proofs_verify(log: MerkleLog) -> None:
    entries = [f"entry {i}".encode() for i in range(37)]
    assert [log.append(e, "test") for e in entries] == list(range(37))
    assert log.size() == 37
    assert log.entries(0, 37) == entries
    assert log.entries(5, 9) == entries[5:9]
    leaves = [leaf_hash(e) for e in entries]
    for size in (1, 2, 3, 8, 17, 36, 37):
        root = log.root(size)
        assert root == root_from_leaf_hashes(leaves[:size])
        for index in range(size):
            verify_inclusion(index, size, leaves[index], log.inclusion_proof(index, size), root)
        for old in range(1, size + 1):
            verify_consistency(old, size, log.consistency_proof(old, size), log.root(old), root)
    assert checked_checkpoint(log) == (37, log.root())


def test_records_carry_kind_and_time(log: MerkleLog) -> None:
    log.append(b"a", "receipt")
    log.append_many([b"b", b"c"], "consent-receipt")
    records = log.records(0, 3)
    assert [(r.index, r.entry, r.kind) for r in records] == [
        (0, b"a", "receipt"),
        (1, b"b", "consent-receipt"),
        (2, b"c", "consent-receipt"),
    ]
    assert all(r.created_at.tzinfo is not None for r in records)


def test_append_many_is_contiguous(log: MerkleLog) -> None:
    log.append(b"first", "test")
    assert log.append_many([b"x", b"y", b"z"], "test") == [1, 2, 3]
    assert log.append_many([], "test") == []
    assert log.entries(1, 4) == [b"x", b"y", b"z"]


def test_restart_continues_where_it_left_off(db_path: Path, signer: Signer) -> None:
    engine = sqlite_engine(db_path)
    first = MerkleLog(engine, ORIGIN, signer)
    first.append_many([f"e{i}".encode() for i in range(10)], "test")
    old_root = first.root()
    old_note = first.checkpoint()
    first.close()
    engine.dispose()

    engine = sqlite_engine(db_path)
    second = MerkleLog(engine, ORIGIN, signer)
    try:
        assert second.size() == 10
        assert second.root(10) == old_root
        assert second.checkpoint() == old_note
        assert second.append(b"e10", "test") == 10
        new_root = second.root()
        verify_consistency(10, 11, second.consistency_proof(10, 11), old_root, new_root)
        verify_inclusion(10, 11, leaf_hash(b"e10"), second.inclusion_proof(10, 11), new_root)
        assert checked_checkpoint(second) == (11, new_root)
        assert second.checkpoint_at(10) == old_note
    finally:
        second.close()
        engine.dispose()


def test_restart_with_another_origin_is_refused(db_path: Path, signer: Signer) -> None:
    engine = sqlite_engine(db_path)
    MerkleLog(engine, ORIGIN, signer).close()
    with pytest.raises(StoreError) as raised:
        MerkleLog(engine, "city-b.example/log", signer)
    assert raised.value.reason == "LOG_ORIGIN_MISMATCH"
    engine.dispose()


def test_tampered_store_is_refused_at_start(db_path: Path, signer: Signer) -> None:
    engine = sqlite_engine(db_path)
    with MerkleLog(engine, ORIGIN, signer) as merkle_log:
        merkle_log.append_many([bytes([i]) for i in range(8)], "test")
    with engine.begin() as conn:
        conn.execute(
            update(log_nodes)
            .where(log_nodes.c.level == 3, log_nodes.c.idx == 0)
            .values(hash=bytes(32))
        )
    with pytest.raises(StoreError) as raised:
        MerkleLog(engine, ORIGIN, signer)
    assert raised.value.reason == "LOG_CORRUPT"
    engine.dispose()


def test_concurrent_appends_are_durable_unique_and_contiguous(
    db_path: Path, signer: Signer
) -> None:
    threads, per_thread = 16, 150
    engine = sqlite_engine(db_path)
    merkle_log = MerkleLog(engine, ORIGIN, signer)
    got: dict[int, bytes] = {}
    got_lock = threading.Lock()
    errors: list[BaseException] = []
    start = threading.Barrier(threads)

    def work(t: int) -> None:
        try:
            start.wait()
            for i in range(per_thread):
                entry = f"thread {t} entry {i}".encode()
                index = merkle_log.append(entry, "test")
                with got_lock:
                    assert index not in got
                    got[index] = entry
        except BaseException as e:  # surfaced to the main thread below
            errors.append(e)

    workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert not errors
    total = threads * per_thread
    assert sorted(got) == list(range(total))
    merkle_log.close()
    engine.dispose()

    # A fresh engine sees every acknowledged entry at the index it was acknowledged with.
    engine = sqlite_engine(db_path)
    reopened = MerkleLog(engine, ORIGIN, signer)
    try:
        stored = reopened.entries(0, total)
        assert stored == [got[i] for i in range(total)]
        size, root = checked_checkpoint(reopened)
        assert size == total
        assert root == reopened.root() == root_from_leaf_hashes([leaf_hash(e) for e in stored])
        # Group commit happened: far fewer checkpoints (one per batch) than entries.
        with engine.connect() as conn:
            notes = conn.execute(select(log_checkpoints.c.tree_size, log_checkpoints.c.note))
            batches = 0
            for tree_size, note in notes:
                batches += 1
                assert parse_checkpoint(verify_note(note, [reopened.verifier]))[1:] == (
                    tree_size,
                    reopened.root(tree_size),
                )
        assert batches < total
    finally:
        reopened.close()
        engine.dispose()


def test_two_logs_on_one_database_never_fork(db_path: Path, signer: Signer) -> None:
    engines = [sqlite_engine(db_path), sqlite_engine(db_path)]
    logs = [MerkleLog(e, ORIGIN, signer) for e in engines]
    indexes: list[int] = []
    lock = threading.Lock()

    def work(which: int) -> None:
        for i in range(40):
            index = logs[which].append(f"{which}-{i}".encode(), "test")
            with lock:
                indexes.append(index)

    workers = [threading.Thread(target=work, args=(t % 2,)) for t in range(6)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert sorted(indexes) == list(range(240))
    final = logs[0].root()
    with engines[0].connect() as conn:
        for tree_size, note in conn.execute(
            select(log_checkpoints.c.tree_size, log_checkpoints.c.note)
        ):
            _, size, root = parse_checkpoint(verify_note(note, [logs[0].verifier]))
            assert size == tree_size
            assert root == logs[0].root(size)
            if 0 < size < 240:
                verify_consistency(size, 240, logs[1].consistency_proof(size, 240), root, final)
    for merkle_log in logs:
        merkle_log.close()
    for engine in engines:
        engine.dispose()


def test_close_commits_what_was_acknowledged_then_refuses(log: MerkleLog) -> None:
    acknowledged: list[int] = []
    refused: list[str] = []
    lock = threading.Lock()
    running = threading.Event()

    def work(t: int) -> None:
        for i in range(10_000):
            try:
                index = log.append(f"{t}/{i}".encode(), "test")
            except StoreError as e:
                with lock:
                    refused.append(e.reason)
                return
            with lock:
                acknowledged.append(index)
            running.set()

    workers = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for w in workers:
        w.start()
    assert running.wait(10)
    log.close()
    log.close()
    for w in workers:
        w.join()
    assert refused == ["LOG_CLOSED"] * 8
    assert sorted(acknowledged) == list(range(log.size()))
    with pytest.raises(StoreError):
        log.append(b"late", "test")


def test_failed_commit_wakes_waiters_and_the_log_recovers(db_path: Path, signer: Signer) -> None:
    engine = sqlite_engine(db_path)
    failing = {"armed": False}

    @event.listens_for(engine, "before_cursor_execute")
    def _fail_once(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if failing["armed"] and statement.startswith("INSERT INTO log_nodes"):
            failing["armed"] = False
            raise OperationalError(statement, None, Exception("disk I/O error"))

    with MerkleLog(engine, ORIGIN, signer) as merkle_log:
        merkle_log.append(b"a", "test")
        failing["armed"] = True
        with pytest.raises(StoreError, match="cannot write"):
            merkle_log.append(b"lost", "test")
        assert merkle_log.size() == 1
        assert checked_checkpoint(merkle_log) == (1, leaf_hash(b"a"))
        assert merkle_log.append_many([b"b", b"c"], "test") == [1, 2]
        assert merkle_log.entries(0, 3) == [b"a", b"b", b"c"]
        size, root = checked_checkpoint(merkle_log)
        assert (size, root) == (
            3,
            root_from_leaf_hashes([leaf_hash(e) for e in (b"a", b"b", b"c")]),
        )
    engine.dispose()


def test_bad_arguments_are_clear_errors(db_path: Path, signer: Signer) -> None:
    engine = sqlite_engine(db_path)
    with MerkleLog(engine, ORIGIN, signer, limits=LogLimits(max_entry_bytes=10)) as merkle_log:
        merkle_log.append_many([b"a", b"b", b"c"], "test")
        with pytest.raises(InvalidArgument, match="kind"):
            merkle_log.append(b"x", "")
        with pytest.raises(InvalidArgument, match="kind"):
            merkle_log.append(b"x", "k" * 65)
        with pytest.raises(InvalidArgument, match="not bytes"):
            merkle_log.append("text", "test")  # type: ignore[arg-type]
        with pytest.raises(TooLarge):
            merkle_log.append(b"x" * 11, "test")
        with pytest.raises(InvalidArgument):
            merkle_log.entries(2, 4)
        with pytest.raises(InvalidArgument):
            merkle_log.entries(2, 1)
        with pytest.raises(InvalidArgument):
            merkle_log.root(4)
        with pytest.raises(InvalidArgument):
            merkle_log.inclusion_proof(3, 3)
        with pytest.raises(InvalidArgument):
            merkle_log.inclusion_proof(0, 4)
        with pytest.raises(InvalidArgument):
            merkle_log.consistency_proof(0, 3)
        with pytest.raises(InvalidArgument):
            merkle_log.consistency_proof(3, 2)
        with pytest.raises(InvalidArgument):
            merkle_log.consistency_proof(1, 4)
        with pytest.raises(NotFound):
            merkle_log.checkpoint_at(2)
        assert merkle_log.consistency_proof(3, 3) == []
        assert merkle_log.size() == 3
    with pytest.raises(InvalidArgument):
        MerkleLog(engine, "two\nlines", signer)
    engine.dispose()


def test_missing_tables_are_a_store_error(tmp_path: Path, signer: Signer) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'empty.db'}")
    with pytest.raises(StoreError):
        MerkleLog(engine, ORIGIN, signer)
    engine.dispose()


def test_checkpoint_verifier_matches_signer(log: MerkleLog, signer: Signer) -> None:
    assert log.verifier == NoteVerifier.for_key(ORIGIN, signer.public)
    log.append(b"x", "test")
    assert checked_checkpoint(log) == (1, leaf_hash(b"x"))


POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


@pytest.fixture
def pg_engine() -> Iterator[Engine]:
    try:
        base = create_engine(POSTGRES_URL)
        with base.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as e:
        pytest.skip(f"PostgreSQL not reachable at 127.0.0.1:5432 ({type(e).__name__})")
    # A private schema keeps this test apart from anything else using the shared database.
    schema = f"audit_test_{uuid.uuid4().hex[:12]}"
    with base.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    engine = base.execution_options(schema_translate_map={None: schema})
    try:
        metadata.create_all(engine)
        yield engine
    finally:
        with base.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        base.dispose()


@pytest.mark.postgres
def test_postgres_log(pg_engine: Engine, signer: Signer) -> None:
    merkle_log = MerkleLog(pg_engine, ORIGIN, signer)
    indexes: list[int] = []
    lock = threading.Lock()

    def work(t: int) -> None:
        for i in range(25):
            index = merkle_log.append(f"{t}/{i}".encode(), "test")
            with lock:
                indexes.append(index)

    workers = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert sorted(indexes) == list(range(200))
    stored = merkle_log.entries(0, 200)
    leaves = [leaf_hash(e) for e in stored]
    root = merkle_log.root()
    assert root == root_from_leaf_hashes(leaves)
    for index in (0, 99, 199):
        verify_inclusion(index, 200, leaves[index], merkle_log.inclusion_proof(index, 200), root)
    verify_consistency(77, 200, merkle_log.consistency_proof(77, 200), merkle_log.root(77), root)
    merkle_log.close()

    # A second writer (a broker replica, say) continues the same tree after a restart.
    replica = MerkleLog(pg_engine, ORIGIN, signer)
    other = MerkleLog(pg_engine, ORIGIN, signer)
    assert replica.append(b"r", "test") == 200
    assert other.append(b"o", "test") == 201
    assert checked_checkpoint(replica) == (202, replica.root())
    replica.close()
    other.close()


# -- side writes -----------------------------------------------------------------------------


def test_a_refusing_side_write_fails_only_its_own_entries(log: MerkleLog) -> None:
    """A side write that refuses (a CitybrokerError) takes only its own entries with it: the
    others in the same batch commit, and the tree holds exactly theirs."""
    writing, release = threading.Event(), threading.Event()

    def hold(_conn: Any, _first: int) -> None:
        writing.set()
        release.wait(10)

    def refuse(_conn: Any, _first: int) -> None:
        raise NotFound("refused by its side write", reason="TEST_REFUSAL")

    outcomes: dict[str, Any] = {}

    def append(name: str, side: Any) -> None:
        try:
            outcomes[name] = log.append_many([name.encode()], "test", side_write=side)
        except NotFound as e:
            outcomes[name] = e

    first = threading.Thread(target=append, args=("held", hold))
    first.start()
    assert writing.wait(10)
    # Both queue while the writer is inside the first batch, so they ride in the next one.
    others = [
        threading.Thread(target=append, args=(n, s))
        for n, s in (("refused", refuse), ("kept", None))
    ]
    for t in others:
        t.start()
    while log._queue.qsize() < 2:  # noqa: SLF001 - the test needs both queued
        threading.Event().wait(0.01)
    release.set()
    for t in (first, *others):
        t.join(10)
    assert outcomes["held"] == [0]
    assert isinstance(outcomes["refused"], NotFound)
    assert outcomes["refused"].reason == "TEST_REFUSAL"
    assert outcomes["kept"] == [1]
    assert log.size() == 2
    assert log.entries(0, 2) == [b"held", b"kept"]
    assert log.root() == root_from_leaf_hashes([leaf_hash(b"held"), leaf_hash(b"kept")])


def test_a_refused_side_write_signs_no_checkpoint(db_path: Path, signer: Signer) -> None:
    """The refusal comes before the tree holding its entries is signed: the log never signs a
    checkpoint that it then drops for another of the same size."""
    signed: list[bytes] = []

    class Counting(Signer):
        def sign(self, message: bytes) -> bytes:
            signed.append(message)
            return super().sign(message)

    counting = Counting(signer._private)  # noqa: SLF001 - the same key, counted
    with MerkleLog(sqlite_engine(db_path), ORIGIN, counting) as log:
        before = len(signed)

        def refuse(_conn: Any, _first: int) -> None:
            raise NotFound("refused", reason="TEST_REFUSAL")

        with pytest.raises(NotFound):
            log.append_many([b"refused"], "test", side_write=refuse)
        assert len(signed) == before
        log.append(b"kept", "test")
        assert len(signed) == before + 1
