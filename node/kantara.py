"""Consent receipts in the Kantara Initiative Consent Receipt Specification v1.1 JSON form, for
residents and tools that read that format. The signed DSSE receipt remains the evidence; this is a
view of it."""

from __future__ import annotations

import json
from typing import Any

from keys import dsse, timefmt
from node import taxonomy

VERSION = "KI-CR-v1.1.0"
SENSITIVE_CATEGORIES = frozenset({"health"})


def from_signed_receipt(receipt: bytes, controller_name: str) -> dict[str, Any]:
    """Map one of our signed consent receipts (trusted: the node's own) to Kantara CR v1.1."""
    payload = json.loads(dsse.Envelope.from_json(receipt).payload)
    categories = list(payload["data_categories"])
    third_parties = list(payload["recipients"])
    purposes = [
        {
            "purpose": taxonomy.PURPOSES.get(p, p),
            "purposeCategory": [p],
            "consentType": "EXPLICIT"
            if payload["lawful_basis"] == "explicit-consent"
            else "EXPRESSED",
            "piiCategory": categories,
            "primaryPurpose": i == 0,
            "termination": payload["valid_until"] or "until withdrawn",
            "thirdPartyDisclosure": bool(third_parties),
            "thirdPartyName": ", ".join(third_parties),
        }
        for i, p in enumerate(payload["purposes"])
    ]
    sensitive = sorted(SENSITIVE_CATEGORIES.intersection(categories))
    return {
        "version": VERSION,
        "jurisdiction": payload["jurisdiction"],
        "consentTimestamp": _epoch(payload["at"]),
        "collectionMethod": payload["collection_method"],
        "consentReceiptID": f"{payload['record_id']}@{payload['at']}:{payload['event']}",
        "language": payload["language"],
        "piiPrincipalId": payload["resident_id"],
        "piiControllers": [
            {
                "piiController": controller_name,
                "onBehalf": False,
                "contact": payload["city"],
                "piiControllerUrl": "",
            }
        ],
        "policyUrl": payload["notice_url"],
        "services": [
            {"service": f"citybroker data sharing ({payload['city']})", "purposes": purposes}
        ],
        "sensitive": bool(sensitive),
        "spiCat": sensitive,
        # Not in the v1.1 schema's required set; kept so a reader sees the current state.
        "extensions": {
            "event": payload["event"],
            "state": payload["state"],
            "noticeHash": payload["notice_hash"],
            "withdrawalMethod": payload["withdrawal_method"],
        },
    }


def _epoch(rfc3339: str) -> int:
    return int(timefmt.parse(rfc3339).timestamp())
