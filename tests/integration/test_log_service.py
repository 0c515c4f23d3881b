"""LogService over mTLS, on nodes and on the broker: signed checkpoints, every entry by pages, and
inclusion and consistency proofs that verify against the signed roots; strangers are refused."""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from audit.log import MerkleLog
from audit.merkle import leaf_hash, root_from_leaf_hashes, verify_consistency, verify_inclusion
from audit.note import NoteVerifier, parse_checkpoint, verify_note
from citybroker.audit.v1 import audit_pb2, audit_pb2_grpc
from domain.query import Dimension, Measure, MeasureKind, Query
from edge.rpc import CHANNEL_OPTIONS
from edge.status import remote_error
from tests.conftest import PURPOSE, RunningFederation, start_federation, stop_federation

BY_MODE = Query("mobility", PURPOSE, (Measure(MeasureKind.COUNT_RECORDS),), (Dimension("mode"),))


@pytest.fixture(scope="module")
def rf(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningFederation]:
    """A federation of this module's own, so that its logs change only when these tests say."""
    running = start_federation(tmp_path_factory.mktemp("log-service"), residents_per_city=30)
    with running.partner() as client:
        client.query(BY_MODE)
    yield running
    stop_federation(running)


@dataclass
class Log:
    stub: audit_pb2_grpc.LogServiceStub
    origin: str
    verifier: NoteVerifier


class Channels:
    def __init__(self, rf: RunningFederation) -> None:
        self.rf = rf
        self._open: list[grpc.Channel] = []

    def channel(self, address: str, identity: str | None) -> grpc.Channel:
        tls: Path = self.rf.fed.root / "tls"
        ca = self.rf.fed.ca_cert.read_bytes()
        creds = (
            grpc.ssl_channel_credentials(ca)
            if identity is None
            else grpc.ssl_channel_credentials(
                ca, (tls / f"{identity}.key").read_bytes(), (tls / f"{identity}.crt").read_bytes()
            )
        )
        ch = grpc.secure_channel(address, creds, options=CHANNEL_OPTIONS)
        self._open.append(ch)
        return ch

    def log(self, party: str, identity: str | None) -> Log:
        fed = self.rf.fed
        if party == fed.broker_id:
            # Partners (no certificate) use the broker's main port; parties its mTLS peer port.
            address = (
                fed.broker_address if identity is None else f"127.0.0.1:{self.rf.broker.peer_port}"
            )
            origin, key = f"citybroker/broker/{party}", fed.broker_signer
        else:
            layout = fed.cities[party]
            address, origin, key = layout.address, f"citybroker/node/{party}", layout.signer
        stub = audit_pb2_grpc.LogServiceStub(self.channel(address, identity))
        return Log(stub, origin, NoteVerifier.for_key(origin, key.public))

    def close(self) -> None:
        for ch in self._open:
            ch.close()


@pytest.fixture
def channels(rf: RunningFederation) -> Iterator[Channels]:
    c = Channels(rf)
    yield c
    c.close()


READERS = [
    pytest.param("aurora", "aurora.operator", id="aurora-read-by-its-operator"),
    pytest.param("aurora", "broker-1", id="aurora-read-by-the-broker"),
    pytest.param("aurora", "borealis", id="aurora-read-by-another-city"),
    pytest.param("broker-1", "cascadia", id="broker-read-by-a-city"),
]
NODE_AND_BROKER = [
    pytest.param("aurora", id="node"),
    pytest.param("broker-1", id="broker"),
]


def _checkpoint(log: Log) -> tuple[int, bytes]:
    response = log.stub.GetCheckpoint(audit_pb2.GetCheckpointRequest(), timeout=10)
    body = verify_note(response.checkpoint, [log.verifier])
    origin, size, root = parse_checkpoint(body)
    assert origin == log.origin
    assert response.tree_size == size
    return size, root


