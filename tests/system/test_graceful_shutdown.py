"""SIGTERM mid-query: `citybroker node serve` stops taking calls (health NOT_SERVING, new
connections refused), lets the query in flight finish, commits its log and exits 0 within
`shutdown_grace_s`; restarted, its log holds that exchange.

The slow query is a real slow path: the city's datasets are on PostgreSQL, and the test holds an
exclusive lock on the trips table (as a long maintenance job on a warehouse would), so the node's
scan waits until the test lets it go.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
import tomllib
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from pathlib import Path

import pytest
import sqlalchemy as sa

from cli import sandbox
from domain import agreement as agreement_doc
from domain.query import Dimension, Measure, MeasureKind, Query
from edge.health import health_status, wait_serving
from edge.operator_client import OperatorClient, consent_record
from edge.partner_client import Answer, PartnerClient
from edge.rpc import client_credentials
from infra import storage
from keys import dsse
from node import synthetic
from tests.conftest import PURPOSE
from tests.system.conftest import command, environment

pytestmark = pytest.mark.postgres
GRACE_S = 10.0
QUERY = Query(
    "mobility",
    PURPOSE,
    (Measure(MeasureKind.COUNT_RECORDS),),
    group_by=(Dimension("mode"),),
    cities=("aurora",),
)


def _start(args: list[str], out: Path) -> subprocess.Popen[bytes]:
    with out.open("ab") as log:
        return subprocess.Popen(
            [*command(), *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=environment(),
        )


def _refuses(address: str) -> bool:
    host, port = address.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=2):
            return False
    except OSError:
        return True


def _configure(fed: sandbox.LocalFederation, data_url: str) -> str:
    """Aurora's node reads its datasets from `data_url`, with a health listener and the grace;
    the broker waits long enough for the slow city. Returns the node's health address."""
    layout = fed.cities["aurora"]
    engine = storage.create_engine(data_url)
    people = synthetic.residents("aurora", layout.plan.districts, 50, 0)
    synthetic.load_trips(engine, synthetic.trip_rows(people, 4, date(2026, 8, 1), 92, 0))
    synthetic.load_residents(engine, people)
    synthetic.load_traffic(
        engine, synthetic.traffic_rows(layout.plan.districts, 1, date(2026, 8, 1), 31, 0)
    )
    engine.dispose()
    health = f"127.0.0.1:{sandbox.free_port()}"
    node = tomllib.loads(layout.config.read_text())
    sandbox.write_toml(
        layout.config,
        {**node, "data": data_url, "health_listen": health, "shutdown_grace_s": GRACE_S},
    )
    broker = tomllib.loads(fed.broker_config.read_text())
    sandbox.write_toml(fed.broker_config, {**broker, "city_timeout_s": 30.0})
    return health


def _prepare(fed: sandbox.LocalFederation) -> None:
    """The agreement with the partner, and every synthetic resident's consent."""
    layout = fed.cities["aurora"]
    with OperatorClient(
        layout.address, fed.ca_cert, layout.operator_cert, layout.operator_key
    ) as op:
        op.activate_agreement(
            agreement_doc.sign(fed.agreement("aurora"), layout.signer, fed.partner_signer)
        )
        people = synthetic.residents("aurora", layout.plan.districts, 50, 0)
        op.give_consents(
            [
                consent_record(
                    f"{p.resident_id}-c1", p.resident_id, PURPOSE, fed.partner_id, "mobility"
                )
                for p in people
            ]
        )


def _wait_blocked(data: sa.Engine, timeout_s: float = 30.0) -> None:
    """Until a session of the node waits for the test's lock."""
    deadline = time.monotonic() + timeout_s
    with data.connect() as conn:
        while time.monotonic() < deadline:
            waiting = conn.execute(
                sa.text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
                )
            ).scalar()
            if waiting:
                return
            time.sleep(0.05)
    raise AssertionError("the node's query never reached the locked table")


def _partner(fed: sandbox.LocalFederation) -> PartnerClient:
    return PartnerClient.connect(
        fed.broker_address,
        fed.broker_id,
        fed.partner_id,
        fed.partner_signer,
        fed.ca_cert,
        fed.trust_bundle,
        fed.authority_key,
    )


def test_sigterm_mid_query_finishes_it_logs_it_and_exits_zero(
    tmp_path: Path, postgres_url: str
) -> None:
    fed = sandbox.create(tmp_path / "fed")
    health = _configure(fed, postgres_url)
    layout = fed.cities["aurora"]
    ca = fed.ca_cert.read_bytes()
    operator = client_credentials(
        ca, layout.operator_cert.read_bytes(), layout.operator_key.read_bytes()
    )
    node_out, broker_out = tmp_path / "node.log", tmp_path / "broker.log"
    node = _start(["node", "serve", "--config", str(layout.config)], node_out)
    broker = _start(["broker", "serve", "--config", str(fed.broker_config)], broker_out)
    data = storage.create_engine(postgres_url)
    try:
        wait_serving(
            layout.address, operator, lambda: None if node.poll() is None else _died(node_out)
        )
        wait_serving(fed.broker_address, client_credentials(ca), lambda: None)
        _prepare(fed)
        with _partner(fed) as partner, ThreadPoolExecutor(1) as pool, data.connect() as lock:
            lock.execute(sa.text("LOCK TABLE mobility_trips IN ACCESS EXCLUSIVE MODE"))
            asked = pool.submit(partner.query, QUERY, 60.0)
            _wait_blocked(data)
            node.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            time.sleep(0.5)
            # Stopping: probes see NOT_SERVING, new connections are refused, the query waits.
            assert health_status(health) == "NOT_SERVING"
            assert _refuses(layout.address)
            assert node.poll() is None and not asked.done()
            lock.rollback()  # the warehouse is free again: the query in flight goes on
            answer: Answer = asked.result(30)
        assert [(c.city, c.status) for c in answer.cities] == [("aurora", "answered")]
        assert node.wait(GRACE_S + 5) == 0, node_out.read_text()
        assert time.monotonic() - signalled < GRACE_S
        lines = [
            json.loads(line) for line in node_out.read_text().splitlines() if line.startswith("{")
        ]
        (call,) = [line for line in lines if line.get("method", "").endswith("/RunQuery")]
        assert (call["code"], call["exchange_id"]) == ("OK", answer.query_id)
        assert [line["message"] for line in lines][-1] == "stopped"

        # Restarted, the node opens its log (checking it against its last checkpoint), and the
        # exchange answered during the shutdown is in it.
        node = _start(["node", "serve", "--config", str(layout.config)], node_out)
        wait_serving(
            layout.address, operator, lambda: None if node.poll() is None else _died(node_out)
        )
        assert _logged_exchange(layout.database, answer.query_id)
        node.send_signal(signal.SIGTERM)
        assert node.wait(GRACE_S + 5) == 0
    finally:
        data.dispose()
        for proc in (node, broker):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(GRACE_S + 5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)


def _died(out: Path) -> None:
    raise AssertionError(f"the node exited early:\n{out.read_text()[-3000:]}")


def _logged_exchange(database: Path, request_id: str) -> bool:
    engine = storage.create_engine(f"sqlite:///{database}")
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT entry FROM log_entries WHERE kind = 'exchange'"))
            payloads = [dsse.Envelope.from_json(bytes(r[0])).payload for r in rows]
        return any(json.loads(p).get("request_id") == request_id for p in payloads)
    finally:
        engine.dispose()
