"""Salted commitments (domain.commitment): an opening opens only its own commitment, and the
digest gives nothing away without the salt."""

from __future__ import annotations

import hashlib
import json

import pytest

from domain import commitment, consent_batch
from keys import dsse, timefmt
from keys.ed25519 import Signer

CITY_KEY = Signer.generate()
SALT = bytes(range(32))


def _receipt(resident: str) -> bytes:
    return dsse.sign(
        "consent-receipt", {"city": "aurora", "resident_id": resident}, CITY_KEY
    ).to_json()


def _claims(entry: bytes) -> dict[str, object]:
    claims, _ = dsse.verify(
        dsse.Envelope.from_json(entry), "commitment", lambda _k: CITY_KEY.public
    )
    return claims


def test_an_entry_names_the_type_and_the_salted_digest_only() -> None:
    receipt = _receipt("aurora-r000001")
    entry = commitment.sign("aurora", timefmt.now(), "consent-receipt", SALT, receipt, CITY_KEY)
    claims = _claims(entry)
    assert set(claims) == {"city", "at", "statement", "commitment"}
    assert claims["commitment"] == "sha256:" + hashlib.sha256(SALT + receipt).hexdigest()
    assert b"aurora-r000001" not in entry
    # Without the salt, even a guessed receipt does not match the plain digest.
    assert claims["commitment"] != "sha256:" + hashlib.sha256(receipt).hexdigest()


def test_an_opening_opens_its_commitment_and_nothing_else() -> None:
    receipt = _receipt("aurora-r000001")
    entry = commitment.sign("aurora", timefmt.now(), "consent-receipt", SALT, receipt, CITY_KEY)
    claims = _claims(entry)
    assert commitment.opening_problem(claims, commitment.Opening(3, receipt, SALT)) is None
    other_salt = commitment.Opening(3, receipt, bytes(32))
    assert "salted digest" in str(commitment.opening_problem(claims, other_salt))
    other_receipt = commitment.Opening(3, _receipt("aurora-r000002"), SALT)
    assert commitment.opening_problem(claims, other_receipt) is not None
    short_salt = commitment.Opening(3, receipt, b"salt")
    assert commitment.opening_problem(claims, short_salt) is not None
    # The right bytes under the wrong statement type do not open it either.
    relabelled = {**claims, "statement": "consent-batch"}
    assert "type" in str(
        commitment.opening_problem(relabelled, commitment.Opening(3, receipt, SALT))
    )


def test_a_batch_member_is_opened_by_its_own_payload_and_salt() -> None:
    payloads = [dsse.canonical({"resident_id": f"r{i}", "event": "given"}) for i in range(3)]
    salts = [bytes([i]) * 32 for i in range(3)]
    members = [
        commitment.member_digest(s, consent_batch.receipt_digest(p))
        for s, p in zip(salts, payloads, strict=True)
    ]
    statement = consent_batch.sign("aurora", timefmt.now(), members, CITY_KEY)
    body = json.loads(dsse.Envelope.from_json(statement).payload)
    assert body["salted"] is True and body["receipts"] == members
    # A guessable payload's plain digest is not what the statement lists.
    assert consent_batch.receipt_digest(payloads[0]) not in body["receipts"]
    claims = {"statement": "consent-batch", "commitment": commitment.digest(SALT, statement)}
    ok = commitment.Opening(0, statement, SALT, payloads[1], salts[1])
    assert commitment.opening_problem(claims, ok) is None
    wrong = commitment.Opening(0, statement, SALT, payloads[1], salts[2])
    assert "does not list" in str(commitment.opening_problem(claims, wrong))


def test_salts_must_be_32_bytes() -> None:
    with pytest.raises(ValueError):
        commitment.digest(b"short", b"x")
    with pytest.raises(ValueError):
        commitment.member_digest(b"short", "sha256:" + "0" * 64)
