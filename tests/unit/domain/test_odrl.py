"""Agreements as W3C ODRL 2.2 policies (domain.odrl.to_odrl)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from domain.agreement import Agreement, Appearance, FieldTerms
from domain.odrl import to_odrl

ODRL_CONTEXT = "http://www.w3.org/ns/odrl.jsonld"
STARTS = datetime(2026, 1, 1, tzinfo=UTC)
ENDS = datetime(2027, 1, 1, tzinfo=UTC)


def agreement(**changes: Any) -> Agreement:
    fields: dict[str, Any] = {
        "agreement_id": "aurora--northwind-mobility",
        "version": 3,
        "provider": "aurora",
        "consumer": "northwind-mobility",
        "purposes": frozenset({"urban-mobility-planning", "scientific-research"}),
        "datasets": {
            "mobility": {
                "district": FieldTerms(Appearance.RAW),
                "trip_date": FieldTerms(Appearance.GENERALISED, frozenset({"year", "month"})),
                "distance_km": FieldTerms(Appearance.AGGREGATE_ONLY),
            },
            "energy": {"kwh": FieldTerms(Appearance.AGGREGATE_ONLY)},
        },
        "min_cell_size": 12,
        "valid_from": STARTS,
        "valid_until": ENDS,
        "retention_days": 90,
    }
    fields.update(changes)
    return Agreement(**fields)


def constraint(permission: dict[str, Any], operand: str) -> list[dict[str, Any]]:
    return [c for c in permission["constraint"] if c["leftOperand"] == operand]


def test_policy_header() -> None:
    policy = to_odrl(agreement())
    context = policy["@context"]
    assert ODRL_CONTEXT in (context if isinstance(context, list) else [context])
    assert policy["@type"] == "Agreement"
    assert policy["uid"] == "urn:citybroker:agreement:aurora--northwind-mobility:v3"
    assert policy["assigner"] == "urn:citybroker:party:aurora"
    assert policy["assignee"] == "urn:citybroker:party:northwind-mobility"
    # Every prefix used in the policy is declared in the context.
    declared = {k for c in context if isinstance(c, dict) for k in c}
    text = json.dumps(policy)
    assert "cb" in declared and "xsd" in declared
    assert '"cb:' in text and '"xsd:' in text
    json.loads(text)  # plain JSON, serialisable as is


def test_one_permission_per_dataset_with_its_constraints() -> None:
    policy = to_odrl(agreement())
    permissions = policy["permission"]
    assert [p["target"] for p in permissions] == [
        "urn:citybroker:dataset:aurora:energy",
        "urn:citybroker:dataset:aurora:mobility",
    ]
    for p in permissions:
        assert p["assigner"] == policy["assigner"] and p["assignee"] == policy["assignee"]
        assert p["action"]["rdf:value"] == {"@id": "odrl:use"}
        [purpose] = constraint(p, "purpose")
        assert purpose["operator"] == "isAnyOf"
        assert purpose["rightOperand"] == ["scientific-research", "urban-mobility-planning"]
        [k] = constraint(p, "cb:minCellSize")
        assert (k["operator"], k["rightOperand"]) == ("gteq", 12)
        window = {c["operator"]: c["rightOperand"] for c in constraint(p, "dateTime")}
        assert window == {
            "gteq": {"@value": "2026-01-01T00:00:00Z", "@type": "xsd:dateTime"},
            "lt": {"@value": "2027-01-01T00:00:00Z", "@type": "xsd:dateTime"},
        }
        [duty] = p["duty"]
        assert duty["action"] == "delete"
        [elapsed] = duty["constraint"]
        assert elapsed["leftOperand"] == "elapsedTime"
        assert elapsed["rightOperand"] == {"@value": "P90D", "@type": "xsd:duration"}


def test_fields_and_how_they_may_appear() -> None:
    mobility = to_odrl(agreement())["permission"][1]
    [refinement] = mobility["action"]["refinement"]
    fields = {r["rightOperand"]: r for r in refinement["or"]}
    assert sorted(fields) == ["distance_km", "district", "trip_date"]
    assert all(r["leftOperand"] == "cb:field" and r["operator"] == "eq" for r in fields.values())
    assert fields["district"]["cb:appearance"] == "raw"
    assert fields["distance_km"]["cb:appearance"] == "aggregate_only"
    assert fields["trip_date"]["cb:appearance"] == "generalised"
    assert fields["trip_date"]["cb:generalisations"] == ["month", "year"]
    assert "cb:generalisations" not in fields["district"]


def test_legal_instruments_only_when_named() -> None:
    assert "cb:legalInstruments" not in to_odrl(agreement())
    policy = to_odrl(agreement(legal_instruments=frozenset({"scc-2021", "bcr"})))
    assert policy["cb:legalInstruments"] == ["bcr", "scc-2021"]


def test_the_export_is_deterministic_and_follows_the_terms() -> None:
    a = agreement()
    assert json.dumps(to_odrl(a), sort_keys=True) == json.dumps(to_odrl(a), sort_keys=True)
    other = to_odrl(agreement(min_cell_size=20, version=4, retention_days=0))
    assert other["uid"].endswith(":v4")
    assert constraint(other["permission"][0], "cb:minCellSize")[0]["rightOperand"] == 20
    elapsed = other["permission"][0]["duty"][0]["constraint"][0]["rightOperand"]
    assert elapsed["@value"] == "P0D"
