"""Agreements as W3C ODRL 2.2 policies (JSON-LD), so that dataspace connectors can read them.

The mapping: an ODRL Agreement from the providing city (assigner) to the consumer (assignee), one
permission per dataset whose action is `use` refined to the allowed fields, constrained by purpose,
the validity window and the minimum cell size, with a duty to delete after the retention period.
Terms ODRL has no word for live in the citybroker profile namespace (`cb:`).
"""

from __future__ import annotations

from typing import Any

from domain.agreement import Agreement, Appearance, FieldTerms
from keys import timefmt

PROFILE = "urn:citybroker:odrl-profile:v1"
CONTEXT: list[Any] = [
    "http://www.w3.org/ns/odrl.jsonld",
    {"cb": PROFILE + ":", "xsd": "http://www.w3.org/2001/XMLSchema#"},
]


def _party(party_id: str) -> str:
    return f"urn:citybroker:party:{party_id}"


def _dt(value: str) -> dict[str, str]:
    return {"@value": value, "@type": "xsd:dateTime"}


def _window(a: Agreement) -> list[dict[str, Any]]:
    """The validity window as two ODRL dateTime constraints: from `valid_from`, before `valid_until`."""
    return [
        {
            "leftOperand": "dateTime",
            "operator": "gteq",
            "rightOperand": _dt(timefmt.fmt(a.valid_from)),
        },
        {
            "leftOperand": "dateTime",
            "operator": "lt",
            "rightOperand": _dt(timefmt.fmt(a.valid_until)),
        },
    ]


def _field_refinements(fields: dict[str, FieldTerms]) -> list[dict[str, Any]]:
    """One `cb:field` refinement per allowed field, sorted by name, with its appearance."""
    return [
        {
            "leftOperand": "cb:field",
            "operator": "eq",
            "rightOperand": name,
            "cb:appearance": terms.appearance.value,
            **(
                {"cb:generalisations": sorted(terms.generalisations)}
                if terms.appearance is Appearance.GENERALISED
                else {}
            ),
        }
        for name, terms in sorted(fields.items())
    ]


def _deletion_duty(retention_days: int) -> dict[str, Any]:
    """The duty to delete the data within `retention_days` days."""
    return {
        "action": "delete",
        "constraint": [
            {
                "leftOperand": "elapsedTime",
                "operator": "lteq",
                "rightOperand": {"@value": f"P{retention_days}D", "@type": "xsd:duration"},
            }
        ],
    }


def _permission(a: Agreement, dataset: str, fields: dict[str, FieldTerms]) -> dict[str, Any]:
    """The permission to `use` one dataset's allowed fields under the agreement's constraints."""
    return {
        "target": f"urn:citybroker:dataset:{a.provider}:{dataset}",
        "assigner": _party(a.provider),
        "assignee": _party(a.consumer),
        "action": {
            "rdf:value": {"@id": "odrl:use"},
            "refinement": [{"or": _field_refinements(fields)}],
        },
        "constraint": [
            {
                "leftOperand": "purpose",
                "operator": "isAnyOf",
                "rightOperand": sorted(a.purposes),
            },
            {
                "leftOperand": "cb:minCellSize",
                "operator": "gteq",
                "rightOperand": a.min_cell_size,
            },
            *_window(a),
        ],
        "duty": [_deletion_duty(a.retention_days)],
    }


def to_odrl(a: Agreement) -> dict[str, Any]:
    """The agreement as an ODRL 2.2 Agreement policy (JSON-LD), one `use` permission per dataset."""
    policy: dict[str, Any] = {
        "@context": CONTEXT,
        "@type": "Agreement",
        "uid": f"urn:citybroker:agreement:{a.agreement_id}:v{a.version}",
        "profile": PROFILE,
        "assigner": _party(a.provider),
        "assignee": _party(a.consumer),
        "permission": [
            _permission(a, dataset, fields) for dataset, fields in sorted(a.datasets.items())
        ],
    }
    if a.legal_instruments:
        policy["cb:legalInstruments"] = sorted(a.legal_instruments)
    return policy
