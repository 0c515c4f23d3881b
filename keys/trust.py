"""The federation trust bundle: who is in the federation, where they listen, and which keys they hold.

One DSSE document signed by the federation authority, like X-Road's global configuration. Parsing is
pure; `TrustStore` keeps every verified version so that old statements verify against the keys that
were in force when they were made.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from keys import dsse, timefmt
from keys.ed25519 import PublicKey, Signer
from keys.errors import SignatureError

THING = "trust-bundle"


class Role(StrEnum):
    CITY = "city"
    BROKER = "broker"
    PARTNER = "partner"


@dataclass(frozen=True)
class KeyGrant:
    public: PublicKey
    not_before: datetime
    not_after: datetime

    def valid_at(self, t: datetime) -> bool:
        """True if `t` is within the grant, both ends inclusive."""
        return self.not_before <= t <= self.not_after


@dataclass(frozen=True)
class Party:
    id: str
    role: Role
    name: str
    jurisdiction: str
    endpoint: str = ""
    keys: tuple[KeyGrant, ...] = ()
    # Recipient categories the party belongs to (residents may consent to a category).
    categories: tuple[str, ...] = ()

    def key(self, keyid: str, at: datetime) -> PublicKey | None:
        """This party's public key with id `keyid` if granted at `at`, else None."""
        for g in self.keys:
            if g.public.keyid == keyid and g.valid_at(at):
                return g.public
        return None


@dataclass(frozen=True)
class TrustBundle:
    federation: str
    version: int
    issued_at: datetime
    parties: dict[str, Party] = field(default_factory=dict)

    def party(self, party_id: str, role: Role | None = None) -> Party | None:
        """The party with this id, if it has `role` (when given); else None."""
        p = self.parties.get(party_id)
        if p is None or (role is not None and p.role != role):
            return None
        return p

    def by_role(self, role: Role) -> list[Party]:
        """The parties with `role`, sorted by id."""
        return sorted((p for p in self.parties.values() if p.role == role), key=lambda p: p.id)

    def key_lookup(self, party_id: str, at: datetime) -> dsse.KeyLookup:
        """A DSSE key lookup accepting only this party's keys valid at `at`."""
        party = self.parties.get(party_id)

        def lookup(keyid: str) -> PublicKey | None:
            return party.key(keyid, at) if party else None

        return lookup

    def to_payload(self) -> dict[str, Any]:
        """The bundle as the JSON object the authority signs; `from_payload` reads it."""
        return {
            "federation": self.federation,
            "version": self.version,
            "issued_at": timefmt.fmt(self.issued_at),
            "parties": [
                {
                    "id": p.id,
                    "role": p.role.value,
                    "name": p.name,
                    "jurisdiction": p.jurisdiction,
                    "endpoint": p.endpoint,
                    "categories": list(p.categories),
                    "keys": [
                        {
                            "keyid": g.public.keyid,
                            "public_key": g.public.b64,
                            "not_before": timefmt.fmt(g.not_before),
                            "not_after": timefmt.fmt(g.not_after),
                        }
                        for g in p.keys
                    ],
                }
                for p in sorted(self.parties.values(), key=lambda p: p.id)
            ],
        }

    @classmethod
    def from_payload(cls, obj: dict[str, Any]) -> TrustBundle:
        """A bundle from a payload, signature unchecked; SignatureError if malformed."""
        try:
            parties = {}
            for p in obj["parties"]:
                grants = []
                for k in p["keys"]:
                    pub = PublicKey.from_b64(k["public_key"])
                    if pub.keyid != k["keyid"]:
                        raise ValueError(f"key id of {p['id']} does not match its key")
                    grants.append(
                        KeyGrant(pub, timefmt.parse(k["not_before"]), timefmt.parse(k["not_after"]))
                    )
                party = Party(
                    id=str(p["id"]),
                    role=Role(p["role"]),
                    name=str(p["name"]),
                    jurisdiction=str(p["jurisdiction"]),
                    endpoint=str(p.get("endpoint", "")),
                    categories=tuple(str(c) for c in p.get("categories", [])),
                    keys=tuple(grants),
                )
                if party.id in parties:
                    raise ValueError(f"party {party.id} listed twice")
                parties[party.id] = party
            return cls(
                federation=str(obj["federation"]),
                version=int(obj["version"]),
                issued_at=timefmt.parse(obj["issued_at"]),
                parties=parties,
            )
        except (KeyError, TypeError, ValueError) as e:
            raise SignatureError(
                f"trust bundle is malformed: {e}", reason="TRUST_BUNDLE_MALFORMED"
            ) from None


def sign_bundle(bundle: TrustBundle, authority: Signer) -> dsse.Envelope:
    """The bundle as a DSSE envelope signed by the federation authority."""
    return dsse.sign(THING, bundle.to_payload(), authority)


def verify_bundle(envelope: dsse.Envelope, authority: PublicKey) -> TrustBundle:
    """The bundle, only if the envelope is a trust bundle signed by `authority`; SignatureError otherwise."""
    payload, _ = dsse.verify(
        envelope, THING, lambda kid: authority if kid == authority.keyid else None
    )
    return TrustBundle.from_payload(payload)


def load_bundle(path: Path, authority: PublicKey) -> TrustBundle:
    """The bundle in the envelope file at `path`, as `verify_bundle` checks it; else SignatureError."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise SignatureError(
            f"cannot read trust bundle {path}: {e.strerror}", reason="TRUST_BUNDLE_MISSING"
        ) from None
    return verify_bundle(dsse.Envelope.from_json(data), authority)


def load_authority_key(path: Path) -> PublicKey:
    """The public key in a base64 file; SignatureError if unreadable or not a key."""
    try:
        return PublicKey.from_b64(path.read_text().strip())
    except OSError as e:
        raise SignatureError(
            f"cannot read authority key {path}: {e.strerror}", reason="TRUST_ROOT_MISSING"
        ) from None
    except ValueError as e:
        raise SignatureError(f"{path}: {e}", reason="TRUST_ROOT_MALFORMED") from None


class TrustStore:
    """The bundle in force plus every earlier verified version. Versions only move forward."""

    def __init__(self, authority: PublicKey, bundles: Iterable[TrustBundle] = ()) -> None:
        self.authority = authority
        self._lock = threading.Lock()
        self._versions: dict[int, TrustBundle] = {}
        for b in bundles:
            self._add(b)

    def _add(self, bundle: TrustBundle) -> None:
        with self._lock:
            if self._versions and bundle.version <= max(self._versions):
                raise SignatureError(
                    f"trust bundle version {bundle.version} is not newer than the one in force",
                    reason="TRUST_BUNDLE_ROLLBACK",
                )
            self._versions[bundle.version] = bundle

    def install(self, envelope: dsse.Envelope) -> TrustBundle:
        """The bundle, verified and now in force; SignatureError if invalid or not newer."""
        bundle = verify_bundle(envelope, self.authority)
        self._add(bundle)
        return bundle

    @property
    def current(self) -> TrustBundle:
        """The newest installed bundle; SignatureError (TRUST_BUNDLE_MISSING) if none is installed."""
        if not self._versions:
            raise SignatureError("no trust bundle installed", reason="TRUST_BUNDLE_MISSING")
        return self._versions[max(self._versions)]
