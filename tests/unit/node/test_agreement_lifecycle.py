"""The agreement lifecycle in the node's register: propose -> countersign -> active -> superseded |
revoked | expired, and every signature check on the way."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from audit.log import MerkleLog
from cli import sandbox
from domain import agreement as doc
from domain.agreement import Agreement
from domain.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    StoreError,
    VerificationError,
)
from infra import storage
from keys import dsse, timefmt
from keys.ed25519 import Signer
from keys.trust import TrustStore
from node.agreements import ACTIVE, EXPIRED, PROPOSED, REVOKED, SUPERSEDED, AgreementRegister

CITY = "aurora"


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> sandbox.LocalFederation:
    return sandbox.create(tmp_path_factory.mktemp("fed"))


@pytest.fixture
def register(fed: sandbox.LocalFederation, tmp_path: Path) -> AgreementRegister:
    engine = storage.create_engine(f"sqlite:///{tmp_path / 'node.db'}")
    storage.upgrade(engine)
    store = TrustStore(fed.authority.public, [fed.bundle])
    return AgreementRegister(engine, CITY, store, fed.cities[CITY].signer)


def terms(fed: sandbox.LocalFederation, version: int = 1, **changes: object) -> Agreement:
    a = dataclasses.replace(
        fed.agreement(CITY, version=version, purposes=("scientific-research",)),
        agreement_id="aurora--research",
    )
    return dataclasses.replace(a, **changes)  # type: ignore[arg-type]


def statuses(register: AgreementRegister) -> dict[tuple[str, int], str]:
    items, _ = register.page(100, "")
    now = timefmt.now()
    return {(s.verified.agreement_id, s.verified.version): s.status_at(now) for s in items}


def in_force(register: AgreementRegister, fed: sandbox.LocalFederation) -> list[tuple[str, int]]:
    return [
        (s.verified.agreement_id, s.verified.version)
        for s in register.in_force_for(fed.partner_id, timefmt.now())
    ]


def signed_by_other_bytes(envelope: dsse.Envelope, signer: Signer) -> dsse.Envelope:
    """`envelope` plus `signer`'s signature over a different payload (its retention changed)."""
    payload = json.loads(envelope.payload)
    payload["retention_days"] += 1
    other = dsse.sign(doc.THING, payload, signer)
    return dataclasses.replace(envelope, signatures=(*envelope.signatures, *other.signatures))


# ---- proposing and activating --------------------------------------------------------------------


def test_propose_countersign_offline_then_activate(
    fed: sandbox.LocalFederation, register: AgreementRegister
) -> None:
    a = terms(fed)
    proposal = register.propose(a)
    assert doc.verify_signed_by(proposal, fed.bundle, CITY) == a
    with pytest.raises(VerificationError):  # only the city signed so far
        doc.verify(proposal, fed.bundle)
    assert statuses(register) == {("aurora--research", 1): PROPOSED}
    assert in_force(register, fed) == []

    countersigned = proposal.countersigned(fed.partner_signer)  # the partner, offline
    assert register.activate(countersigned) == a
    assert statuses(register) == {("aurora--research", 1): ACTIVE}
    assert in_force(register, fed) == [("aurora--research", 1)]
    stored = register.get("aurora--research")
    assert stored.envelope == countersigned
    assert doc.verify(stored.envelope, fed.bundle) == a


def test_countersigning_the_consumers_proposal_activates_it(
    fed: sandbox.LocalFederation, register: AgreementRegister
) -> None:
    a = terms(fed)
    proposal = doc.sign(a, fed.partner_signer)  # the partner proposes
    envelope, activated = register.countersign(proposal)
    assert activated == a
    assert len(envelope.signatures) == 2
    assert doc.verify(envelope, fed.bundle) == a
    assert statuses(register) == {("aurora--research", 1): ACTIVE}
    assert in_force(register, fed) == [("aurora--research", 1)]


def test_a_countersignature_over_other_bytes_is_refused(
    fed: sandbox.LocalFederation, register: AgreementRegister
) -> None:
    proposal = register.propose(terms(fed))
    with pytest.raises(VerificationError) as e:
        register.activate(signed_by_other_bytes(proposal, fed.partner_signer))
    assert e.value.reason == "AGREEMENT_SIGNATURE_INVALID"
    assert e.value.metadata == {"party": fed.partner_id}
    # The partner's proposal with its signature over other bytes is refused before the city signs.
    bare = doc.sign(terms(fed, version=2))
    with pytest.raises(VerificationError) as e:
        register.countersign(signed_by_other_bytes(bare, fed.partner_signer))
    assert e.value.reason == "AGREEMENT_SIGNATURE_INVALID"
    assert statuses(register) == {("aurora--research", 1): PROPOSED}
    assert in_force(register, fed) == []


