"""The broker without a network: a sandbox federation's keys and trust bundle, a broker log in a
SQLite file, and a partner's verified token. Cities are fakes behind broker.gateway.CityGateway."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from audit.log import MerkleLog
from cli import sandbox
from infra import storage
from keys import tokens
from keys.tokens import VerifiedToken
from keys.trust import TrustStore


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> sandbox.LocalFederation:
    """Keys, certificates and a signed trust bundle: cities aurora, borealis, cascadia."""
    return sandbox.create(tmp_path_factory.mktemp("federation"))


@pytest.fixture
def trust(fed: sandbox.LocalFederation) -> TrustStore:
    return TrustStore(fed.authority.public, [fed.bundle])


@pytest.fixture
def broker_db(tmp_path: Path) -> Iterator[Engine]:
    engine = storage.create_engine(f"sqlite:///{tmp_path / 'broker.db'}")
    storage.upgrade(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def broker_log(fed: sandbox.LocalFederation, broker_db: Engine) -> Iterator[MerkleLog]:
    with MerkleLog(broker_db, f"citybroker/broker/{fed.broker_id}", fed.broker_signer) as log:
        yield log


@pytest.fixture
def caller(fed: sandbox.LocalFederation) -> VerifiedToken:
    """The partner, as the broker's token guard would have let it in."""
    # Whether the grant covers a call is the servicer's and each node's check, not the exchange's.
    grant = tokens.Grant(tokens.Call.DESCRIBE)
    token = tokens.issue(fed.partner_signer, fed.partner_id, fed.broker_id, grant)
    return tokens.verify(token, fed.bundle, audience=fed.broker_id)
