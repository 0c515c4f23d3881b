"""The node's AgreementService over real gRPC with mTLS: the lifecycle (propose, countersign,
activate, supersede, revoke, expire) and its effect on the very next query, ODRL export, and
cross-border transfer rules with the jurisdictions stated in results and receipts."""

from __future__ import annotations

import dataclasses
import json
import tomllib
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest

from citybroker.node.v1 import node_pb2
from cli import sandbox
from domain import agreement as doc
from domain import statements
from domain.agreement import Agreement
from domain.query import Measure, MeasureKind, Query
from edge.operator_client import consent_record
from edge.partner_client import Answer
from edge.status import remote_error
from edge.wire import envelope_from_pb, envelope_to_pb
from keys import dsse, timefmt
from keys.ed25519 import Signer
from tests.conftest import PURPOSE, RunningFederation, start_federation, stop_federation
from tests.integration.conftest import Wire

RESEARCH = "scientific-research"
CITIES = ["aurora", "borealis", "cascadia"]
JURISDICTIONS = {"aurora": "EU-FI", "borealis": "EU-SE", "cascadia": "EU-EE"}


def count(purpose: str = PURPOSE) -> Query:
    return Query("mobility", purpose, (Measure(MeasureKind.COUNT_RECORDS),))


@pytest.fixture(scope="module")
def rf(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningFederation]:
    """This module's federation: each test uses agreements of its own (own ids or cities)."""
    running = start_federation(tmp_path_factory.mktemp("agreements"), residents_per_city=30)
    # The research agreements below need residents who consented to research too.
    for city, people in running.consenting.items():
        running.operators[city].give_consents(
            [
                consent_record(
                    f"{r.resident_id}-research",
                    r.resident_id,
                    RESEARCH,
                    running.fed.partner_id,
                    "mobility",
                )
                for r in people
            ]
        )
    yield running
    stop_federation(running)


def ops(rf: RunningFederation, city: str) -> Any:
    return rf.operators[city].agreements


def research_terms(rf: RunningFederation, city: str, version: int = 1, **changes: Any) -> Agreement:
    a = dataclasses.replace(
        rf.fed.agreement(city, version=version, purposes=(RESEARCH,)),
        agreement_id=f"{city}--research",
    )
    return dataclasses.replace(a, **changes)


def ask(rf: RunningFederation, query: Query) -> Answer:
    with rf.partner() as client:
        return client.query(query)


def outcome(answer: Answer, city: str) -> tuple[str, str, str]:
    [c] = [c for c in answer.cities if c.city == city]
    return c.status, c.code, c.reason


def rpc_error(call: Any, request: Any) -> tuple[str, str]:
    with pytest.raises(grpc.RpcError) as info:
        call(request, timeout=10)
    e = remote_error(info.value)
    assert e.message and "Traceback" not in e.message
    return e.code, e.reason


def status_of(rf: RunningFederation, city: str, agreement_id: str) -> str:
    response = ops(rf, city).GetAgreement(
        node_pb2.GetAgreementRequest(agreement_id=agreement_id), timeout=10
    )
    return str(response.status)


def listed(rf: RunningFederation, city: str) -> dict[tuple[str, int], str]:
    out, token = {}, ""
    while True:
        page = ops(rf, city).ListAgreements(
            node_pb2.ListAgreementsRequest(page_size=1, page_token=token), timeout=10
        )
        for item in page.agreements:
            a = doc.unverified_terms(envelope_from_pb(item.agreement))
            out[(a.agreement_id, a.version)] = item.status
        token = page.next_page_token
        if not token:
            return out


def propose(rf: RunningFederation, city: str, a: Agreement) -> dsse.Envelope:
    response = ops(rf, city).ProposeAgreement(
        node_pb2.ProposeAgreementRequest(terms_json=json.dumps(a.to_payload())), timeout=10
    )
    return envelope_from_pb(response.agreement)


def activate(rf: RunningFederation, city: str, envelope: dsse.Envelope) -> Any:
    return ops(rf, city).ActivateAgreement(
        node_pb2.ActivateAgreementRequest(agreement=envelope_to_pb(envelope)), timeout=10
    )


# ---- lifecycle -----------------------------------------------------------------------------------


