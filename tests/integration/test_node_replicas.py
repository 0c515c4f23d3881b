"""Node replicas: two node servers of one city (aurora) on one PostgreSQL database, its consents,
agreements, log, consumed tokens, release history and datasets. The trust bundle lists both
addresses (`ipv4:A,B`) and the broker's channel to the city goes round-robin
(edge.city_gateway.city_channel_options), so the replicas answer in turn; what one replica did,
the other knows."""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
import sqlalchemy as sa

from audit.merkle import leaf_hash, root_from_leaf_hashes
from audit.note import NoteVerifier, parse_checkpoint, verify_note
from audit.schema import log_checkpoints, log_entries
from broker.config import BrokerConfig
from broker.outcomes import ANSWERED
from citybroker.node.v1 import node_pb2, node_pb2_grpc
from cli import sandbox
from domain import agreement as agreement_doc
from domain.query import Dimension, Measure, MeasureKind, Query
from edge.broker_server import BrokerServer
from edge.node_server import NodeServer
from edge.operator_client import consent_record
from edge.partner_client import Answer
from edge.rpc import CHANNEL_OPTIONS
from edge.status import remote_error
from edge.wire import envelope_to_pb
from infra import storage
from keys import dsse, trust
from node.config import NodeConfig
from node.schema import release_cells
from tests.conftest import PURPOSE, RunningFederation, start_federation
from tests.integration.pg_databases import postgres_database

pytestmark = pytest.mark.postgres

CITY = "aurora"
BY_DISTRICT = Query(
    "mobility",
    PURPOSE,
    (Measure(MeasureKind.COUNT_RECORDS), Measure(MeasureKind.COUNT_RESIDENTS)),
    group_by=(Dimension("district"),),
)
BY_MODE = Query(
    "mobility",
    PURPOSE,
    (Measure(MeasureKind.COUNT_RECORDS), Measure(MeasureKind.COUNT_RESIDENTS)),
    group_by=(Dimension("mode"),),
    cities=(CITY,),  # modes are every city's: ask aurora alone, so each cell is aurora's
)


@dataclass
class NodeReplicas:
    rf: RunningFederation
    replicas: list[NodeServer]
    engine: sa.Engine
    # Per replica, the signed broker requests it was asked to answer.
    asked: list[list[dsse.Envelope]] = field(default_factory=lambda: [[], []])

    def who_answers(self, ask: Callable[[], Any]) -> tuple[Any, int]:
        """What `ask` returned, and which replica answered (aurora's single query in it)."""
        before = [len(a) for a in self.asked]
        result = ask()
        answered = [i for i, a in enumerate(self.asked) if len(a) > before[i]]
        assert len(answered) == 1, answered
        return result, answered[0]


def _record_requests(node: NodeServer, into: list[dsse.Envelope]) -> None:
    """Keep every signed request the replica's answerer is given (the servicer calls it)."""
    answerer = node.city.answerer
    run_query = answerer.run_query

    def recording(envelope: dsse.Envelope, *args: Any, **kwargs: Any) -> Any:
        into.append(envelope)
        return run_query(envelope, *args, **kwargs)

    answerer.run_query = recording  # type: ignore[method-assign]


def _list_both_addresses(rf: RunningFederation, address_b: str) -> None:
    """A new trust bundle version whose aurora endpoint lists both replicas' addresses."""
    fed = rf.fed
    bundle = fed.bundle
    aurora = bundle.parties[CITY]
    endpoint = f"ipv4:{aurora.endpoint},{address_b}"
    parties = {**bundle.parties, CITY: dataclasses.replace(aurora, endpoint=endpoint)}
    newer = dataclasses.replace(
        bundle, version=bundle.version + 1, issued_at=datetime.now(UTC), parties=parties
    )
    fed.trust_bundle.write_bytes(trust.sign_bundle(newer, fed.authority).to_json())


def _replicas_on(rf: RunningFederation, url: str, root: Path) -> list[NodeServer]:
    """Aurora's node replaced by two replicas with database and data at `url`, its agreement
    and consents given again there, and the broker restarted on the new trust bundle."""
    layout = rf.fed.cities[CITY]
    rf.nodes[CITY].stop(0)
    config = {**tomllib.loads(layout.config.read_text()), "database": url, "data": url}
    address_b = f"127.0.0.1:{sandbox.free_port()}"
    _list_both_addresses(rf, address_b)
    sandbox.write_toml(layout.config, config)
    config_b = root / f"node-{CITY}-b.toml"
    sandbox.write_toml(config_b, {**config, "listen": address_b})
    replicas = [NodeServer(NodeConfig.load(p)).start() for p in (layout.config, config_b)]
    rf.nodes[CITY] = replicas[0]
    op = rf.operators[CITY]
    fed = rf.fed
    op.activate_agreement(
        agreement_doc.sign(fed.agreement(CITY), layout.signer, fed.partner_signer)
    )
    op.give_consents(
        [
            consent_record(
                f"{r.resident_id}-c1", r.resident_id, PURPOSE, fed.partner_id, "mobility"
            )
            for r in rf.consenting[CITY]
        ]
    )
    rf.broker.stop(0)
    rf.broker = BrokerServer(BrokerConfig.load(fed.broker_config)).start()
    return replicas


