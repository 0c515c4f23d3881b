"""The federation trust bundle: signing, verification, key windows and rollback protection."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from keys import dsse, timefmt, trust
from keys.ed25519 import Signer
from keys.errors import SignatureError
from keys.trust import KeyGrant, Party, Role, TrustBundle, TrustStore

T0 = datetime(2026, 1, 1, tzinfo=timefmt.now().tzinfo)


def make_bundle(version: int = 1, **keys: tuple[Signer, datetime, datetime]) -> TrustBundle:
    parties = {
        name: Party(
            name,
            Role.CITY,
            name.title(),
            "EU",
            f"127.0.0.1:{9000 + i}",
            (KeyGrant(s.public, nb, na),),
        )
        for i, (name, (s, nb, na)) in enumerate(sorted(keys.items()))
    }
    return TrustBundle("test-fed", version, T0, parties)


def window(signer: Signer, days: int = 30) -> tuple[Signer, datetime, datetime]:
    return signer, T0, T0 + timedelta(days=days)


def test_sign_and_verify_round_trip() -> None:
    authority, city = Signer.generate(), Signer.generate()
    bundle = make_bundle(aurora=window(city))

    verified = trust.verify_bundle(trust.sign_bundle(bundle, authority), authority.public)

    assert verified == bundle
    assert verified.party("aurora", Role.CITY) is not None
    assert verified.party("aurora", Role.PARTNER) is None


def test_round_trip_through_a_file(tmp_path: Path) -> None:
    authority = Signer.generate()
    bundle = make_bundle(aurora=window(Signer.generate()))
    path = tmp_path / "trust-bundle.json"
    path.write_bytes(trust.sign_bundle(bundle, authority).to_json())
    assert trust.load_bundle(path, authority.public) == bundle


def test_tampered_bundle_is_rejected() -> None:
    authority, city, intruder = Signer.generate(), Signer.generate(), Signer.generate()
    env = trust.sign_bundle(make_bundle(aurora=window(city)), authority)
    tampered = env.payload.replace(city.public.b64.encode(), intruder.public.b64.encode())
    assert tampered != env.payload
    with pytest.raises(SignatureError):
        trust.verify_bundle(
            dsse.Envelope(env.payload_type, tampered, env.signatures), authority.public
        )


def test_bundle_signed_by_another_authority_is_rejected() -> None:
    authority, impostor = Signer.generate(), Signer.generate()
    env = trust.sign_bundle(make_bundle(aurora=window(Signer.generate())), impostor)
    with pytest.raises(SignatureError) as e:
        trust.verify_bundle(env, authority.public)
    assert e.value.reason == "SIGNATURE_INVALID"


def test_signed_but_malformed_bundle_is_rejected() -> None:
    authority = Signer.generate()
    env = dsse.sign(trust.THING, {"federation": "x"}, authority)
    with pytest.raises(SignatureError) as e:
        trust.verify_bundle(env, authority.public)
    assert e.value.reason == "TRUST_BUNDLE_MALFORMED"


def test_bundle_whose_key_id_does_not_match_its_key_is_rejected() -> None:
    authority = Signer.generate()
    payload = make_bundle(aurora=window(Signer.generate())).to_payload()
    payload["parties"][0]["keys"][0]["keyid"] = Signer.generate().keyid
    with pytest.raises(SignatureError) as e:
        trust.verify_bundle(dsse.sign(trust.THING, payload, authority), authority.public)
    assert e.value.reason == "TRUST_BUNDLE_MALFORMED"


def test_key_lookup_respects_validity_windows() -> None:
    old, new = Signer.generate(), Signer.generate()
    switch = T0 + timedelta(days=10)
    party = Party(
        "aurora",
        Role.CITY,
        "Aurora",
        "EU",
        keys=(
            KeyGrant(old.public, T0, switch),
            KeyGrant(new.public, switch + timedelta(seconds=1), T0 + timedelta(days=20)),
        ),
    )
    bundle = TrustBundle("f", 1, T0, {"aurora": party})

    def known(signer: Signer, at: datetime) -> bool:
        return bundle.key_lookup("aurora", at)(signer.keyid) == signer.public

    assert not known(old, T0 - timedelta(seconds=1))
    assert known(old, T0)
    assert known(old, switch)
    assert not known(new, switch)
    assert not known(old, switch + timedelta(seconds=1))
    assert known(new, switch + timedelta(seconds=1))
    assert not known(new, T0 + timedelta(days=20, seconds=1))
    assert bundle.key_lookup("nobody", T0)(old.keyid) is None


def test_trust_store_moves_forward_only() -> None:
    authority, city = Signer.generate(), Signer.generate()
    store = TrustStore(authority.public)
    with pytest.raises(SignatureError) as e:
        _ = store.current
    assert e.value.reason == "TRUST_BUNDLE_MISSING"

    v2 = make_bundle(2, aurora=window(city))
    store.install(trust.sign_bundle(v2, authority))
    assert store.current == v2

    for version in (1, 2):
        older = dataclasses.replace(v2, version=version)
        with pytest.raises(SignatureError) as e:
            store.install(trust.sign_bundle(older, authority))
        assert e.value.reason == "TRUST_BUNDLE_ROLLBACK"
    assert store.current == v2

    v3 = dataclasses.replace(v2, version=3)
    store.install(trust.sign_bundle(v3, authority))
    assert store.current.version == 3


def test_trust_store_refuses_a_bundle_from_another_authority() -> None:
    authority = Signer.generate()
    store = TrustStore(authority.public)
    with pytest.raises(SignatureError):
        store.install(trust.sign_bundle(make_bundle(1), Signer.generate()))


def test_load_authority_key_errors(tmp_path: Path) -> None:
    with pytest.raises(SignatureError) as e:
        trust.load_authority_key(tmp_path / "missing.pub")
    assert e.value.reason == "TRUST_ROOT_MISSING"
    bad = tmp_path / "bad.pub"
    bad.write_text("not base64!\n")
    with pytest.raises(SignatureError) as e:
        trust.load_authority_key(bad)
    assert e.value.reason == "TRUST_ROOT_MALFORMED"
    good = tmp_path / "good.pub"
    signer = Signer.generate()
    good.write_text(signer.public.b64 + "\n")
    assert trust.load_authority_key(good) == signer.public
