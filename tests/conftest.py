"""Shared fixtures: a whole federation in this process (real gRPC servers over mTLS on loopback)."""

from __future__ import annotations

import os
import random
import tempfile
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path

import pytest

from broker.config import BrokerConfig
from cli import sandbox
from domain import agreement as agreement_doc
from edge.broker_server import BrokerServer
from edge.node_server import NodeServer
from edge.operator_client import OperatorClient, consent_record
from edge.partner_client import PartnerClient
from infra import storage
from node import synthetic
from node.config import NodeConfig
from node.consent import ConsentRecord, ConsentRegistry

PURPOSE = "urban-mobility-planning"

# Test files go to tmpfs (RAM) when nobody chose a temporary directory (TMPDIR, TEMP, TMP) and the
# machine has one with room; --basetemp still decides where tmp_path is. The node's and broker's
# SQLite stores commit with synchronous=FULL: on a disk those fsyncs were most of the suite's wall
# time (a test federation started in about 5 s there, 1.6 s on tmpfs). What is tested does not
# change: the same engines and pragmas, on a faster file system.
TMPFS = Path("/dev/shm")
TMPFS_MIN_FREE = 2 * 1024**3


def tmpfs_chosen() -> bool:
    """Whether temporary files go to TMPFS: no TMPDIR, TEMP or TMP, and TMPFS writable with room."""
    if any(os.environ.get(v) for v in ("TMPDIR", "TEMP", "TMP")):
        return False
    try:
        fs = os.statvfs(TMPFS)
    except OSError:
        return False
    return fs.f_bavail * fs.f_frsize >= TMPFS_MIN_FREE and os.access(TMPFS, os.W_OK | os.X_OK)


def pytest_configure() -> None:
    """Temporary files (tmp_path, tempfile) on tmpfs: see TMPFS."""
    if tmpfs_chosen():
        tempfile.tempdir = str(TMPFS)


def give_mobility_consents(
    registry: ConsentRegistry,
    residents: list[synthetic.Resident],
    partner: str,
    now: datetime,
    purpose: str = PURPOSE,
) -> None:
    """Each resident consents, from a day before `now`, to `purpose` for `partner` over the
    mobility data (record id: RESIDENT-c)."""
    for p in residents:
        registry.give(
            ConsentRecord(
                f"{p.resident_id}-c",
                p.resident_id,
                (purpose,),
                (partner,),
                ("mobility",),
                now - timedelta(days=1),
                None,
            ),
            actor="test",
        )


PROJECT_ROOT = Path(__file__).resolve().parent.parent
VECTORS = PROJECT_ROOT.parent / "shared" / "vectors"


@dataclass
class RunningFederation:
    fed: sandbox.LocalFederation
    nodes: dict[str, NodeServer]
    broker: BrokerServer
    operators: dict[str, OperatorClient]
    consenting: dict[str, list[synthetic.Resident]]

    def partner(self) -> PartnerClient:
        f = self.fed
        return PartnerClient.connect(
            f.broker_address,
            f.broker_id,
            f.partner_id,
            f.partner_signer,
            f.ca_cert,
            f.trust_bundle,
            f.authority_key,
        )


def start_federation(
    root: Path,
    residents_per_city: int = 200,
    consent_share: float = 0.7,
    data_urls: dict[str, str] | None = None,
) -> RunningFederation:
    """`data_urls` puts a city's datasets in a database of their own (not beside its consents);
    other cities keep them in their SQLite node database, so that tests can read them there."""
    fed = sandbox.create(root)
    consenting: dict[str, list[synthetic.Resident]] = {}
    people: dict[str, list[synthetic.Resident]] = {}
    for i, (city, layout) in enumerate(fed.cities.items()):
        node_engine = storage.create_engine(f"sqlite:///{layout.database}")
        storage.upgrade(node_engine)
        node_engine.dispose()
        data_url = (data_urls or {}).get(city) or f"sqlite:///{layout.database}"
        config = tomllib.loads(layout.config.read_text())
        sandbox.write_toml(layout.config, {**config, "data": data_url})
        engine = storage.create_engine(data_url)
        people[city] = synthetic.residents(city, layout.plan.districts, residents_per_city, i)
        synthetic.load_trips(engine, synthetic.trip_rows(people[city], 4, date(2026, 8, 1), 92, i))
        synthetic.load_residents(engine, people[city])
        synthetic.load_traffic(
            engine, synthetic.traffic_rows(layout.plan.districts, 1, date(2026, 8, 1), 31, i)
        )
        engine.dispose()
    nodes = {
        c: NodeServer(NodeConfig.load(layout.config)).start() for c, layout in fed.cities.items()
    }
    broker = BrokerServer(BrokerConfig.load(fed.broker_config)).start()
    operators = {}
    for city, layout in fed.cities.items():
        op = OperatorClient(layout.address, fed.ca_cert, layout.operator_cert, layout.operator_key)
        operators[city] = op
        op.activate_agreement(
            agreement_doc.sign(fed.agreement(city), layout.signer, fed.partner_signer)
        )
        rng = random.Random(city)
        consenting[city] = [r for r in people[city] if rng.random() < consent_share]
        op.give_consents(
            [
                consent_record(
                    f"{r.resident_id}-c1", r.resident_id, PURPOSE, fed.partner_id, "mobility"
                )
                for r in consenting[city]
            ]
        )
    return RunningFederation(fed, nodes, broker, operators, consenting)


def stop_federation(rf: RunningFederation) -> None:
    for op in rf.operators.values():
        op.close()
    rf.broker.stop(0)
    for n in rf.nodes.values():
        n.stop(0)


@pytest.fixture(scope="session")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningFederation]:
    """One federation for the whole session: tests must not change what others rely on (use
    `fresh_federation` for tests that withdraw consent or add agreements)."""
    rf = start_federation(tmp_path_factory.mktemp("federation"))
    yield rf
    stop_federation(rf)


@pytest.fixture
def fresh_federation(tmp_path: Path) -> Iterator[RunningFederation]:
    rf = start_federation(tmp_path / "federation", residents_per_city=120)
    yield rf
    stop_federation(rf)


POSTGRES_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


@contextmanager
def postgres_database() -> Iterator[str]:
    """A fresh, empty database on the machine's PostgreSQL server (its URL), dropped afterwards;
    the test skips with a message when the server is unreachable."""
    import uuid

    import sqlalchemy as sa

    admin = sa.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"citybroker_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    except sa.exc.OperationalError as e:
        admin.dispose()
        pytest.skip(f"PostgreSQL at 127.0.0.1:5432 is not reachable, test skipped: {e.orig}")
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test (`postgres_database`)."""
    with postgres_database() as url:
        yield url


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def node_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A new, empty node database for a test that runs on both engines: a SQLite file, or a
    database on the machine's PostgreSQL server (`postgres_url`)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'node.db'}"
    return str(request.getfixturevalue("postgres_url"))