def _all_entries(log: Log, page_size: int) -> tuple[list[audit_pb2.LogEntry], int]:
    entries: list[audit_pb2.LogEntry] = []
    token, pages = "", 0
    while True:
        page = log.stub.ListEntries(
            audit_pb2.ListEntriesRequest(page_size=page_size, page_token=token), timeout=10
        )
        pages += 1
        assert len(page.entries) <= page_size
        entries += page.entries
        token = page.next_page_token
        if not token:
            return entries, pages
        assert len(page.entries) == page_size


def _local_log(rf: RunningFederation, party: str) -> MerkleLog:
    return rf.broker.log if party == rf.fed.broker_id else rf.nodes[party].log


@pytest.mark.parametrize(("party", "identity"), READERS)
def test_checkpoint_and_pages_of_entries_match_the_signed_root(
    rf: RunningFederation, channels: Channels, party: str, identity: str
) -> None:
    log = channels.log(party, identity)
    size, root = _checkpoint(log)
    assert size > 0
    # The log may grow meanwhile (cities log the cosignatures the broker collects in the
    # background): it is append-only, so the entries the checkpoint signed are a prefix.
    everything, pages = _all_entries(log, page_size=7)
    assert [e.index for e in everything] == list(range(len(everything)))
    assert len(everything) >= size
    assert pages == -(-len(everything) // 7)
    entries = everything[:size]
    assert root_from_leaf_hashes([leaf_hash(e.entry) for e in entries]) == root
    records = _local_log(rf, party).records(0, size)
    assert [(e.entry, e.kind) for e in entries] == [(r.entry, r.kind) for r in records]
    # The default page size and a non-positive one give the same first page.
    default = log.stub.ListEntries(audit_pb2.ListEntriesRequest(), timeout=10)
    negative = log.stub.ListEntries(audit_pb2.ListEntriesRequest(page_size=-5), timeout=10)
    assert len(default.entries) <= 100 and len(negative.entries) <= 100
    first = min(len(default.entries), len(negative.entries), len(everything))
    assert first >= min(100, size)
    assert list(default.entries)[:first] == list(negative.entries)[:first] == everything[:first]


@pytest.mark.parametrize(("party", "identity"), READERS)
def test_inclusion_and_consistency_proofs_verify(
    channels: Channels, party: str, identity: str
) -> None:
    log = channels.log(party, identity)
    size, root = _checkpoint(log)
    entries, _ = _all_entries(log, page_size=1000)
    leaves = [leaf_hash(e.entry) for e in entries[:size]]
    for i, leaf in enumerate(leaves):
        proof = log.stub.GetInclusionProof(
            audit_pb2.GetInclusionProofRequest(index=i, tree_size=size), timeout=10
        ).hashes
        verify_inclusion(i, size, leaf, list(proof), root)
    for m in range(1, size + 1):
        proof = log.stub.GetConsistencyProof(
            audit_pb2.GetConsistencyProofRequest(from_size=m, to_size=size), timeout=10
        ).hashes
        verify_consistency(m, size, list(proof), root_from_leaf_hashes(leaves[:m]), root)


@pytest.mark.parametrize(
    "party",
    [
        pytest.param("cascadia", id="node"),
        pytest.param("broker-1", id="broker"),
    ],
)
def test_consistency_between_two_signed_checkpoints(
    rf: RunningFederation, channels: Channels, party: str
) -> None:
    log = channels.log(party, "borealis")
    size1, root1 = _checkpoint(log)
    with rf.partner() as client:
        client.query(BY_MODE)
    size2, root2 = _checkpoint(log)
    assert size2 > size1
    proof = log.stub.GetConsistencyProof(
        audit_pb2.GetConsistencyProofRequest(from_size=size1, to_size=size2), timeout=10
    ).hashes
    verify_consistency(size1, size2, list(proof), root1, root2)
    # The new entries, read from the old end onwards, are what the new root adds.
    start = base64.urlsafe_b64encode(f"entry:{size1}".encode()).decode()
    page = log.stub.ListEntries(
        audit_pb2.ListEntriesRequest(page_size=1000, page_token=start), timeout=10
    )
    assert [e.index for e in page.entries] == list(range(size1, size2))
    assert page.next_page_token == ""


def _token(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode()


@pytest.mark.parametrize(
    "token",
    [
        "not base64!",
        _token("entry:-1"),
        _token("entry:abc"),
        _token("entry:99999999"),
        _token("entry:" + "9" * 5000),
        base64.urlsafe_b64encode(b"\xff\xfe").decode(),
        "%%%",
    ],
    ids=["garbage", "negative", "not-a-number", "past-the-end", "huge", "not-utf8", "percent"],
)
@pytest.mark.parametrize("party", NODE_AND_BROKER)
def test_a_bad_page_token_is_invalid_argument(channels: Channels, party: str, token: str) -> None:
    log = channels.log(party, "cascadia")
    with pytest.raises(grpc.RpcError) as info:
        log.stub.ListEntries(audit_pb2.ListEntriesRequest(page_token=token), timeout=10)
    err = remote_error(info.value)
    assert (err.code, err.reason) == ("INVALID_ARGUMENT", "PAGE_TOKEN_INVALID")


@pytest.mark.parametrize("party", NODE_AND_BROKER)
def test_proofs_outside_the_log_are_invalid_argument(channels: Channels, party: str) -> None:
    log = channels.log(party, "cascadia")
    size, _ = _checkpoint(log)
    calls: list[Callable[[], object]] = [
        lambda: log.stub.GetInclusionProof(
            audit_pb2.GetInclusionProofRequest(index=size, tree_size=size), timeout=10
        ),
        lambda: log.stub.GetInclusionProof(
            audit_pb2.GetInclusionProofRequest(index=0, tree_size=size + 1), timeout=10
        ),
        lambda: log.stub.GetConsistencyProof(
            audit_pb2.GetConsistencyProofRequest(from_size=0, to_size=size), timeout=10
        ),
        lambda: log.stub.GetConsistencyProof(
            audit_pb2.GetConsistencyProofRequest(from_size=1, to_size=size + 1), timeout=10
        ),
        lambda: log.stub.GetConsistencyProof(
            audit_pb2.GetConsistencyProofRequest(from_size=size, to_size=1), timeout=10
        ),
    ]
    for call in calls:
        with pytest.raises(grpc.RpcError) as info:
            call()
        assert remote_error(info.value).code == "INVALID_ARGUMENT"


@pytest.mark.parametrize(
    ("party", "identity"),
    [
        ("broker-1", None),  # a partner: TLS without a client certificate
        ("broker-1", "aurora.operator"),  # a city's operator is not a federation party
        ("borealis", "aurora.operator"),  # nor an operator of this city
    ],
    ids=["broker-no-cert", "broker-operator", "other-city-operator"],
)
def test_strangers_are_refused(channels: Channels, party: str, identity: str | None) -> None:
    log = channels.log(party, identity)
    calls: list[Callable[[], object]] = [
        lambda: log.stub.GetCheckpoint(audit_pb2.GetCheckpointRequest(), timeout=10),
        lambda: log.stub.ListEntries(audit_pb2.ListEntriesRequest(), timeout=10),
        lambda: log.stub.GetConsistencyProof(
            audit_pb2.GetConsistencyProofRequest(from_size=1, to_size=1), timeout=10
        ),
    ]
    for call in calls:
        with pytest.raises(grpc.RpcError) as info:
            call()
        err = remote_error(info.value)
        assert (err.code, err.reason) == ("UNAUTHENTICATED", "PEER_NOT_ALLOWED")


def test_a_node_refuses_a_connection_without_a_client_certificate(channels: Channels) -> None:
    log = channels.log("aurora", None)
    with pytest.raises(grpc.RpcError) as info:
        log.stub.GetCheckpoint(audit_pb2.GetCheckpointRequest(), timeout=5)
    assert remote_error(info.value).code == "UNAVAILABLE"
