"""Personal data in shared logs (issue 12, "What broke" 3): any federation party with an mTLS
certificate (another city, the broker) may page through a city's LogService. It must read no
resident's consent there: receipts (resident ids, purposes, recipients, times) enter the log
only as salted commitments, the city keeps the statements and salts, gives them with inclusion
proofs to the resident (ConsentService, the portal's operator), and can erase them (GDPR Art.
17) while the log still verifies.

Fails when the commitments are removed (`ConsentEvidence.log_receipt` appending the receipt
itself): the parties then read every resident's receipt.

The same holds for exchanges about single residents: an attribute check's query names a resident
(and its result answers about them), a record release's result carries residents' records. The
node logs those statements as commitments (node.exchange_evidence), the broker an attribute
check's query (broker.query_evidence), and its receipt names both by salted commitments only.
Fails when either logs them whole (`ExchangeEvidence.entries` returning the statements, or
`logged_query` the signed query): the parties then read the resident's id or the records.
"""

from __future__ import annotations

import base64
import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from audit.merkle import leaf_hash, verify_consistency, verify_inclusion
from audit.note import NoteVerifier, parse_checkpoint, verify_note
from citybroker.audit.v1 import audit_pb2, audit_pb2_grpc
from citybroker.node.v1 import node_pb2, node_pb2_grpc
from domain import agreement as agreement_doc
from domain import commitment
from domain.agreement import Appearance, FieldTerms
from domain.query import Dimension, Filter, FilterOp, Query, QueryKind
from edge.operator_client import consent_record
from edge.rpc import CHANNEL_OPTIONS
from edge.status import remote_error
from keys import dsse
from tests.conftest import RunningFederation, start_federation, stop_federation

CITY = "aurora"


@pytest.fixture(scope="module")
def rf(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningFederation]:
    """A small federation of this module's own: these tests erase residents."""
    running = start_federation(tmp_path_factory.mktemp("log-privacy"), residents_per_city=30)
    yield running
    stop_federation(running)


class Party:
    """Raw stubs on a real mTLS channel to CITY's node (or `address`), as `identity` (its
    certificate)."""

    def __init__(self, rf: RunningFederation, identity: str, address: str = "") -> None:
        tls: Path = rf.fed.root / "tls"
        creds = grpc.ssl_channel_credentials(
            rf.fed.ca_cert.read_bytes(),
            (tls / f"{identity}.key").read_bytes(),
            (tls / f"{identity}.crt").read_bytes(),
        )
        address = address or rf.fed.cities[CITY].address
        self.channel = grpc.secure_channel(address, creds, options=CHANNEL_OPTIONS)
        self.log = audit_pb2_grpc.LogServiceStub(self.channel)
        self.consent = node_pb2_grpc.ConsentServiceStub(self.channel)

    def entries(self) -> list[audit_pb2.LogEntry]:
        """Every entry of the log, page by page, as any reader may list them."""
        found: list[audit_pb2.LogEntry] = []
        token = ""
        while True:
            page = self.log.ListEntries(
                audit_pb2.ListEntriesRequest(page_size=50, page_token=token), timeout=10
            )
            found += page.entries
            token = page.next_page_token
            if not token:
                return found


def _others(rf: RunningFederation) -> list[str]:
    """Every federation party that may read CITY's log but is not CITY's own operator."""
    return [rf.fed.broker_id, *(c for c in rf.fed.cities if c != CITY)]


def _statement_type(entry: bytes) -> str:
    return dsse.Envelope.from_json(entry).payload_type


def test_other_parties_read_no_consent_in_the_log(rf: RunningFederation) -> None:
    residents = [r.resident_id for r in rf.consenting[CITY]]
    assert len(residents) >= 10  # the operator gave their consents through ConsentService
    for identity in _others(rf):
        party = Party(rf, identity)
        entries = party.entries()
        consent = [e for e in entries if e.kind == "consent"]
        assert len(consent) >= len(residents)
        for e in entries:
            body = e.entry + dsse.Envelope.from_json(e.entry).payload
            leaked = [r for r in residents if r.encode() in body]
            assert not leaked, f"{identity} reads residents {leaked[:3]} in entry {e.index}"
            assert _statement_type(e.entry) not in {
                dsse.media_type("consent-receipt"),
                dsse.media_type("consent-batch"),
            }, f"{identity} reads a consent statement in entry {e.index}"
        for e in consent:
            claims = json.loads(dsse.Envelope.from_json(e.entry).payload)
            assert _statement_type(e.entry) == dsse.media_type(commitment.STATEMENT)
            assert set(claims) == {"city", "at", "statement", "commitment"}
        party.channel.close()


