"""Agreements: payload round trip and the check that both parties signed the same bytes."""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from typing import Any

import pytest

from domain import agreement as doc
from domain.agreement import Agreement, Appearance, DpTerms, FieldTerms
from domain.errors import VerificationError
from keys import dsse, timefmt
from keys.ed25519 import Signer
from keys.trust import KeyGrant, Party, Role, TrustBundle

NOW = timefmt.now()
KEYS = {name: Signer.generate() for name in ("aurora", "borealis", "northwind", "broker-1")}
ROLES = {
    "aurora": Role.CITY,
    "borealis": Role.CITY,
    "northwind": Role.PARTNER,
    "broker-1": Role.BROKER,
}


def bundle() -> TrustBundle:
    window = (NOW - timedelta(days=1), NOW + timedelta(days=400))
    return TrustBundle(
        "f",
        1,
        NOW,
        {
            name: Party(name, ROLES[name], name, "EU", keys=(KeyGrant(s.public, *window),))
            for name, s in KEYS.items()
        },
    )


def agreement(**changes: Any) -> Agreement:
    a = Agreement(
        agreement_id="aurora--northwind",
        version=1,
        provider="aurora",
        consumer="northwind",
        purposes=frozenset({"urban-mobility-planning", "scientific-research"}),
        datasets={
            "mobility": {
                "mode": FieldTerms(Appearance.RAW),
                "trip_date": FieldTerms(Appearance.GENERALISED, frozenset({"month", "year"})),
                "distance_km": FieldTerms(Appearance.AGGREGATE_ONLY),
            }
        },
        min_cell_size=7,
        valid_from=NOW,
        valid_until=NOW + timedelta(days=30),
        retention_days=90,
    )
    return dataclasses.replace(a, **changes)


def reason(envelope: dsse.Envelope) -> str:
    with pytest.raises(VerificationError) as e:
        doc.verify(envelope, bundle())
    return e.value.reason


def test_payload_round_trip() -> None:
    a = agreement()
    assert Agreement.from_payload(a.to_payload()) == a


def test_in_force_window_is_half_open() -> None:
    a = agreement()
    assert a.in_force(a.valid_from)
    assert a.in_force(a.valid_until - timedelta(seconds=1))
    assert not a.in_force(a.valid_until)
    assert not a.in_force(a.valid_from - timedelta(seconds=1))


@pytest.mark.parametrize(
    ("changes", "why"),
    [
        ({"valid_until": NOW}, "AGREEMENT_DATES_INVALID"),
        ({"valid_until": NOW - timedelta(days=1)}, "AGREEMENT_DATES_INVALID"),
        ({"min_cell_size": 0}, "AGREEMENT_MALFORMED"),
    ],
)
def test_from_payload_rejects_bad_terms(changes: dict[str, Any], why: str) -> None:
    with pytest.raises(VerificationError) as e:
        Agreement.from_payload(agreement(**changes).to_payload())
    assert e.value.reason == why


def test_from_payload_rejects_an_unknown_appearance() -> None:
    payload = agreement().to_payload()
    payload["datasets"]["mobility"]["mode"]["appearance"] = "anything"
    with pytest.raises(VerificationError) as e:
        Agreement.from_payload(payload)
    assert e.value.reason == "AGREEMENT_MALFORMED"


def test_signed_by_provider_and_consumer_verifies() -> None:
    a = agreement()
    assert doc.verify(doc.sign(a, KEYS["aurora"], KEYS["northwind"]), bundle()) == a


def test_consumer_may_be_another_city() -> None:
    a = agreement(consumer="borealis")
    assert doc.verify(doc.sign(a, KEYS["borealis"], KEYS["aurora"]), bundle()) == a


@pytest.mark.parametrize("signer", ["aurora", "northwind"])
def test_one_signature_is_not_enough(signer: str) -> None:
    missing = "northwind" if signer == "aurora" else "aurora"
    with pytest.raises(VerificationError) as e:
        doc.verify(doc.sign(agreement(), KEYS[signer]), bundle())
    assert e.value.reason == "AGREEMENT_SIGNATURE_INVALID"
    assert e.value.metadata == {"party": missing}


def test_a_third_partys_signature_does_not_stand_in() -> None:
    env = doc.sign(agreement(), KEYS["aurora"], KEYS["borealis"], KEYS["broker-1"])
    assert reason(env) == "AGREEMENT_SIGNATURE_INVALID"


def test_unknown_consumer() -> None:
    stranger = Signer.generate()
    env = doc.sign(agreement(consumer="mallory"), KEYS["aurora"], stranger)
    assert reason(env) == "AGREEMENT_PARTY_UNKNOWN"


def test_provider_must_be_a_city() -> None:
    env = doc.sign(
        agreement(provider="northwind", consumer="aurora"), KEYS["northwind"], KEYS["aurora"]
    )
    assert reason(env) == "AGREEMENT_PARTY_UNKNOWN"


def test_countersignature_over_different_bytes_is_rejected() -> None:
    proposed = doc.sign(agreement(min_cell_size=20), KEYS["aurora"])
    # The consumer signs a laxer version; pasting its signature onto the city's bytes must fail.
    laxer = doc.sign(agreement(min_cell_size=2), KEYS["northwind"])
    pasted = dsse.Envelope(
        proposed.payload_type, proposed.payload, proposed.signatures + laxer.signatures
    )
    assert reason(pasted) == "AGREEMENT_SIGNATURE_INVALID"
    pasted_other_way = dsse.Envelope(
        laxer.payload_type, laxer.payload, laxer.signatures + proposed.signatures
    )
    assert reason(pasted_other_way) == "AGREEMENT_SIGNATURE_INVALID"


def test_countersigned_proposal_verifies() -> None:
    proposed = doc.sign(agreement(), KEYS["aurora"])
    assert doc.verify(proposed.countersigned(KEYS["northwind"]), bundle()) == agreement()


def test_wrong_payload_type() -> None:
    env = dsse.sign("result", agreement().to_payload(), KEYS["aurora"], KEYS["northwind"])
    assert reason(env) == "PAYLOAD_TYPE_MISMATCH"


def test_key_not_valid_when_the_agreement_starts() -> None:
    late = agreement(valid_from=NOW - timedelta(days=5))  # before the keys' window opens
    assert (
        reason(doc.sign(late, KEYS["aurora"], KEYS["northwind"])) == "AGREEMENT_SIGNATURE_INVALID"
    )


def test_malformed_payload() -> None:
    env = dsse.sign(doc.THING, {"provider": "aurora"}, KEYS["aurora"])
    assert reason(env) == "AGREEMENT_MALFORMED"


def test_dp_terms_carry_their_contribution_bound() -> None:
    a = agreement(dp=DpTerms(0.5, 2.0, {"distance_km": (0.0, 30.0)}, records_per_resident=4))
    payload = a.to_payload()
    assert payload["dp"]["records_per_resident"] == 4
    assert Agreement.from_payload(payload) == a
    del payload["dp"]["records_per_resident"]  # terms written before the bound existed
    assert Agreement.from_payload(payload).dp == DpTerms(0.5, 2.0, {"distance_km": (0.0, 30.0)})


@pytest.mark.parametrize("bound", [0, -1, 1001, 2.5, True, "3"])
def test_dp_terms_refuse_a_bad_contribution_bound(bound: object) -> None:
    payload = agreement(dp=DpTerms(0.5, 2.0, {})).to_payload()
    payload["dp"]["records_per_resident"] = bound
    with pytest.raises(VerificationError) as e:
        Agreement.from_payload(payload)
    assert e.value.reason == "AGREEMENT_MALFORMED"
