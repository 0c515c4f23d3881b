"""Consumed token ids in a party's database: a second use is TOKEN_REPLAYED, after a restart, from
another engine on the same database, and when two replicas race; expired rows are pruned."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import sqlalchemy as sa

from domain.errors import AuthenticationError, StoreError
from infra import storage
from infra.consumed_tokens import ConsumedTokens, consumed_tokens
from keys.tokens import Call, Grant, VerifiedToken

GRANT = Grant(Call.DESCRIBE)


def _token(jti: str = "jti-1", issuer: str = "northwind", expires_in_s: int = 60) -> VerifiedToken:
    now = int(time.time())
    return VerifiedToken(issuer, issuer, "broker-1", jti, now, now + expires_in_s, "raw", GRANT)


def _migrated(url: str) -> sa.Engine:
    engine = storage.create_engine(url)
    storage.upgrade(engine)
    return engine


@pytest.fixture
def url(node_database_url: str) -> Iterator[str]:
    engine = _migrated(node_database_url)
    engine.dispose()
    yield node_database_url


def _replayed(store: ConsumedTokens, token: VerifiedToken, use: str) -> bool:
    try:
        store.consume(token, use)
    except AuthenticationError as e:
        assert e.reason == "TOKEN_REPLAYED"
        return True
    return False


def test_a_second_use_is_a_replay_and_other_uses_are_not(url: str) -> None:
    engine = storage.create_engine(url)
    store = ConsumedTokens(engine)
    token = _token()
    store.consume(token, "query")
    assert _replayed(store, token, "query")
    # One token's plan and query are two uses; another partner's jti is its own.
    assert not _replayed(store, token, "plan")
    assert not _replayed(store, replace(token, issuer="other-partner"), "query")
    assert not _replayed(store, _token("jti-2"), "query")
    engine.dispose()


def test_a_replay_after_a_restart_or_from_another_engine(url: str) -> None:
    first = storage.create_engine(url)
    ConsumedTokens(first).consume(_token(), "query")
    first.dispose()
    # A restarted party, or a replica: a new engine on the same database.
    second, third = storage.create_engine(url), storage.create_engine(url)
    assert _replayed(ConsumedTokens(second), _token(), "query")
    assert _replayed(ConsumedTokens(third), _token(), "query")
    second.dispose()
    third.dispose()


@pytest.mark.postgres
def test_two_replicas_racing_on_postgresql_let_one_use_through(postgres_url: str) -> None:
    engines = [_migrated(postgres_url)] + [storage.create_engine(postgres_url) for _ in range(3)]
    stores = [ConsumedTokens(e) for e in engines]
    for round_ in range(20):
        assert sorted(_race(stores, _token(f"race-{round_}"))) == [False, True, True, True]
    for e in engines:
        e.dispose()


def _race(stores: list[ConsumedTokens], token: VerifiedToken) -> list[bool]:
    """Each store consumes `token` at once, from its own thread; whether each saw a replay."""
    barrier = threading.Barrier(len(stores))
    outcomes: list[bool] = []
    lock = threading.Lock()

    def spend(store: ConsumedTokens) -> None:
        barrier.wait()
        replayed = _replayed(store, token, "query")
        with lock:
            outcomes.append(replayed)

    threads = [threading.Thread(target=spend, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return outcomes


def test_expired_rows_are_pruned(url: str) -> None:
    engine = storage.create_engine(url)
    store = ConsumedTokens(engine, prune_every_s=0)
    store.consume(_token("old", expires_in_s=-3600), "query")
    store.consume(_token("new"), "query")
    assert store.count() == 1  # the second consume pruned the expired first
    with engine.connect() as conn:
        kept = conn.execute(sa.select(consumed_tokens.c.jti)).scalars().all()
    assert kept == ["new"]
    engine.dispose()


def test_a_store_failure_is_not_a_replay(tmp_path: Path) -> None:
    # An unmigrated database: the insert fails for another reason than a second use.
    engine = storage.create_engine(f"sqlite:///{tmp_path / 'empty.db'}")
    with pytest.raises(StoreError) as e:
        ConsumedTokens(engine).consume(_token(), "query")
    assert e.value.reason == "STORE_UNAVAILABLE"
    engine.dispose()