def _verified_checkpoint(rf: RunningFederation, note: str) -> tuple[int, bytes]:
    origin = f"citybroker/node/{CITY}"
    verifier = NoteVerifier.for_key(origin, rf.fed.cities[CITY].signer.public)
    _, size, root = parse_checkpoint(verify_note(note, [verifier]))
    return size, root


def test_the_resident_gets_each_receipt_opened_and_proven(rf: RunningFederation) -> None:
    resident = rf.consenting[CITY][0]
    operator = Party(rf, f"{CITY}.operator")
    records = operator.consent.ListResidentConsents(
        node_pb2.ListResidentConsentsRequest(resident_id=resident.resident_id), timeout=10
    ).records
    assert records
    evidence = operator.consent.GetConsentEvidence(
        node_pb2.GetConsentEvidenceRequest(record_id=records[0].record_id), timeout=10
    ).evidence
    assert evidence
    reader = Party(rf, rf.fed.broker_id)  # what any party sees of the same entries
    for ev in evidence:
        receipt = json.loads(dsse.Envelope.from_json(ev.statement).payload)
        assert receipt["resident_id"] == resident.resident_id
        size, root = _verified_checkpoint(rf, ev.checkpoint)
        assert size == ev.tree_size
        (entry,) = reader.log.ListEntries(
            audit_pb2.ListEntriesRequest(
                page_size=1,
                page_token=_token(ev.log_index),
            ),
            timeout=10,
        ).entries
        verify_inclusion(ev.log_index, size, leaf_hash(entry.entry), ev.inclusion_proof, root)
        claims = json.loads(dsse.Envelope.from_json(entry.entry).payload)
        opening = commitment.Opening(ev.log_index, ev.statement, ev.salt)
        assert commitment.opening_problem(claims, opening) is None
    operator.channel.close()
    reader.channel.close()


def _token(index: int) -> str:
    return base64.urlsafe_b64encode(f"entry:{index}".encode()).decode()


def test_erasure_leaves_the_log_verifiable_and_nothing_to_open(rf: RunningFederation) -> None:
    resident = rf.consenting[CITY][1].resident_id
    operator, broker = Party(rf, f"{CITY}.operator"), Party(rf, rf.fed.broker_id)
    before = broker.log.GetCheckpoint(audit_pb2.GetCheckpointRequest(), timeout=10)
    (record,) = operator.consent.ListResidentConsents(
        node_pb2.ListResidentConsentsRequest(resident_id=resident), timeout=10
    ).records

    # A federation party may not erase (nor read openings): only the city's operators.
    with pytest.raises(grpc.RpcError) as refused:
        broker.consent.EraseResident(
            node_pb2.EraseResidentRequest(resident_id=resident), timeout=10
        )
    assert remote_error(refused.value).reason == "PEER_NOT_ALLOWED"

    done = operator.consent.EraseResident(
        node_pb2.EraseResidentRequest(resident_id=resident), timeout=10
    )
    assert (done.records_erased, done.statements_erased) == (1, 1)
    assert done.events_erased == 1

    # Nothing is left to open, nor to list.
    with pytest.raises(grpc.RpcError) as gone:
        operator.consent.GetConsentEvidence(
            node_pb2.GetConsentEvidenceRequest(record_id=record.record_id), timeout=10
        )
    assert gone.value.code() == grpc.StatusCode.NOT_FOUND
    listed = operator.consent.ListResidentConsents(
        node_pb2.ListResidentConsentsRequest(resident_id=resident), timeout=10
    )
    assert not listed.records

    # Erasing again, or a resident the node never knew: NOT_FOUND RESIDENT_UNKNOWN.
    for unknown in (resident, "nobody-at-all"):
        with pytest.raises(grpc.RpcError) as again:
            operator.consent.EraseResident(
                node_pb2.EraseResidentRequest(resident_id=unknown), timeout=10
            )
        assert again.value.code() == grpc.StatusCode.NOT_FOUND
        assert remote_error(again.value).reason == "RESIDENT_UNKNOWN"

    # The log is untouched: the new checkpoint extends the old one.
    after = broker.log.GetCheckpoint(audit_pb2.GetCheckpointRequest(), timeout=10)
    size1, root1 = _verified_checkpoint(rf, before.checkpoint)
    size2, root2 = _verified_checkpoint(rf, after.checkpoint)
    assert size2 >= size1
    if size2 > size1:
        proof = broker.log.GetConsistencyProof(
            audit_pb2.GetConsistencyProofRequest(from_size=size1, to_size=size2), timeout=10
        ).hashes
        verify_consistency(size1, size2, list(proof), root1, root2)
    operator.channel.close()
    broker.channel.close()


