"""node.secrets.NodeSecret: one random secret per node database, the same for every process on it
and independent of the signing key, so pseudonyms and observational cell keys survive a rotation."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import sqlalchemy as sa

from infra import storage
from node.secrets import NodeSecret


def _engine(url: str) -> sa.Engine:
    engine = storage.create_engine(url)
    storage.upgrade(engine)
    return engine


def test_every_process_on_one_database_derives_the_same_secrets(node_database_url: str) -> None:
    engine = _engine(node_database_url)
    with ThreadPoolExecutor(4) as pool:  # first use races: one draw wins, all agree on it
        derived = set(pool.map(lambda _: NodeSecret(engine).derive(b"pseudonyms"), range(8)))
    assert len(derived) == 1
    restarted = NodeSecret(_engine(node_database_url))
    assert restarted.derive(b"pseudonyms") in derived
    assert len(restarted.derive(b"pseudonyms")) == 32
    assert restarted.derive(b"cell keys") not in derived  # one secret per purpose
    engine.dispose()


def test_two_node_databases_have_unrelated_secrets(tmp_path: Path) -> None:
    one = NodeSecret(_engine(f"sqlite:///{tmp_path / 'a.db'}")).derive(b"pseudonyms")
    other = NodeSecret(_engine(f"sqlite:///{tmp_path / 'b.db'}")).derive(b"pseudonyms")
    assert one != other
