"""Attribute checks (yes/no about one consenting resident) and pseudonymised record releases."""

from __future__ import annotations

import dataclasses

import pytest

from domain import agreement as agreement_doc
from domain.agreement import Agreement, Appearance, FieldTerms
from domain.query import Dimension, Filter, FilterOp, Query, QueryKind
from edge.operator_client import consent_record
from tests.conftest import RunningFederation

CITY = "borealis"
ELIGIBILITY = "eligibility-check"


def _agreement(
    rf: RunningFederation, agreement_id: str, kinds: set[str], age: FieldTerms
) -> Agreement:
    base = rf.fed.agreement(CITY)
    return dataclasses.replace(
        base,
        agreement_id=agreement_id,
        purposes=frozenset({ELIGIBILITY}),
        datasets={"residents": {"age": age, "district": FieldTerms(Appearance.RAW)}},
        query_kinds=frozenset(kinds),
    )


def _activate(rf: RunningFederation, a: Agreement) -> None:
    fed = rf.fed
    rf.operators[CITY].activate_agreement(
        agreement_doc.sign(a, fed.cities[CITY].signer, fed.partner_signer)
    )


def _consent(rf: RunningFederation, resident_id: str) -> None:
    record = consent_record(
        f"{resident_id}-elig", resident_id, ELIGIBILITY, rf.fed.partner_id, "age"
    )
    rf.operators[CITY].give_consents([record])


def _check(subject: str, at_least: int) -> Query:
    return Query(
        "residents",
        ELIGIBILITY,
        (),
        filters=(Filter("age", FilterOp.AT_LEAST, (str(at_least),)),),
        cities=(CITY,),
        kind=QueryKind.ATTRIBUTE_CHECK,
        subject=subject,
    )


@pytest.fixture
def checks(fresh_federation: RunningFederation) -> RunningFederation:
    _activate(
        fresh_federation,
        _agreement(
            fresh_federation, "transit-discount", {"attribute_check"}, FieldTerms(Appearance.RAW)
        ),
    )
    return fresh_federation


def test_an_attribute_check_answers_yes_or_no_for_a_consenting_resident(
    checks: RunningFederation,
) -> None:
    resident = checks.consenting[CITY][0]
    _consent(checks, resident.resident_id)
    with checks.partner() as client:
        older = client.query(_check(resident.resident_id, resident.age))
        younger = client.query(_check(resident.resident_id, resident.age + 1))
    assert older.cells[0].values == {"match": 1}
    assert younger.cells[0].values == {"match": 0}


def test_no_consent_no_answer(checks: RunningFederation) -> None:
    stranger = checks.consenting[CITY][1]  # consented to mobility planning, not to this
    with checks.partner() as client:
        answer = client.query(_check(stranger.resident_id, 18))
    assert (answer.cities[0].code, answer.cities[0].reason) == (
        "PERMISSION_DENIED",
        "CONSENT_MISSING",
    )


def test_a_kind_the_agreement_does_not_allow_is_refused(checks: RunningFederation) -> None:
    release = Query(
        "residents",
        ELIGIBILITY,
        (),
        group_by=(Dimension("district"),),
        cities=(CITY,),
        kind=QueryKind.RECORD_RELEASE,
    )
    with checks.partner() as client:
        answer = client.query(release)
    assert answer.cities[0].reason == "QUERY_KIND_NOT_IN_AGREEMENT"


def test_releases_are_pseudonymised_differently_per_agreement(
    fresh_federation: RunningFederation,
) -> None:
    rf = fresh_federation
    banded = FieldTerms(Appearance.GENERALISED, frozenset({"band10"}))
    for agreement_id in ("release-a", "release-b"):
        _activate(rf, _agreement(rf, agreement_id, {"record_release"}, banded))
    for r in rf.consenting[CITY][:12]:
        _consent(rf, r.resident_id)
    release = Query(
        "residents",
        ELIGIBILITY,
        (),
        group_by=(Dimension("age", "band10"), Dimension("district")),
        cities=(CITY,),
        kind=QueryKind.RECORD_RELEASE,
    )
    raw = dataclasses.replace(release, group_by=(Dimension("age"),))
    with rf.partner() as client:
        first = client.query(release)
        refused = client.query(raw)
        # Make release-b the covering agreement: revoke release-a.
        rf.operators[CITY].agreements.RevokeAgreement(
            __import__("citybroker.node.v1.node_pb2", fromlist=["x"]).RevokeAgreementRequest(
                agreement_id="release-a", reason="test"
            ),
            timeout=10,
        )
        second = client.query(release)
    assert refused.cities[0].reason == "GENERALISATION_NOT_IN_AGREEMENT"
    records_a = {r["pseudonym"]: r["fields"] for r in first.records}
    records_b = {r["pseudonym"]: r["fields"] for r in second.records}
    assert len(records_a) == len(records_b) == 12
    assert not set(records_a) & set(records_b)  # unlinkable across agreements
    ids = {r.resident_id for r in rf.consenting[CITY]}
    assert not set(records_a) & ids
    assert all(f["age"].endswith("9") and "-" in f["age"] for f in records_a.values())
