"""Consent receipts as Kantara Consent Receipt v1.1 JSON (node.kantara), made from the registry's own
signed receipts."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from audit.log import MerkleLog
from infra import storage
from keys import dsse, timefmt
from keys.ed25519 import Signer
from node import kantara, taxonomy
from node.consent import ConsentRecord, ConsentRegistry

CITY_KEY = Signer.generate()
NOW = timefmt.now()
REQUIRED = (
    "version",
    "jurisdiction",
    "consentTimestamp",
    "collectionMethod",
    "consentReceiptID",
    "language",
    "piiPrincipalId",
    "piiControllers",
    "policyUrl",
    "services",
    "sensitive",
    "spiCat",
)


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[ConsentRegistry]:
    engine = storage.create_engine(f"sqlite:///{tmp_path / 'node.db'}")
    storage.upgrade(engine)
    with MerkleLog(engine, "citybroker/node/aurora", CITY_KEY) as log:
        yield ConsentRegistry(engine, "aurora", CITY_KEY, log)
    engine.dispose()


def record(**changes: Any) -> ConsentRecord:
    r = ConsentRecord(
        record_id="rec-1",
        resident_id="aurora-r000007",
        purposes=("urban-mobility-planning", "scientific-research"),
        recipients=("northwind-mobility", "category:research-institution"),
        data_categories=("mobility", "age"),
        valid_from=NOW - timedelta(days=1),
        valid_until=NOW + timedelta(days=30),
        notice_url="https://aurora.example/privacy",
        notice_hash="sha256:" + "0f" * 32,
        language="fi",
        jurisdiction="EU-FI",
        collection_method="resident portal",
        withdrawal_method="resident portal",
    )
    return dataclasses.replace(r, **changes)


def test_required_top_level_fields(registry: ConsentRegistry) -> None:
    receipt = registry.give(record(), "resident via portal")
    cr = kantara.from_signed_receipt(receipt, "City of Aurora")
    assert set(REQUIRED) <= set(cr)
    assert cr["version"] == "KI-CR-v1.1.0"
    assert cr["jurisdiction"] == "EU-FI"
    assert cr["collectionMethod"] == "resident portal"
    assert cr["language"] == "fi"
    assert cr["piiPrincipalId"] == "aurora-r000007"
    assert cr["policyUrl"] == "https://aurora.example/privacy"
    payload = json.loads(dsse.Envelope.from_json(receipt).payload)
    assert cr["consentTimestamp"] == int(timefmt.parse(payload["at"]).timestamp())
    assert isinstance(cr["consentTimestamp"], int)
    assert abs(cr["consentTimestamp"] - timefmt.now().timestamp()) < 120
    assert cr["consentReceiptID"] == f"rec-1@{payload['at']}:given"
    [controller] = cr["piiControllers"]
    assert controller["piiController"] == "City of Aurora"
    assert controller["contact"] == "aurora"
    assert cr["sensitive"] is False and cr["spiCat"] == []
    assert cr["extensions"]["state"] == "given"
    assert cr["extensions"]["noticeHash"] == "sha256:" + "0f" * 32
    json.dumps(cr)  # serialisable as is


def test_one_service_with_one_entry_per_purpose(registry: ConsentRegistry) -> None:
    cr = kantara.from_signed_receipt(registry.give(record(), "portal"), "City of Aurora")
    [service] = cr["services"]
    purposes = service["purposes"]
    assert [p["purposeCategory"] for p in purposes] == [
        ["scientific-research"],
        ["urban-mobility-planning"],
    ]
    assert [p["primaryPurpose"] for p in purposes] == [True, False]
    for p in purposes:
        code = p["purposeCategory"][0]
        assert p["purpose"] == taxonomy.PURPOSES[code]
        assert p["consentType"] == "EXPRESSED"
        assert p["piiCategory"] == ["age", "mobility"]
        assert p["termination"] == timefmt.fmt(NOW + timedelta(days=30))
        assert p["thirdPartyDisclosure"] is True
        assert "northwind-mobility" in p["thirdPartyName"]
        assert "category:research-institution" in p["thirdPartyName"]


def test_explicit_consent_sensitive_data_and_no_end_date(registry: ConsentRegistry) -> None:
    r = record(
        lawful_basis="explicit-consent", data_categories=("health", "mobility"), valid_until=None
    )
    cr = kantara.from_signed_receipt(registry.give(r, "portal"), "City of Aurora")
    assert cr["sensitive"] is True
    assert cr["spiCat"] == ["health"]
    for p in cr["services"][0]["purposes"]:
        assert p["consentType"] == "EXPLICIT"
        assert p["termination"] == "until withdrawn"


def test_the_latest_event_is_what_the_receipt_shows(registry: ConsentRegistry) -> None:
    registry.give(record(), "portal")
    withdrawn = registry.withdraw("rec-1", "resident")
    cr = kantara.from_signed_receipt(withdrawn, "City of Aurora")
    assert cr["consentReceiptID"].endswith(":withdrawn")
    assert cr["extensions"]["event"] == "withdrawn"
    assert cr["extensions"]["state"] == "withdrawn"
    assert registry.history("rec-1")[-1].receipt == withdrawn
