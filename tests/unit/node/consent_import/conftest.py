"""Fixtures of the consent import tests: a migrated node database and its log."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from audit.log import MerkleLog
from infra import storage
from tests.unit.node.consent_import.support import CITY_KEY, ORIGIN


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[sa.Engine]:
    engine = storage.create_engine(f"sqlite:///{tmp_path / 'node.db'}")
    storage.upgrade(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def log(engine: sa.Engine) -> Iterator[MerkleLog]:
    with MerkleLog(engine, ORIGIN, CITY_KEY) as log:
        yield log
