"""Broker replicas: two `BrokerServer`s with one broker id and key on one PostgreSQL database.

Partners query both at once; the broker's log stays one Merkle log (indexes 0..n-1 once each, one
sequence of signed checkpoints, each consistent with the next and with the stored entries, every
receipt a partner received in it), witnessing rounds of the two never store conflicting
cosignatures, and a partner token used at one replica is a replay at the other.
"""

from __future__ import annotations

import json
import threading
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
import sqlalchemy as sa

from audit.cosign import verify_cosignature, witness_name
from audit.merkle import leaf_hash, root_from_leaf_hashes, verify_consistency
from audit.note import NoteVerifier, parse_checkpoint, unverified_body, verify_note
from audit.schema import log_checkpoints, log_cosignatures, log_entries, witnessed_logs
from broker.config import BrokerConfig
from citybroker.broker.v1 import broker_pb2, broker_pb2_grpc
from cli import sandbox
from domain import statements
from domain.errors import CallFailed
from domain.query import Dimension, Measure, MeasureKind, Query
from edge.broker_server import BrokerServer
from edge.partner_client import PartnerClient
from edge.rpc import CHANNEL_OPTIONS, client_credentials
from edge.status import remote_error
from edge.wire import query_to_pb
from infra import storage
from keys import dsse, tokens
from keys.trust import Role
from tests.conftest import PURPOSE, RunningFederation, start_federation
from tests.integration.pg_databases import postgres_database

pytestmark = pytest.mark.postgres

BY_MODE = Query(
    "mobility",
    PURPOSE,
    (Measure(MeasureKind.COUNT_RECORDS), Measure(MeasureKind.COUNT_RESIDENTS)),
    group_by=(Dimension("mode"),),
)
RECEIPT_TYPE = dsse.media_type("receipt")
THREADS_PER_REPLICA = 3
QUERIES_PER_THREAD = 6


@dataclass
class Replicas:
    rf: RunningFederation
    brokers: list[BrokerServer]
    addresses: list[str]
    engine: sa.Engine
    _clients: list[PartnerClient] = field(default_factory=list)

    def partner(self, replica: int) -> PartnerClient:
        f = self.rf.fed
        client = PartnerClient.connect(
            self.addresses[replica],
            f.broker_id,
            f.partner_id,
            f.partner_signer,
            f.ca_cert,
            f.trust_bundle,
            f.authority_key,
        )
        self._clients.append(client)
        return client


def start_replicas(rf: RunningFederation, url: str, root: Path, count: int) -> list[BrokerServer]:
    """`count` broker servers from the federation's broker config, on database `url`, each on
    ports of its own (same broker id, key and certificate)."""
    config = tomllib.loads(rf.fed.broker_config.read_text())
    servers = []
    for i in range(count):
        path = root / f"broker-replica-{i}.toml"
        sandbox.write_toml(
            path,
            {
                **config,
                "database": url,
                "listen": f"127.0.0.1:{sandbox.free_port()}",
                "peer_listen": f"127.0.0.1:{sandbox.free_port()}",
                "witness_interval_s": 0.5,
            },
        )
        servers.append(BrokerServer(BrokerConfig.load(path)).start())
    return servers


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replicas]:
    """One federation for the module: three nodes and two broker replicas on one new database."""
    with postgres_database() as url:
        yield from _running_replicas(tmp_path_factory.mktemp("replicas"), url)


def _running_replicas(tmp_path: Path, url: str) -> Iterator[Replicas]:
    rf = start_federation(tmp_path / "fed", residents_per_city=80)
    rf.broker.stop(0)  # the federation's own broker (SQLite) makes way for the replicas
    # The replicas start a new log under the same broker name; the cities have cosigned the old
    # one (its records of their checkpoints), so they forget it rather than see a fork.
    for n in rf.nodes.values():
        with n.engine.begin() as conn:
            conn.execute(witnessed_logs.delete())
    brokers = start_replicas(rf, url, tmp_path, 2)
    engine = storage.create_engine(url)
    running = Replicas(rf, brokers, [b.config.listen for b in brokers], engine)
    try:
        yield running
    finally:
        for client in running._clients:
            client.close()
        for b in brokers:
            b.stop(0)
        engine.dispose()
        for op in rf.operators.values():
            op.close()
        for n in rf.nodes.values():
            n.stop(0)


def _receipt_digest(receipt: dict[str, Any]) -> str:
    return statements.digest(dsse.canonical(receipt))


def _load(r: Replicas) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
    """Partner queries from THREADS_PER_REPLICA threads at each replica, all at once: the
    receipts received and the errors."""
    receipts: list[dict[str, Any]] = []
    errors: list[tuple[str, str]] = []
    lock = threading.Lock()
    start = threading.Barrier(THREADS_PER_REPLICA * len(r.brokers))

    def work(client: PartnerClient) -> None:
        start.wait()
        for _ in range(QUERIES_PER_THREAD):
            try:
                answer = client.query(BY_MODE, timeout_s=30)
            except CallFailed as e:
                with lock:
                    errors.append((e.error.code, e.error.reason))
                continue
            with lock:
                receipts.append(answer.receipt)

    clients = [r.partner(i) for i in range(len(r.brokers)) for _ in range(THREADS_PER_REPLICA)]
    workers = [threading.Thread(target=work, args=(c,)) for c in clients]
    for w in workers:
        w.start()
    for w in workers:
        w.join(120)
    return receipts, errors