def test_a_key_outside_the_trust_bundle_is_refused(
    fed: sandbox.LocalFederation, register: AgreementRegister
) -> None:
    stranger = Signer.generate()
    a = terms(fed)
    with pytest.raises(VerificationError) as e:
        register.countersign(doc.sign(a, stranger))
    assert e.value.reason == "AGREEMENT_SIGNATURE_INVALID"
    with pytest.raises(VerificationError) as e:
        register.activate(doc.sign(a, fed.cities[CITY].signer, stranger))
    assert e.value.reason == "AGREEMENT_SIGNATURE_INVALID"
    # Another city's key is in the bundle, but not the partner's key.
    with pytest.raises(VerificationError) as e:
        register.activate(doc.sign(a, fed.cities[CITY].signer, fed.cities["borealis"].signer))
    assert e.value.reason == "AGREEMENT_SIGNATURE_INVALID"
    # A consumer the bundle does not know at all.
    with pytest.raises(VerificationError) as e:
        register.countersign(doc.sign(dataclasses.replace(a, consumer="ghost"), stranger))
    assert e.value.reason == "AGREEMENT_PARTY_UNKNOWN"
    assert statuses(register) == {}


def test_activating_terms_other_than_this_citys_proposal(
    fed: sandbox.LocalFederation, register: AgreementRegister
) -> None:
    proposed = terms(fed)
    register.propose(proposed)
    changed = dataclasses.replace(proposed, min_cell_size=2)  # same id and version, other terms
    with pytest.raises(FailedPrecondition) as e:
        register.activate(doc.sign(changed, fed.cities[CITY].signer, fed.partner_signer))
    assert e.value.reason == "AGREEMENT_TERMS_CHANGED"
    assert statuses(register) == {("aurora--research", 1): PROPOSED}
    assert register.get("aurora--research").verified == proposed
    assert in_force(register, fed) == []


def test_proposals_are_checked(fed: sandbox.LocalFederation, register: AgreementRegister) -> None:
    with pytest.raises(InvalidArgument) as e:
        register.propose(terms(fed, purposes=frozenset({"fortune-telling"})))
    assert e.value.reason == "PURPOSE_UNKNOWN"
    with pytest.raises(PermissionDenied) as p:
        register.propose(terms(fed, provider="borealis"))
    assert p.value.reason == "AGREEMENT_NOT_FOR_THIS_CITY"
    register.propose(terms(fed))
    with pytest.raises(AlreadyExists) as a:
        register.propose(terms(fed))
    assert a.value.reason == "AGREEMENT_VERSION_EXISTS"
    # As the consumer of another city's data, the proposal goes to that city; nothing is kept.
    asking = terms(fed, provider="borealis", consumer=CITY, agreement_id="borealis--aurora")
    envelope = register.propose(asking)
    assert doc.verify_signed_by(envelope, fed.bundle, CITY) == asking
    assert set(statuses(register)) == {("aurora--research", 1)}


# ---- ends ----------------------------------------------------------------------------------------


def test_a_newer_version_supersedes(
    fed: sandbox.LocalFederation, register: AgreementRegister
) -> None:
    register.activate(doc.sign(terms(fed, 1), fed.cities[CITY].signer, fed.partner_signer))
    proposal = register.propose(terms(fed, 2, min_cell_size=20))
    assert statuses(register) == {
        ("aurora--research", 1): ACTIVE,
        ("aurora--research", 2): PROPOSED,
    }
    assert in_force(register, fed) == [("aurora--research", 1)]  # a proposal changes nothing yet
    register.activate(proposal.countersigned(fed.partner_signer))
    assert statuses(register) == {
        ("aurora--research", 1): SUPERSEDED,
        ("aurora--research", 2): ACTIVE,
    }
    assert in_force(register, fed) == [("aurora--research", 2)]
    assert register.get("aurora--research").verified.min_cell_size == 20
    with pytest.raises(AlreadyExists):
        register.activate(doc.sign(terms(fed, 1), fed.cities[CITY].signer, fed.partner_signer))