def test_propose_countersign_activate_then_the_city_revokes(rf: RunningFederation) -> None:
    city = "aurora"
    a = research_terms(rf, city)
    assert outcome(ask(rf, count(RESEARCH)), city) == (
        "refused",
        "PERMISSION_DENIED",
        "PURPOSE_NOT_IN_AGREEMENT",
    )
    proposal = propose(rf, city, a)
    assert doc.verify_signed_by(proposal, rf.fed.bundle, city) == a
    assert listed(rf, city)[(a.agreement_id, 1)] == "proposed"
    # Nothing is in force until the partner countersigns.
    assert outcome(ask(rf, count(RESEARCH)), city)[0] == "refused"

    countersigned = proposal.countersigned(rf.fed.partner_signer)  # the partner, offline
    response = activate(rf, city, countersigned)
    assert (response.agreement_id, response.version) == (a.agreement_id, 1)
    assert listed(rf, city)[(a.agreement_id, 1)] == "active"
    assert outcome(ask(rf, count(RESEARCH)), city) == ("answered", "OK", "")
    assert outcome(ask(rf, count(RESEARCH)), "borealis")[0] == "refused"

    revoked = ops(rf, city).RevokeAgreement(
        node_pb2.RevokeAgreementRequest(agreement_id=a.agreement_id, reason="study over"),
        timeout=10,
    )
    statement = doc.verify_revocation(envelope_from_pb(revoked.revocation), a, rf.fed.bundle)
    assert (statement["revoked_by"], statement["reason"]) == (city, "study over")
    # The very next query is refused; the other agreement of the city still answers its purpose.
    assert outcome(ask(rf, count(RESEARCH)), city)[:2] == ("refused", "PERMISSION_DENIED")
    assert outcome(ask(rf, count()), city) == ("answered", "OK", "")
    assert status_of(rf, city, a.agreement_id) == "revoked"
    assert rpc_error(
        ops(rf, city).RevokeAgreement,
        node_pb2.RevokeAgreementRequest(agreement_id=a.agreement_id),
    ) == ("NOT_FOUND", "AGREEMENT_NOT_FOUND")


def test_countersigning_the_partners_proposal_then_the_partner_revokes(
    rf: RunningFederation,
) -> None:
    city = "borealis"
    a = research_terms(rf, city)
    proposal = doc.sign(a, rf.fed.partner_signer)  # the partner proposes
    response = ops(rf, city).CountersignAgreement(
        node_pb2.CountersignAgreementRequest(agreement=envelope_to_pb(proposal)), timeout=10
    )
    assert response.status == "active"
    assert doc.verify(envelope_from_pb(response.agreement), rf.fed.bundle) == a
    assert status_of(rf, city, a.agreement_id) == "active"
    assert outcome(ask(rf, count(RESEARCH)), city) == ("answered", "OK", "")

    def revoke(revocation: dsse.Envelope) -> Any:
        return ops(rf, city).RevokeAgreement(
            node_pb2.RevokeAgreementRequest(
                agreement_id=a.agreement_id, revocation=envelope_to_pb(revocation)
            ),
            timeout=10,
        )

    aurora = rf.fed.cities["aurora"].signer
    for forged in (
        doc.sign_revocation(a, "aurora", "not mine to end", aurora),  # a third party
        doc.sign_revocation(a, rf.fed.partner_id, "", aurora),  # in the partner's name
        doc.sign_revocation(a, rf.fed.partner_id, "", Signer.generate()),
    ):
        with pytest.raises(grpc.RpcError) as info:
            revoke(forged)
        assert remote_error(info.value).code == "PERMISSION_DENIED"
        assert outcome(ask(rf, count(RESEARCH)), city) == ("answered", "OK", "")
    revoke(doc.sign_revocation(a, rf.fed.partner_id, "done", rf.fed.partner_signer))
    assert outcome(ask(rf, count(RESEARCH)), city)[:2] == ("refused", "PERMISSION_DENIED")
    assert status_of(rf, city, a.agreement_id) == "revoked"