@pytest.fixture(scope="module")
def node_replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeReplicas]:
    root = tmp_path_factory.mktemp("node-replicas")
    with postgres_database() as url:
        rf = start_federation(root / "fed", residents_per_city=80, data_urls={CITY: url})
        replicas = _replicas_on(rf, url, root)
        engine = storage.create_engine(url)
        running = NodeReplicas(rf, replicas, engine)
        for node, asked in zip(replicas, running.asked, strict=True):
            _record_requests(node, asked)
        try:
            yield running
        finally:
            rf.broker.stop(0)
            for op in rf.operators.values():
                op.close()
            for n in [*rf.nodes.values(), replicas[1]]:
                n.stop(0)
            engine.dispose()


def _aurora_cells(answer: Answer, by: str = "district") -> dict[str, dict[str, float]]:
    return {c.key[by]: c.values for c in answer.cells if c.contributing == [CITY]}


def _query(r: NodeReplicas, query: Query = BY_DISTRICT) -> tuple[Answer, int]:
    with r.rf.partner() as client:
        answer: Answer
        answer, replica = r.who_answers(lambda: client.query(query))
    return answer, replica


def test_replicas_answer_in_turn_and_keep_one_log(node_replicas: NodeReplicas) -> None:
    r = node_replicas
    answered = [_query(r) for _ in range(8)]
    replicas = [i for _, i in answered]
    # Round-robin over both (witnessing's calls on the same channel take turns too).
    assert min(replicas.count(0), replicas.count(1)) >= 2, replicas
    # One log: contiguous indexes, checkpoints signed by the city over the stored tree, and
    # every index the replicas returned holds that replica's signed result.
    layout = r.rf.fed.cities[CITY]
    origin = f"citybroker/node/{CITY}"
    verifier = NoteVerifier.for_key(origin, layout.signer.public)
    with r.engine.connect() as conn:
        rows = conn.execute(
            sa.select(log_entries.c.idx, log_entries.c.entry).order_by(log_entries.c.idx)
        ).all()
        notes = conn.execute(sa.select(log_checkpoints.c.note)).scalars().all()
    assert [row.idx for row in rows] == list(range(len(rows)))
    leaves = [leaf_hash(bytes(row.entry)) for row in rows]
    for note in notes:
        _, size, root = parse_checkpoint(verify_note(note, [verifier]))
        assert root_from_leaf_hashes(leaves[:size]) == root
    for answer, _ in answered:
        index = next(c.log_index for c in answer.cities if c.city == CITY)
        entry = dsse.Envelope.from_json(bytes(rows[index].entry))
        assert entry.payload_type == dsse.media_type("result")


def test_a_request_answered_by_one_replica_is_a_replay_at_the_other(
    node_replicas: NodeReplicas,
) -> None:
    r = node_replicas
    _, replica = _query(r)
    request = r.asked[replica][-1]
    other = r.replicas[1 - replica]
    fed = r.rf.fed
    tls = fed.root / "tls"
    credentials = grpc.ssl_channel_credentials(
        root_certificates=fed.ca_cert.read_bytes(),
        private_key=(tls / f"{fed.broker_id}.key").read_bytes(),
        certificate_chain=(tls / f"{fed.broker_id}.crt").read_bytes(),
    )
    channel = grpc.secure_channel(other.city.config.listen, credentials, options=CHANNEL_OPTIONS)
    try:
        with pytest.raises(grpc.RpcError) as caught:
            node_pb2_grpc.QueryServiceStub(channel).RunQuery(
                node_pb2.RunQueryRequest(signed_query=envelope_to_pb(request)), timeout=15
            )
    finally:
        channel.close()
    error = remote_error(caught.value)
    assert (error.code, error.reason) == ("UNAUTHENTICATED", "TOKEN_REPLAYED")


def test_the_release_history_of_one_replica_guards_the_other(node_replicas: NodeReplicas) -> None:
    """A query shape asked first of one replica only; after a withdrawal, the other replica
    withholds the cells the leaver was in (they would give the leaver away by subtraction),
    which it can only know from the first replica's release in the shared history."""
    r = node_replicas
    before, first = _query(r, BY_MODE)
    r.rf.operators[CITY].withdraw(f"{r.rf.consenting[CITY][0].resident_id}-c1")
    for _ in range(8):
        after, second = _query(r, BY_MODE)
        if second != first:
            break
    assert second != first, "round-robin never reached the other replica"
    released, now = _aurora_cells(before, "mode"), _aurora_cells(after, "mode")
    assert next(c for c in after.cities if c.city == CITY).status == ANSWERED
    assert len(now) < len(released), "the leaver's cells were released with one resident fewer"
    assert all(released[m] == values for m, values in now.items())
    with r.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(release_cells)).scalar_one()
