"""A city's datasets on a PostgreSQL warehouse the node reaches through a role with SELECT on the
data and nothing else: the node answers through it (the consent mirror is a temporary table private
to its session, infra.warehouse), writes through its data engine fail, and where even temporary
tables are denied the node refuses to start with a line naming the grant it needs."""

from __future__ import annotations

import tomllib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa

from cli import sandbox
from domain.errors import StoreError
from domain.query import Dimension, Measure, MeasureKind, Query
from edge.node_server import NodeServer
from edge.partner_client import Answer
from node.config import NodeConfig
from tests.conftest import PURPOSE, RunningFederation, start_federation, stop_federation
from tests.integration.pg_databases import admin_engine, postgres_database

pytestmark = pytest.mark.postgres

BY_DISTRICT = Query(
    "mobility",
    PURPOSE,
    (Measure(MeasureKind.COUNT_RECORDS), Measure(MeasureKind.COUNT_RESIDENTS)),
    group_by=(Dimension("district"),),
)
BY_MONTH = Query(
    "mobility",
    PURPOSE,
    (Measure(MeasureKind.COUNT_RESIDENTS), Measure(MeasureKind.AVG, "distance_km")),
    group_by=(Dimension("trip_date", "month"),),
)
TRAFFIC_BY_WEEK = Query(
    "traffic",
    PURPOSE,
    (Measure(MeasureKind.SUM, "vehicles"),),
    group_by=(Dimension("district"), Dimension("observed_on", "week")),
)
QUERIES = (BY_DISTRICT, BY_MONTH, TRAFFIC_BY_WEEK)


@dataclass
class Warehouse:
    rf: RunningFederation
    database: str
    reader: str
    reader_url: str


def _aurora(answer: Answer) -> dict[tuple[str, ...], dict[str, float]]:
    return {tuple(c.key.values()): c.values for c in answer.cells if "aurora" in c.contributing}


def _restart_aurora(rf: RunningFederation, data_url: str) -> NodeServer:
    """Aurora's node again, now reading its datasets from `data_url`."""
    rf.nodes["aurora"].stop(0)
    config = rf.fed.cities["aurora"].config
    sandbox.write_toml(config, {**tomllib.loads(config.read_text()), "data": data_url})
    rf.nodes["aurora"] = NodeServer(NodeConfig.load(config)).start()
    return rf.nodes["aurora"]


@pytest.fixture
def warehouse(tmp_path: Path) -> Iterator[Warehouse]:
    """Aurora's datasets loaded by the superuser into a database of their own, and a role that
    may only connect and SELECT there."""
    with postgres_database() as url:
        rf = start_federation(tmp_path / "fed", residents_per_city=80, data_urls={"aurora": url})
        database = sa.engine.make_url(url).database
        reader = f"cb_reader_{uuid.uuid4().hex[:8]}"
        admin = admin_engine()
        data_admin = sa.create_engine(
            url.replace("postgresql://", "postgresql+psycopg://"), isolation_level="AUTOCOMMIT"
        )
        with admin.connect() as conn:
            conn.execute(sa.text(f"CREATE ROLE {reader} LOGIN"))
            conn.execute(sa.text(f'GRANT CONNECT ON DATABASE "{database}" TO {reader}'))
        with data_admin.connect() as conn:
            conn.execute(sa.text(f"GRANT USAGE ON SCHEMA public TO {reader}"))
            conn.execute(sa.text(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {reader}"))
        data_admin.dispose()
        reader_url = f"postgresql://{reader}@127.0.0.1:5432/{database}"
        try:
            yield Warehouse(rf, str(database), reader, reader_url)
        finally:
            stop_federation(rf)
            with admin.connect() as conn:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
                conn.execute(sa.text(f"DROP ROLE IF EXISTS {reader}"))
            admin.dispose()


def test_node_answers_through_a_select_only_role_and_cannot_write(warehouse: Warehouse) -> None:
    rf = warehouse.rf
    with rf.partner() as client:
        as_owner = [_aurora(client.query(q)) for q in QUERIES]
    node = _restart_aurora(rf, warehouse.reader_url)
    assert node.data.url.username == warehouse.reader
    with rf.partner() as client:
        as_reader = [_aurora(client.query(q)) for q in QUERIES]
    assert all(as_reader), "aurora answered nothing through the read-only role"
    assert as_reader == as_owner
    # The engine the node reads with can change nothing there.
    for statement in (
        "INSERT INTO mobility_trips (resident_id) VALUES ('x')",
        "DELETE FROM traffic_counts",
        "UPDATE residents SET district = 'x'",
        "CREATE TABLE planted (x INTEGER)",
    ):
        with (
            pytest.raises(sa.exc.ProgrammingError, match="permission denied"),
            node.data.begin() as conn,
        ):
            conn.execute(sa.text(statement))


def test_a_warehouse_denying_temporary_tables_is_a_clear_start_up_error(
    warehouse: Warehouse,
) -> None:
    admin = admin_engine()
    with admin.connect() as conn:
        conn.execute(sa.text(f'REVOKE TEMPORARY ON DATABASE "{warehouse.database}" FROM PUBLIC'))
    admin.dispose()
    config = warehouse.rf.fed.cities["aurora"].config
    sandbox.write_toml(config, {**tomllib.loads(config.read_text()), "data": warehouse.reader_url})
    with pytest.raises(StoreError) as refused:
        NodeServer(NodeConfig.load(config))
    assert refused.value.reason == "DATA_SOURCE_NO_TEMPORARY_TABLES"
    assert "GRANT TEMPORARY" in refused.value.message
