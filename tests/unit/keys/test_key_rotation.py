"""Signing key rotation: the next bundle version's windows, and the signer that switches keys."""

from __future__ import annotations

from datetime import timedelta

import pytest

from keys import dsse, rotation, timefmt
from keys.ed25519 import Signer
from keys.rotation import KeyRotationRefused, RotatingSigner
from keys.trust import KeyGrant, Party, Role, TrustBundle

NOW = timefmt.now()


def _bundle(signer: Signer) -> TrustBundle:
    grant = KeyGrant(signer.public, NOW - timedelta(days=10), NOW + timedelta(days=10))
    city = Party("aurora", Role.CITY, "Aurora", "EU-FI", "", (grant,))
    return TrustBundle("f", 1, NOW - timedelta(days=10), {"aurora": city})


def test_the_next_version_grants_both_keys_and_old_statements_still_verify() -> None:
    old, new = Signer.generate(), Signer.generate()
    v1 = _bundle(old)
    signed_before = dsse.sign("result", {"n": 1}, old)
    v2 = rotation.with_added_key(
        v1, "aurora", KeyGrant(new.public, NOW, NOW + timedelta(days=365)), NOW
    )
    assert v2.version == 2 and len(v2.parties["aurora"].keys) == 2
    at_old = NOW - timedelta(days=1)
    dsse.verify(signed_before, "result", v2.key_lookup("aurora", at_old))
    dsse.verify(dsse.sign("result", {"n": 2}, new), "result", v2.key_lookup("aurora", NOW))
    assert rotation.accepts(v2, "aurora", new, NOW) is None
    assert rotation.accepts(v1, "aurora", new, NOW) is not None


def test_a_window_with_a_gap_or_a_known_key_is_refused() -> None:
    old, new = Signer.generate(), Signer.generate()
    v1 = _bundle(old)
    later = NOW + timedelta(days=20)
    with pytest.raises(KeyRotationRefused, match="does not overlap"):
        rotation.with_added_key(
            v1, "aurora", KeyGrant(new.public, later, later + timedelta(days=1)), NOW
        )
    with pytest.raises(KeyRotationRefused, match="already holds"):
        rotation.with_added_key(v1, "aurora", KeyGrant(old.public, NOW, later), NOW)
    with pytest.raises(KeyRotationRefused, match="not in trust bundle"):
        rotation.with_added_key(v1, "nobody", KeyGrant(new.public, NOW, later), NOW)


def test_retiring_ends_the_old_window() -> None:
    old, new = Signer.generate(), Signer.generate()
    end = NOW + timedelta(days=2)
    v2 = rotation.with_added_key(
        _bundle(old), "aurora", KeyGrant(new.public, NOW, NOW + timedelta(days=90)), NOW, end
    )
    assert v2.parties["aurora"].keys[0].not_after == end


def test_a_rotating_signer_signs_with_one_key_at_a_time() -> None:
    old, new = Signer.generate(), Signer.generate()
    signer = RotatingSigner(old)
    assert signer.keyid == old.keyid and signer.in_use() is old
    signer.rotate(new)
    envelope = dsse.sign("result", {"n": 1}, signer)
    assert envelope.signatures[0].keyid == new.keyid
    assert new.public.verify(
        envelope.signatures[0].sig, dsse.pae(envelope.payload_type, envelope.payload)
    )