def test_signatures_and_terms_are_checked(rf: RunningFederation) -> None:
    city = "cascadia"
    stub = ops(rf, city)
    a = research_terms(rf, city)
    proposal = propose(rf, city, a)

    # The partner's signature over other bytes.
    payload = json.loads(proposal.payload)
    payload["min_cell_size"] = 2
    other = doc.sign(doc.Agreement.from_payload(payload), rf.fed.partner_signer)
    spliced = dataclasses.replace(proposal, signatures=(*proposal.signatures, *other.signatures))
    assert rpc_error(
        stub.ActivateAgreement, node_pb2.ActivateAgreementRequest(agreement=envelope_to_pb(spliced))
    ) == ("PERMISSION_DENIED", "AGREEMENT_SIGNATURE_INVALID")
    # A key the trust bundle does not list, countersigning or proposing.
    stranger = Signer.generate()
    assert rpc_error(
        stub.ActivateAgreement,
        node_pb2.ActivateAgreementRequest(
            agreement=envelope_to_pb(proposal.countersigned(stranger))
        ),
    ) == ("PERMISSION_DENIED", "AGREEMENT_SIGNATURE_INVALID")
    other_version = research_terms(rf, city, version=2)
    assert rpc_error(
        stub.CountersignAgreement,
        node_pb2.CountersignAgreementRequest(
            agreement=envelope_to_pb(doc.sign(other_version, stranger))
        ),
    ) == ("PERMISSION_DENIED", "AGREEMENT_SIGNATURE_INVALID")
    # Both parties signed, but not the terms this city proposed under that id and version.
    changed = dataclasses.replace(a, retention_days=3650)
    both = doc.sign(changed, rf.fed.cities[city].signer, rf.fed.partner_signer)
    assert rpc_error(
        stub.ActivateAgreement, node_pb2.ActivateAgreementRequest(agreement=envelope_to_pb(both))
    ) == ("FAILED_PRECONDITION", "AGREEMENT_TERMS_CHANGED")
    # Malformed terms.
    for terms_json in ("not json", "[]", json.dumps({"agreement_id": "x"})):
        assert rpc_error(
            stub.ProposeAgreement, node_pb2.ProposeAgreementRequest(terms_json=terms_json)
        ) == ("INVALID_ARGUMENT", "AGREEMENT_MALFORMED")
    assert listed(rf, city)[(a.agreement_id, 1)] == "proposed"
    assert (a.agreement_id, 2) not in listed(rf, city)
    assert outcome(ask(rf, count(RESEARCH)), city)[0] == "refused"


def test_a_newer_version_supersedes(rf: RunningFederation) -> None:
    city = "cascadia"
    agreement_id = f"{city}--{rf.fed.partner_id}"
    v2 = rf.fed.agreement(city, version=2, k=12)
    activate(rf, city, doc.sign(v2, rf.fed.cities[city].signer, rf.fed.partner_signer))
    statuses = listed(rf, city)
    assert (statuses[(agreement_id, 1)], statuses[(agreement_id, 2)]) == ("superseded", "active")
    got = ops(rf, city).GetAgreement(node_pb2.GetAgreementRequest(agreement_id=agreement_id))
    assert doc.verify(envelope_from_pb(got.agreement), rf.fed.bundle) == v2
    assert outcome(ask(rf, count()), city) == ("answered", "OK", "")
    assert rpc_error(
        ops(rf, city).ActivateAgreement,
        node_pb2.ActivateAgreementRequest(
            agreement=envelope_to_pb(
                doc.sign(rf.fed.agreement(city), rf.fed.cities[city].signer, rf.fed.partner_signer)
            )
        ),
    ) == ("ALREADY_EXISTS", "AGREEMENT_VERSION_EXISTS")


def test_an_agreement_past_its_window_shows_expired(rf: RunningFederation) -> None:
    city = "aurora"
    now = timefmt.now()
    old = research_terms(
        rf,
        city,
        agreement_id="aurora--last-winter",
        valid_from=now - timedelta(hours=6),  # the sandbox keys are valid from a day ago
        valid_until=now - timedelta(hours=1),
    )
    activate(rf, city, doc.sign(old, rf.fed.cities[city].signer, rf.fed.partner_signer))
    assert status_of(rf, city, "aurora--last-winter") == "expired"
    assert listed(rf, city)[("aurora--last-winter", 1)] == "expired"


def test_odrl_export(rf: RunningFederation) -> None:
    response = ops(rf, "aurora").ExportAgreementOdrl(
        node_pb2.ExportAgreementOdrlRequest(agreement_id=f"aurora--{rf.fed.partner_id}"),
        timeout=10,
    )
    policy = json.loads(response.odrl_json)
    assert "http://www.w3.org/ns/odrl.jsonld" in policy["@context"]
    assert policy["@type"] == "Agreement"
    assert policy["assigner"] == "urn:citybroker:party:aurora"
    assert policy["assignee"] == f"urn:citybroker:party:{rf.fed.partner_id}"
    terms = rf.fed.agreement("aurora")
    targets = [p["target"] for p in policy["permission"]]
    assert targets == [f"urn:citybroker:dataset:aurora:{ds}" for ds in sorted(terms.datasets)]
    for permission in policy["permission"]:
        constraints = {c["leftOperand"]: c for c in permission["constraint"]}
        assert {"purpose", "dateTime", "cb:minCellSize"} <= set(constraints)
        assert constraints["purpose"]["rightOperand"] == [PURPOSE]
        assert constraints["cb:minCellSize"]["rightOperand"] == terms.min_cell_size
    assert rpc_error(
        ops(rf, "aurora").ExportAgreementOdrl,
        node_pb2.ExportAgreementOdrlRequest(agreement_id="nope"),
    ) == ("NOT_FOUND", "AGREEMENT_NOT_FOUND")