def test_the_city_revokes(fed: sandbox.LocalFederation, register: AgreementRegister) -> None:
    a = terms(fed)
    register.activate(doc.sign(a, fed.cities[CITY].signer, fed.partner_signer))
    assert in_force(register, fed) == [("aurora--research", 1)]  # cached now
    revocation = register.revoke("aurora--research", "project ended")
    assert in_force(register, fed) == []  # the very next read
    assert statuses(register) == {("aurora--research", 1): REVOKED}
    statement = doc.verify_revocation(revocation, a, fed.bundle)
    assert (statement["revoked_by"], statement["reason"]) == (CITY, "project ended")
    with pytest.raises(NotFound) as e:
        register.revoke("aurora--research", "again")
    assert e.value.reason == "AGREEMENT_NOT_FOUND"


def test_the_consumer_revokes_with_a_signed_statement(
    fed: sandbox.LocalFederation, register: AgreementRegister
) -> None:
    a = terms(fed)
    register.activate(doc.sign(a, fed.cities[CITY].signer, fed.partner_signer))
    borealis = fed.cities["borealis"].signer
    refused = {
        "third party names itself": doc.sign_revocation(a, "borealis", "", borealis),
        "third party signs for the partner": doc.sign_revocation(a, fed.partner_id, "", borealis),
        "stranger signs for the partner": doc.sign_revocation(
            a, fed.partner_id, "", Signer.generate()
        ),
        "another agreement": doc.sign_revocation(
            dataclasses.replace(a, agreement_id="aurora--other"),
            fed.partner_id,
            "",
            fed.partner_signer,
        ),
        "another version": doc.sign_revocation(
            dataclasses.replace(a, version=2), fed.partner_id, "", fed.partner_signer
        ),
        "not a revocation": doc.sign(a, fed.partner_signer),
    }
    for name, revocation in refused.items():
        with pytest.raises(VerificationError):
            register.revoke("aurora--research", "", revocation)
        assert in_force(register, fed) == [("aurora--research", 1)], name
    revocation = doc.sign_revocation(a, fed.partner_id, "no longer needed", fed.partner_signer)
    assert register.revoke("aurora--research", "ignored", revocation) == revocation
    assert in_force(register, fed) == []
    assert statuses(register) == {("aurora--research", 1): REVOKED}


def test_an_agreement_past_its_window_is_expired(
    fed: sandbox.LocalFederation, register: AgreementRegister
) -> None:
    now = timefmt.now()
    # Inside the keys' validity (the sandbox grants them from a day ago), but already over.
    old = terms(fed, valid_from=now - timedelta(hours=12), valid_until=now - timedelta(hours=1))
    register.activate(doc.sign(old, fed.cities[CITY].signer, fed.partner_signer))
    stored = register.get("aurora--research")
    assert stored.status == ACTIVE
    assert stored.status_at(now) == EXPIRED
    assert stored.status_at(now - timedelta(hours=2)) == ACTIVE
    assert statuses(register) == {("aurora--research", 1): EXPIRED}
    assert in_force(register, fed) == []


# ---- evidence --------------------------------------------------------------------------------


@pytest.fixture
def logged(fed: sandbox.LocalFederation, tmp_path: Path) -> Iterator[AgreementRegister]:
    """A register whose changes commit with their entry in a Merkle log on the same database."""
    engine = storage.create_engine(f"sqlite:///{tmp_path / 'node.db'}")
    storage.upgrade(engine)
    store = TrustStore(fed.authority.public, [fed.bundle])
    with MerkleLog(engine, "citybroker/node/aurora", fed.cities[CITY].signer) as log:
        yield AgreementRegister(engine, CITY, store, fed.cities[CITY].signer, log)


def test_activation_and_revocation_commit_with_their_log_entries(
    fed: sandbox.LocalFederation, logged: AgreementRegister
) -> None:
    log = logged._log  # noqa: SLF001 - the log the register writes to
    assert log is not None
    signed = doc.sign(terms(fed), fed.cities[CITY].signer, fed.partner_signer)
    logged.activate(signed)
    revocation = logged.revoke("aurora--research", "ended")
    assert log.entries(0, log.size()) == [signed.to_json(), revocation.to_json()]
    # A refused change logs nothing.
    changed = doc.sign(terms(fed, version=2, retention_days=1), fed.cities[CITY].signer)
    logged.propose(terms(fed, version=2))
    with pytest.raises(FailedPrecondition):
        logged.activate(changed.countersigned(fed.partner_signer))
    assert log.size() == 2


def test_no_agreement_is_in_force_without_its_log_entry(
    fed: sandbox.LocalFederation, logged: AgreementRegister
) -> None:
    log = logged._log  # noqa: SLF001
    assert log is not None
    log.close()
    with pytest.raises(StoreError):
        logged.activate(doc.sign(terms(fed), fed.cities[CITY].signer, fed.partner_signer))
    assert in_force(logged, fed) == []
    assert statuses(logged) == {}
