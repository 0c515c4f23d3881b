"""PostgreSQL restarted under load, with the broker's and one node's stores on it: callers get
UNAVAILABLE with a reason (never INTERNAL) while it is down, the processes reconnect on their own,
and no acknowledged consent event or receipted exchange is lost."""

from __future__ import annotations

import secrets
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from citybroker.node.v1 import node_pb2
from cli import demo
from edge.operator_client import consent_record
from edge.status import remote_error
from tests.faults.harness import (
    BrokerLog,
    ProcessFederation,
    QueryLoad,
    outcomes,
    process_federation,
    timed_query,
    wait_until,
)

pytestmark = [pytest.mark.faults, pytest.mark.postgres]

SERVER = "postgresql://postgres@127.0.0.1:5432"
CITY = "aurora"


def _cluster() -> list[str]:
    versions = sorted(p.name for p in Path("/etc/postgresql").glob("*"))
    if not versions or shutil.which("pg_ctlcluster") is None:
        pytest.skip("no local PostgreSQL cluster to restart (pg_ctlcluster, /etc/postgresql)")
    return ["pg_ctlcluster", "--skip-systemctl-redirect", versions[-1], "main"]


def _pg(sql: str) -> None:
    import psycopg

    with psycopg.connect(f"{SERVER}/postgres", autocommit=True, connect_timeout=5) as conn:
        conn.execute(sql)  # type: ignore[arg-type]


@pytest.fixture
def databases() -> Iterator[dict[str, str]]:
    """A fresh database for the broker and one for CITY's node; dropped afterwards."""
    try:
        _pg("SELECT 1")
    except Exception as e:  # noqa: BLE001 - any failure means there is no server to use
        pytest.skip(f"PostgreSQL at 127.0.0.1:5432 unavailable: {e}")
    tag = secrets.token_hex(4)
    names = {"broker": f"cbfault_{tag}_broker", CITY: f"cbfault_{tag}_{CITY}"}
    for name in names.values():
        _pg(f"CREATE DATABASE {name}")
    yield {party: f"{SERVER}/{name}" for party, name in names.items()}
    for name in names.values():
        _pg(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def cluster() -> Iterator[list[str]]:
    """The pg_ctlcluster command for the local cluster; the cluster is running again afterwards,
    whatever the test did."""
    command = _cluster()
    yield command
    subprocess.run([*command, "start"], capture_output=True, timeout=60)  # no-op when running
    wait_until("PostgreSQL is back", lambda: _pg("SELECT 1") is None, timeout_s=60)


@pytest.fixture
def rf(tmp_path: Path, databases: dict[str, str]) -> Iterator[ProcessFederation]:
    root = tmp_path / "pg-restart"
    node = {"database": databases[CITY], "data": f"duckdb:///{root / 'data' / f'{CITY}.duckdb'}"}
    with process_federation(
        root, broker={"database": databases["broker"], "city_timeout_s": 5.0}, nodes={CITY: node}
    ) as running:
        yield running


class ConsentLoad:
    """Consents given one at a time through CITY's operator API until stopped: the record ids
    acknowledged, and the errors as (code, reason)."""

    def __init__(self, rf: ProcessFederation) -> None:
        self._op = rf.operators[CITY]
        self._partner = rf.fed.partner_id
        self.acknowledged: list[str] = []
        self.errors: list[tuple[str, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            n += 1
            record = consent_record(
                f"fault-{n}", f"fault-resident-{n}", demo.PURPOSE, self._partner, "mobility"
            )
            try:
                self._op.consent.GiveConsent(node_pb2.GiveConsentRequest(record=record), timeout=10)
            except grpc.RpcError as e:
                err = remote_error(e)
                self.errors.append((err.code, err.reason))
                time.sleep(0.05)
                continue
            self.acknowledged.append(record.record_id)

    def __enter__(self) -> ConsentLoad:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)


def _everyone_answers(rf: ProcessFederation) -> bool:
    answer, _ = timed_query(rf.partner())
    return {s for s, _ in outcomes(answer).values()} == {"answered"}


def test_postgres_restarted_under_load(rf: ProcessFederation, cluster: list[str]) -> None:
    assert _everyone_answers(rf)
    log = BrokerLog(rf.fed)
    before = log.checkpoint()
    with QueryLoad(rf, threads=3) as queries, ConsentLoad(rf) as consents:
        time.sleep(2)
        restart = subprocess.run([*cluster, "restart"], capture_output=True, text=True, timeout=120)
        assert restart.returncode == 0, restart.stderr
        time.sleep(3)
    # Reconnected on their own: no process was restarted.
    wait_until("the federation answers fully again", lambda: _everyone_answers(rf), timeout_s=60)
    for name, proc in rf.procs.children:
        assert proc.poll() is None, f"{name} exited"
    errors = queries.errors + consents.errors
    print(
        f"{len(queries.receipts)} exchanges and {len(consents.acknowledged)} consents "
        f"acknowledged; {len(errors)} refused: {sorted(set(errors))}"
    )
    assert all(code == "UNAVAILABLE" and reason for code, reason in errors), sorted(set(errors))
    assert "INTERNAL" not in queries.city_codes
    assert consents.acknowledged and queries.receipts
    # Nothing acknowledged is lost.
    for record_id in consents.acknowledged:
        got = rf.operators[CITY].consent.GetConsent(
            node_pb2.GetConsentRequest(record_id=record_id), timeout=10
        )
        assert got.record.record_id == record_id
    latest = log.check_extends(before)
    assert not log.missing(queries.receipts, latest.size)
    log.close()
