"""audit.city_checkpoint: a city's checkpoint as the broker checks it, and the broker's signed record
of it as the verifier reads it back."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from audit import city_checkpoint as cc
from audit.merkle import consistency_proof, leaf_hash, root_from_leaf_hashes
from audit.note import NoteError, checkpoint_body, sign_note
from domain.errors import VerificationError
from keys import dsse
from keys.ed25519 import Signer

CITY = "aurora"
ORIGIN = "citybroker/node/aurora"


def _leaves(n: int) -> list[bytes]:
    return [leaf_hash(f"entry {i}".encode()) for i in range(n)]


def _note(
    size: int, signer: Signer, origin: str = ORIGIN, leaves: list[bytes] | None = None
) -> str:
    root = root_from_leaf_hashes((leaves or _leaves(size))[:size])
    return sign_note(checkpoint_body(origin, size, root), origin, signer)


def _proof(old: int, new: int, leaves: list[bytes]) -> list[bytes]:
    def subtree(start: int, end: int) -> bytes:
        return root_from_leaf_hashes(leaves[start:end])

    return consistency_proof(old, new, subtree)


@pytest.fixture(scope="module")
def city() -> Signer:
    return Signer.generate()


def test_a_note_the_city_signed_for_its_log_is_its_checkpoint(city: Signer) -> None:
    seen = cc.verified_checkpoint(CITY, _note(5, city), [city.public])
    assert (seen.city, seen.size, seen.root) == (CITY, 5, root_from_leaf_hashes(_leaves(5)))


def test_a_note_signed_by_another_key_or_for_another_log_is_refused(city: Signer) -> None:
    with pytest.raises(NoteError):
        cc.verified_checkpoint(CITY, _note(5, Signer.generate()), [city.public])
    with pytest.raises(NoteError):
        cc.verified_checkpoint(CITY, _note(5, city), [])  # a party with no city keys
    # Signed by the city's key under another log's name: not this log's checkpoint.
    other = "citybroker/node/borealis"
    with pytest.raises(NoteError):
        cc.verified_checkpoint(CITY, _note(5, city, origin=other), [city.public])


def test_a_checkpoint_extends_the_last_recorded_by_a_consistency_proof(city: Signer) -> None:
    leaves = _leaves(9)
    old = (4, root_from_leaf_hashes(leaves[:4]))
    new = cc.verified_checkpoint(CITY, _note(9, city, leaves=leaves), [city.public])
    cc.check_extends(old, new, _proof(4, 9, leaves))
    cc.check_extends((0, b""), new, [])  # the first one recorded: nothing to extend
    cc.check_extends((9, new.root), new, [])  # the same one again
    with pytest.raises(VerificationError) as e:
        cc.check_extends(old, new, _proof(3, 9, leaves))
    assert e.value.reason == "PROOF_INVALID"


def test_a_fork_or_an_older_checkpoint_is_refused(city: Signer) -> None:
    new = cc.verified_checkpoint(CITY, _note(5, city), [city.public])
    with pytest.raises(VerificationError) as e:
        cc.check_extends((5, b"\x07" * 32), new, [])
    assert e.value.reason == "LOG_FORK"
    with pytest.raises(VerificationError) as e:
        cc.check_extends((6, b"\x07" * 32), new, [])
    assert e.value.reason == "CHECKPOINT_STALE"
    # A log that grew from another tree: the proof cannot lead to the recorded root.
    leaves = _leaves(9)
    forked = (4, root_from_leaf_hashes([leaf_hash(b"other"), *leaves[1:4]]))
    grown = cc.verified_checkpoint(CITY, _note(9, city, leaves=leaves), [city.public])
    with pytest.raises(VerificationError) as e:
        cc.check_extends(forked, grown, _proof(4, 9, leaves))
    assert e.value.reason == "PROOF_INVALID"


def _claims(env: dsse.Envelope) -> dict[str, Any]:
    claims: dict[str, Any] = json.loads(env.payload)
    return claims


def test_the_record_reads_back_with_the_city_s_note_checked_again(city: Signer) -> None:
    broker = Signer.generate()
    seen = cc.verified_checkpoint(CITY, _note(7, city), [city.public])
    env = cc.record("broker-1", seen, 4, broker)
    assert env.payload_type == "application/vnd.citybroker.witnessed-checkpoint+json"
    claims = _claims(env)
    assert claims["broker"] == "broker-1" and claims["extends"] == 4
    assert claims["checkpoint"] == seen.note
    assert cc.recorded(claims, [city.public]) == seen
    # Not the city's note (checked against the city's keys, not the broker's word).
    with pytest.raises(NoteError):
        cc.recorded(claims, [broker.public])
    # A record whose size or root is not the note's.
    for field, value in (("tree_size", 8), ("root", base64.b64encode(b"\x00" * 32).decode())):
        with pytest.raises(VerificationError) as e:
            cc.recorded({**claims, field: value}, [city.public])
        assert e.value.reason == "RECORD_MISMATCH"
    with pytest.raises(TypeError):
        cc.recorded({**claims, "extends": 8}, [city.public])
    with pytest.raises(KeyError):
        cc.recorded({k: v for k, v in claims.items() if k != "checkpoint"}, [city.public])


def test_only_a_cosignature_statement_counts_as_one(city: Signer) -> None:
    cosignature = dsse.sign("cosignature", {"city": CITY}, city).to_json()
    consent = dsse.sign("commitment", {"city": CITY}, city).to_json()
    assert cc.is_cosignature(cosignature)
    assert not cc.is_cosignature(consent)
    assert not cc.is_cosignature(b"")  # withheld
    assert not cc.is_cosignature(b"[1, 2]")
    assert not cc.is_cosignature(b"\xff not json")
