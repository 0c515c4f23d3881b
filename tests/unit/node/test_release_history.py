"""The release history (node.release_history): on SQLite and PostgreSQL (skipped, saying so, where
PostgreSQL is unreachable), across restarts, expiring with the agreement, and serialising two
answers to one partner that race."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import timedelta

import pytest
import sqlalchemy as sa
from pyroaring import BitMap

from audit.log import MerkleLog
from domain.errors import Conflict
from infra import storage
from keys import timefmt
from keys.ed25519 import Signer
from node.differencing import CellSet
from node.release_history import HistoryKey, ReleaseHistory
from node.schema import release_cells, release_histories

K = 10
KEY = HistoryKey("northwind", "aurora--northwind", "mobility")
SIGNER = Signer.generate()


def cell(members: range) -> CellSet:
    return CellSet(BitMap(members), len(members), 1234)


def later(days: int = 30) -> timefmt.datetime:
    return timefmt.now() + timedelta(days=days)


@pytest.fixture
def engine(node_database_url: str) -> Iterator[sa.Engine]:
    engine = storage.create_engine(node_database_url)
    storage.upgrade(engine)
    yield engine
    engine.dispose()


def test_cells_are_found_by_size_and_survive_a_restart(
    engine: sa.Engine, node_database_url: str
) -> None:
    ReleaseHistory(engine).record(KEY, later(), "q1", [cell(range(100)), cell(range(5000))])
    restarted = storage.create_engine(node_database_url)
    try:
        history = ReleaseHistory(restarted)
        near = history.earlier(KEY, [103], K)
        assert [c.members for c in near.earlier.near(103, K)] == [BitMap(range(100))]
        assert len(history.earlier(KEY, [120], K).earlier) == 0  # pre-filtered in SQL
        assert len(history.earlier(KEY, [95, 4995], K).earlier) == 2
        other = HistoryKey(KEY.partner, "aurora--northwind-2", KEY.dataset)
        assert len(history.earlier(other, [100], K).earlier) == 0
    finally:
        restarted.dispose()


def test_the_history_expires_with_the_agreement(engine: sa.Engine) -> None:
    history = ReleaseHistory(engine)
    history.record(KEY, timefmt.now() + timedelta(minutes=5), "q1", [cell(range(100))])
    assert len(history.earlier(KEY, [100], K).earlier) == 1
    # A later version of the agreement, valid longer, keeps the whole history alive.
    history.record(KEY, later(), "q2", [cell(range(300))])
    assert history.prune(timefmt.now() + timedelta(days=1)) == 0
    assert len(history.earlier(KEY, [100, 300], K).earlier) == 2
    assert history.prune(later(31)) == 1
    assert len(history.earlier(KEY, [100, 300], K).earlier) == 0
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(release_cells)).scalar() == 0
        assert conn.execute(sa.select(sa.func.count()).select_from(release_histories)).scalar() == 0


def test_a_write_prunes_expired_histories(engine: sa.Engine) -> None:
    gone = HistoryKey("other", "x", "mobility")
    ReleaseHistory(engine).record(
        gone, timefmt.now() - timedelta(seconds=1), "q0", [cell(range(50))]
    )
    ReleaseHistory(engine).record(KEY, later(), "q1", [cell(range(100))])
    with engine.connect() as conn:
        partners = conn.execute(sa.select(release_histories.c.partner)).scalars().all()
    assert partners == [KEY.partner]


def test_a_release_recorded_meanwhile_is_checked_again(engine: sa.Engine) -> None:
    """Two answers read the same history; the second to write is refused if the first now
    exposes it, and committed if not."""
    history = ReleaseHistory(engine)
    history.record(KEY, later(), "q0", [cell(range(1000, 1500))])
    first = history.earlier(KEY, [100], K)
    second = history.earlier(KEY, [97], K)
    third = history.earlier(KEY, [300], K)
    with engine.begin() as conn:
        history.side_write(KEY, later(), "q1", [cell(range(100))], first, K)(conn, 0)
    with pytest.raises(Conflict) as refused, engine.begin() as conn:
        history.side_write(KEY, later(), "q2", [cell(range(97))], second, K)(conn, 0)
    assert refused.value.reason == "RELEASE_HISTORY_CHANGED"
    with engine.begin() as conn:
        history.side_write(KEY, later(), "q3", [cell(range(300))], third, K)(conn, 0)
    with engine.connect() as conn:
        ids = conn.execute(sa.select(release_cells.c.request_id)).scalars().all()
    assert sorted(ids) == ["q0", "q1", "q3"]


def test_racing_answers_through_the_log_cannot_both_pass(engine: sa.Engine) -> None:
    """Both checked against an empty history, appended at once: the log's transaction
    serialises them, and only one is recorded."""
    history = ReleaseHistory(engine)
    snapshots = [history.earlier(KEY, [100], K), history.earlier(KEY, [98], K)]
    outcomes: list[str] = []
    with MerkleLog(engine, "citybroker/node/aurora", SIGNER) as log:
        barrier = threading.Barrier(2)

        def answer(i: int) -> None:
            barrier.wait()
            write = history.side_write(
                KEY, later(), f"q{i}", [cell(range(100 - 2 * i))], snapshots[i], K
            )
            try:
                log.append_many([f"entry {i}".encode()], kind="exchange", side_write=write)
                outcomes.append("released")
            except Conflict as e:
                outcomes.append(e.reason)

        threads = [threading.Thread(target=answer, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert sorted(outcomes) == ["RELEASE_HISTORY_CHANGED", "released"]
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(release_cells)).scalar() == 1