# -- exchanges about single residents --------------------------------------------------------

ELIGIBILITY = "eligibility-check"


def _single_resident_exchanges(rf: RunningFederation) -> list[str]:
    """An agreement allowing attribute checks and record releases on CITY's residents, and the
    consent of twelve residents (not those the tests above use); their ids."""
    fed = rf.fed
    terms = dataclasses.replace(
        fed.agreement(CITY),
        agreement_id="single-residents",
        purposes=frozenset({ELIGIBILITY}),
        datasets={
            "residents": {"age": FieldTerms(Appearance.RAW), "district": FieldTerms(Appearance.RAW)}
        },
        query_kinds=frozenset({"attribute_check", "record_release"}),
    )
    operator = rf.operators[CITY]
    operator.activate_agreement(
        agreement_doc.sign(terms, fed.cities[CITY].signer, fed.partner_signer)
    )
    residents = [r.resident_id for r in rf.consenting[CITY][5:17]]
    operator.give_consents(
        [consent_record(f"{r}-elig", r, ELIGIBILITY, fed.partner_id, "age") for r in residents]
    )
    return residents


def _readable(entries: list[audit_pb2.LogEntry]) -> list[tuple[int, bytes]]:
    """Each entry as a reader sees it: its bytes with its decoded payload."""
    return [(e.index, e.entry + dsse.Envelope.from_json(e.entry).payload) for e in entries]


def test_other_parties_read_no_resident_of_an_attribute_check_or_a_release(
    rf: RunningFederation,
) -> None:
    residents = _single_resident_exchanges(rf)
    subject = residents[0]
    check = Query(
        "residents",
        ELIGIBILITY,
        (),
        filters=(Filter("age", FilterOp.AT_LEAST, ("0",)),),
        cities=(CITY,),
        kind=QueryKind.ATTRIBUTE_CHECK,
        subject=subject,
    )
    release = Query(
        "residents",
        ELIGIBILITY,
        (),
        group_by=(Dimension("district"),),
        cities=(CITY,),
        kind=QueryKind.RECORD_RELEASE,
    )
    with rf.partner() as client:  # the partner verifies the receipt's commitments
        checked = client.query(check)
        released = client.query(release)
    assert checked.cells[0].values == {"match": 1}
    pseudonyms = [r["pseudonym"] for r in released.records]
    assert len(pseudonyms) == len(residents)
    secrets_ = [subject.encode(), *(p.encode() for p in pseudonyms)]

    fed = rf.fed
    broker_peers = f"127.0.0.1:{rf.broker.peer_port}"
    readers = [Party(rf, identity) for identity in _others(rf)]
    readers += [Party(rf, city, broker_peers) for city in fed.cities]
    for reader in readers:
        entries = reader.entries()
        for index, body in _readable(entries):
            leaked = [x.decode()[:12] for x in secrets_ if x in body]
            assert not leaked, f"a party reads {leaked} in entry {index}"
        mine = [
            json.loads(dsse.Envelope.from_json(e.entry).payload)
            for e in entries
            if _statement_type(e.entry) == dsse.media_type(commitment.STATEMENT)
        ]
        named = {c.get("request_id") for c in mine}
        assert checked.query_id in named  # logged, as commitments
        reader.channel.close()


def test_erasure_covers_the_attribute_checks_about_the_resident(rf: RunningFederation) -> None:
    resident = rf.consenting[CITY][17].resident_id
    operator = Party(rf, f"{CITY}.operator")
    check = Query(
        "residents",
        ELIGIBILITY,
        (),
        filters=(Filter("age", FilterOp.AT_LEAST, ("0",)),),
        cities=(CITY,),
        kind=QueryKind.ATTRIBUTE_CHECK,
        subject=resident,
    )
    rf.operators[CITY].give_consents(
        [consent_record(f"{resident}-elig", resident, ELIGIBILITY, rf.fed.partner_id, "age")]
    )
    with rf.partner() as client:
        assert client.query(check).cells[0].values == {"match": 1}
    done = operator.consent.EraseResident(
        node_pb2.EraseResidentRequest(resident_id=resident), timeout=10
    )
    # Two consent records (mobility planning, eligibility), their two receipts, and the check's
    # query and result: every opening that names them.
    assert (done.records_erased, done.statements_erased) == (2, 4)
    operator.channel.close()
