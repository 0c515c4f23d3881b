"""Ed25519 signers: owner-only key files, refusal of unsafe or foreign files, derived key ids."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from keys.ed25519 import PublicKey, Signer, key_id
from keys.errors import KeyFileError


def test_save_then_load_gives_the_same_key(tmp_path: Path) -> None:
    signer = Signer.generate()
    path = tmp_path / "sub" / "city.key"
    signer.save(path)

    loaded = Signer.load(path)

    assert loaded.public == signer.public
    assert loaded.keyid == signer.keyid
    message = b"same key, same signatures"
    assert signer.public.verify(loaded.sign(message), message)


def test_saved_key_file_is_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "city.key"
    Signer.generate().save(path)
    assert path.stat().st_mode & 0o777 == 0o600


def test_save_tightens_an_existing_loose_file(tmp_path: Path) -> None:
    path = tmp_path / "city.key"
    path.write_text("old")
    os.chmod(path, 0o644)
    Signer.generate().save(path)
    assert path.stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o644, 0o610])
def test_load_refuses_key_readable_by_group_or_others(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "city.key"
    Signer.generate().save(path)
    os.chmod(path, mode)
    with pytest.raises(KeyFileError, match="chmod 600"):
        Signer.load(path)


def test_load_refuses_missing_file(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError):
        Signer.load(tmp_path / "absent.key")


def _write_owner_only(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    os.chmod(path, 0o600)
    return path


def test_load_refuses_a_file_that_is_not_pem(tmp_path: Path) -> None:
    path = _write_owner_only(tmp_path / "junk.key", b"this is not a key\n")
    with pytest.raises(KeyFileError, match="not an unencrypted PEM"):
        Signer.load(path)


def test_load_refuses_a_pem_key_of_another_type(tmp_path: Path) -> None:
    pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path = _write_owner_only(tmp_path / "ecdsa.key", pem)
    with pytest.raises(KeyFileError, match="not an Ed25519"):
        Signer.load(path)


def test_key_id_is_sha256_of_the_raw_public_key() -> None:
    signer = Signer.generate()
    raw = signer.public.raw
    assert len(raw) == 32
    assert signer.keyid == hashlib.sha256(raw).hexdigest() == key_id(raw)


def test_different_keys_have_different_ids() -> None:
    assert Signer.generate().keyid != Signer.generate().keyid


def test_public_key_base64_round_trip_keeps_the_key_id() -> None:
    pub = Signer.generate().public
    assert PublicKey.from_b64(pub.b64) == pub
    assert PublicKey.from_b64(pub.b64).keyid == pub.keyid


def test_public_key_of_wrong_length_is_refused() -> None:
    with pytest.raises(ValueError):
        PublicKey.from_b64("AAAA")


def test_verify_rejects_a_signature_by_another_key() -> None:
    a, b = Signer.generate(), Signer.generate()
    assert not a.public.verify(b.sign(b"m"), b"m")
    assert not a.public.verify(a.sign(b"m"), b"n")
    assert not a.public.verify(b"short", b"m")