def _check_one_log(r: Replicas, receipts: list[dict[str, Any]]) -> int:
    """The stored log is one Merkle log: contiguous unique indexes, every stored checkpoint
    signed by the broker over the stored entries' tree and consistent with the next (proofs
    from a replica), every receipt in it. Returns its size."""
    fed = r.rf.fed
    origin = f"citybroker/broker/{fed.broker_id}"
    verifier = NoteVerifier.for_key(origin, fed.broker_signer.public)
    with r.engine.connect() as conn:
        indexes = conn.execute(sa.select(log_entries.c.idx).order_by(log_entries.c.idx)).scalars()
        indexes = list(indexes)
        entries = [
            bytes(e)
            for e in conn.execute(
                sa.select(log_entries.c.entry).order_by(log_entries.c.idx)
            ).scalars()
        ]
        notes = conn.execute(
            sa.select(log_checkpoints.c.tree_size, log_checkpoints.c.note).order_by(
                log_checkpoints.c.tree_size
            )
        ).all()
    size = len(entries)
    assert indexes == list(range(size)), "indexes are not 0..n-1, each once"
    leaves = [leaf_hash(e) for e in entries]
    checkpoints: list[tuple[int, bytes]] = []
    for stored_size, note in notes:
        cp_origin, cp_size, cp_root = parse_checkpoint(verify_note(note, [verifier]))
        assert (cp_origin, cp_size) == (origin, stored_size)
        assert root_from_leaf_hashes(leaves[:cp_size]) == cp_root, f"checkpoint {cp_size} forks"
        checkpoints.append((cp_size, cp_root))
    assert checkpoints[-1][0] == size, "the last checkpoint covers every entry"
    log = r.brokers[0].log
    for (s1, root1), (s2, root2) in zip(checkpoints[1:], checkpoints[2:], strict=False):
        verify_consistency(s1, s2, log.consistency_proof(s1, s2), root1, root2)
    logged = {
        _receipt_digest(json.loads(dsse.Envelope.from_json(e).payload))
        for e in entries
        if dsse.Envelope.from_json(e).payload_type == RECEIPT_TYPE
    }
    missing = [x for x in receipts if _receipt_digest(x) not in logged]
    assert not missing, f"{len(missing)} receipts partners received are not in the log"
    return size


def test_two_replicas_keep_one_merkle_log_under_concurrent_partners(replicas: Replicas) -> None:
    r = replicas
    started = time.monotonic()
    receipts, errors = _load(r)
    elapsed = time.monotonic() - started
    assert not errors, errors
    total = THREADS_PER_REPLICA * QUERIES_PER_THREAD * len(r.brokers)
    assert len(receipts) == total
    size = _check_one_log(r, receipts)
    assert size >= total
    print(f"\n{total} exchanges through 2 replicas in {elapsed:.1f} s; log of {size} entries")
    # Both replicas read the same log.
    assert r.brokers[0].log.checkpoint() == r.brokers[1].log.checkpoint()


def test_witnessing_from_two_replicas_stores_one_consistent_cosignature_history(
    replicas: Replicas,
) -> None:
    r = replicas
    receipts, errors = _load(r)
    assert not errors and receipts
    # Both replicas' rounds at once, twice over: they take turns, or skip what the other did.
    for _ in range(2):
        rounds = [threading.Thread(target=b.witnessing.collect_once) for b in r.brokers]
        for t in rounds:
            t.start()
        for t in rounds:
            t.join(60)
    size = r.brokers[0].log.size()
    fed = r.rf.fed
    cities = {c.id: c for c in fed.bundle.by_role(Role.CITY)}
    with r.engine.connect() as conn:
        rows = conn.execute(sa.select(log_cosignatures)).all()
    by_city: dict[str, list[int]] = {}
    for row in rows:
        body = unverified_body(r.brokers[0].log.checkpoint_at(row.tree_size))
        key = cities[row.witness].keys[0].public
        verify_cosignature(row.cosignature, body, witness_name(row.witness), key)
        by_city.setdefault(row.witness, []).append(row.tree_size)
    assert set(by_city) == set(cities), "every city cosigned"
    assert all(max(sizes) == size for sizes in by_city.values()), by_city


def test_a_token_used_at_one_replica_is_a_replay_at_the_other(replicas: Replicas) -> None:
    r = replicas
    used: list[list[tuple[str, str]]] = []
    first = r.partner(0)
    mint = first._metadata

    def remember(grant: tokens.Grant) -> list[tuple[str, str]]:
        used.append(mint(grant))
        return used[-1]

    first._metadata = remember  # type: ignore[method-assign]
    first.query(BY_MODE)
    fed = r.rf.fed
    channel = grpc.secure_channel(
        r.addresses[1], client_credentials(fed.ca_cert.read_bytes()), options=CHANNEL_OPTIONS
    )
    try:
        with pytest.raises(grpc.RpcError) as caught:
            broker_pb2_grpc.BrokerServiceStub(channel).Query(
                broker_pb2.QueryRequest(query=query_to_pb(BY_MODE)),
                metadata=used[0],
                timeout=15,
            )
    finally:
        channel.close()
    error = remote_error(caught.value)
    assert (error.code, error.reason) == ("UNAUTHENTICATED", "TOKEN_REPLAYED")