def test_only_this_citys_operators_may_administer(rf: RunningFederation) -> None:
    from citybroker.node.v1 import node_pb2_grpc

    wire = Wire(rf)
    try:
        for identity in ("borealis.operator", rf.fed.broker_id):
            stub = node_pb2_grpc.AgreementServiceStub(
                wire.channel(rf.fed.cities["aurora"].address, identity)
            )
            assert rpc_error(stub.ListAgreements, node_pb2.ListAgreementsRequest()) == (
                "UNAUTHENTICATED",
                "PEER_NOT_ALLOWED",
            )
    finally:
        wire.close()


# ---- cross-border transfers ----------------------------------------------------------------------


def test_results_and_receipts_state_the_jurisdictions(wire: Wire) -> None:
    response = wire.query(count())
    seen = set()
    for c in response.cities:
        result = statements.verify_result(envelope_from_pb(c.signed_result), wire.fed.bundle)
        assert result["jurisdictions"] == {
            "provider": JURISDICTIONS[c.city_id],
            "recipient": "EU-DE",
        }
        seen.add(c.city_id)
    assert seen == set(CITIES)
    receipt = statements.verify_receipt(envelope_from_pb(response.receipt), wire.fed.bundle)
    assert {c["city"]: c["jurisdiction"] for c in receipt["cities"]} == JURISDICTIONS
    assert receipt["partner_jurisdiction"] == "EU-DE"


@pytest.fixture
def restricted(tmp_path: Path) -> Iterator[RunningFederation]:
    """A federation whose aurora node forbids transfers into the EU and whose borealis node
    allows them to Germany only under standard contractual clauses (modified node configs)."""
    rules = {
        "aurora": {"EU": "forbidden"},
        "borealis": {"EU-DE": "instrument:scc-2021", "EU": "allowed"},
    }
    real_create = sandbox.create

    def create(root: Path, *args: Any, **kwargs: Any) -> sandbox.LocalFederation:
        fed = real_create(root, *args, **kwargs)
        for city, table in rules.items():
            path = fed.cities[city].config
            config = tomllib.loads(path.read_text())
            config["transfers"] = table
            sandbox.write_toml(path, config)
        return fed

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sandbox, "create", create)
        running = start_federation(tmp_path / "federation", residents_per_city=30)
    try:
        yield running
    finally:
        stop_federation(running)


def test_transfer_rules_refuse_and_instruments_allow(restricted: RunningFederation) -> None:
    rf = restricted
    answer = ask(rf, count())
    assert outcome(answer, "aurora") == ("refused", "PERMISSION_DENIED", "TRANSFER_NOT_PERMITTED")
    assert outcome(answer, "borealis") == (
        "refused",
        "PERMISSION_DENIED",
        "TRANSFER_NOT_PERMITTED",
    )
    assert outcome(answer, "cascadia") == ("answered", "OK", "")
    messages = {c.city: c.message for c in answer.cities}
    assert "EU-DE" in messages["aurora"] and "forbidden" in messages["aurora"]
    assert "scc-2021" in messages["borealis"]
    # An agreement naming the instrument the rule asks for lets borealis answer; aurora's rule
    # forbids whatever the agreement says.
    for city in ("aurora", "borealis"):
        v2 = dataclasses.replace(
            rf.fed.agreement(city, version=2), legal_instruments=frozenset({"scc-2021"})
        )
        activate(rf, city, doc.sign(v2, rf.fed.cities[city].signer, rf.fed.partner_signer))
    answer = ask(rf, count())
    assert outcome(answer, "borealis") == ("answered", "OK", "")
    assert outcome(answer, "aurora")[2] == "TRANSFER_NOT_PERMITTED"
    # Another instrument does not do.
    v3 = dataclasses.replace(
        rf.fed.agreement("borealis", version=3), legal_instruments=frozenset({"bcr"})
    )
    activate(rf, "borealis", doc.sign(v3, rf.fed.cities["borealis"].signer, rf.fed.partner_signer))
    assert outcome(ask(rf, count()), "borealis")[2] == "TRANSFER_NOT_PERMITTED"
