"""Ed25519 key pairs: generation, owner-only private key files, and key ids derived from public keys."""

from __future__ import annotations

import base64
import hashlib
import os
import stat
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from keys.errors import KeyFileError


def key_id(public_raw: bytes) -> str:
    """A key id is the hex SHA-256 of the raw 32-byte public key, so anyone holding the key can derive it."""
    return hashlib.sha256(public_raw).hexdigest()


def check_private_key(path: Path, what: str) -> None:
    """KeyFileError unless `path` exists and is accessible to its owner only (signing and TLS
    keys alike); one line that says how to fix it."""
    try:
        mode = path.stat().st_mode
    except OSError as e:
        raise KeyFileError(f"cannot read {what} {path}: {e.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(
            f"{what} {path} is readable by group or others (mode {stat.S_IMODE(mode):o}); "
            f"run: chmod 600 {path}"
        )


@dataclass(frozen=True)
class PublicKey:
    raw: bytes

    # Derived once per key, not per use: keys are looked up and checked for every signature.
    @cached_property
    def keyid(self) -> str:
        """This key's id (`key_id` of the raw bytes), computed once."""
        return key_id(self.raw)

    @property
    def b64(self) -> str:
        """The raw 32-byte key in standard base64, as the trust bundle lists it."""
        return base64.b64encode(self.raw).decode()

    @classmethod
    def from_b64(cls, text: str) -> PublicKey:
        """The key from strict base64; ValueError unless that decodes to exactly 32 bytes."""
        raw = base64.b64decode(text, validate=True)
        if len(raw) != 32:
            raise ValueError("an Ed25519 public key is 32 bytes")
        return cls(raw)

    def verify(self, signature: bytes, message: bytes) -> bool:
        """True only if `signature` is this key's valid Ed25519 signature of `message`; never raises."""
        try:
            self._crypto_key.verify(signature, message)
        except (InvalidSignature, ValueError):
            return False
        return True

    def crypto_key(self) -> Ed25519PublicKey:
        """This key as a `cryptography` Ed25519PublicKey (for libraries such as PyJWT)."""
        return self._crypto_key

    @cached_property
    def _crypto_key(self) -> Ed25519PublicKey:
        return Ed25519PublicKey.from_public_bytes(self.raw)


class Signer:
    """An Ed25519 private key held in memory; it never leaves this object except to an owner-only file."""

    def __init__(self, private: Ed25519PrivateKey) -> None:
        self._private = private
        self.public = PublicKey(
            private.public_key().public_bytes(
                serialization.Encoding.Raw, serialization.PublicFormat.Raw
            )
        )

    @classmethod
    def generate(cls) -> Signer:
        """A signer with a fresh random Ed25519 key."""
        return cls(Ed25519PrivateKey.generate())

    @property
    def keyid(self) -> str:
        """The key id of this signer's public key."""
        return self.public.keyid

    def in_use(self) -> Signer:
        """The signer to make one signature with, its key id and signature from the same key:
        this one (a keys.rotation.RotatingSigner answers with its key of the moment)."""
        return self

    def sign(self, message: bytes) -> bytes:
        """The 64-byte Ed25519 signature of `message`."""
        return self._private.sign(message)

    def crypto_key(self) -> Ed25519PrivateKey:
        """The private key itself as a `cryptography` object, for libraries that sign (PyJWT)."""
        return self._private

    def save(self, path: Path) -> None:
        """Write the key as PKCS#8 PEM, created with mode 0600 so it is never readable by others."""
        pem = self._private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
        os.chmod(path, 0o600)

    @classmethod
    def load(cls, path: Path) -> Signer:
        """An unencrypted PEM Ed25519 key; KeyFileError if unreadable, group/other-accessible, or not one."""
        check_private_key(path, "private key")
        try:
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except OSError as e:  # a directory, or unreadable though its mode says owner-only
            raise KeyFileError(f"cannot read private key {path}: {e.strerror}") from None
        except (ValueError, TypeError) as e:
            raise KeyFileError(f"{path} is not an unencrypted PEM private key: {e}") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise KeyFileError(f"{path} is not an Ed25519 private key")
        return cls(key)
