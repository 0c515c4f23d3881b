"""A party's signing key, replaceable while the process runs (key rotation without downtime).

Rotation keeps old statements verifiable because verifiers look up the key a party held when it
signed (keys.trust.Party.key at the statement's time; the auditor's keys across all trust bundle
versions). So a party may switch only to a key the trust bundle in force grants it now:
`accepts` is that rule, pure.
"""

from __future__ import annotations

import threading
from dataclasses import replace
from datetime import datetime

from domain.errors import ConfigError
from keys import timefmt
from keys.ed25519 import Signer
from keys.trust import KeyGrant, TrustBundle


def accepts(bundle: TrustBundle, party_id: str, signer: Signer, at: datetime) -> str | None:
    """Why `party_id` may not sign with `signer` at `at` under `bundle`, or None if it may."""
    party = bundle.party(party_id)
    if party is None:
        return f"{party_id} is not in trust bundle version {bundle.version}"
    if party.key(signer.keyid, at) is None:
        return (
            f"key {signer.keyid[:16]}… is not a key of {party_id} valid now in trust bundle "
            f"version {bundle.version}"
        )
    return None


class RotatingSigner(Signer):
    """A Signer whose key `rotate` replaces. Everything that signs takes `in_use()` first, so a
    key id and its signature always come from the same key. Nothing secret is derived from the
    key: pseudonyms and cell keys come from the node's own secret (node.secrets)."""

    def __init__(self, first: Signer) -> None:
        super().__init__(first.crypto_key())
        self._lock = threading.Lock()
        self._current = first

    def in_use(self) -> Signer:
        """The key of the moment, as a plain Signer that will not change under the caller."""
        return self._current

    def rotate(self, new: Signer) -> None:
        """Sign with `new` from now on (the caller checked the trust bundle grants it)."""
        with self._lock:
            self._private = new.crypto_key()
            self.public = new.public
            self._current = new


def with_added_key(
    bundle: TrustBundle,
    party_id: str,
    grant: KeyGrant,
    issued_at: datetime,
    retire_others_after: datetime | None = None,
) -> TrustBundle:
    """The next bundle version: `party_id` also holds `grant`. Its window must overlap the window
    of a key the party holds at `issued_at` (if any), so that no moment is left without a valid
    key; `retire_others_after` ends the party's other windows then (never before they started).
    KeyRotationRefused, one line, for an unknown party, a key it holds already or no overlap."""
    party = bundle.party(party_id)
    if party is None:
        raise KeyRotationRefused(f"{party_id} is not in trust bundle version {bundle.version}")
    if grant.not_after <= grant.not_before:
        raise KeyRotationRefused("the new key's window ends before it starts")
    if any(g.public.keyid == grant.public.keyid for g in party.keys):
        raise KeyRotationRefused(f"{party_id} already holds key {grant.public.keyid[:16]}…")
    live = [g for g in party.keys if g.valid_at(issued_at)]
    if live and not any(g.not_before <= grant.not_before <= g.not_after for g in live):
        raise KeyRotationRefused(
            f"the new key's window (from {timefmt.fmt(grant.not_before)}) does not overlap the "
            f"key {party_id} signs with now: old statements and new would have a gap"
        )
    others = party.keys
    if retire_others_after is not None:
        if retire_others_after < grant.not_before:
            raise KeyRotationRefused("retiring the old keys before the new one starts leaves a gap")
        others = tuple(
            replace(g, not_after=max(g.not_before, min(g.not_after, retire_others_after)))
            for g in party.keys
        )
    parties = {**bundle.parties, party_id: replace(party, keys=(*others, grant))}
    return replace(bundle, version=bundle.version + 1, issued_at=issued_at, parties=parties)


class KeyRotationRefused(ConfigError):
    default_reason = "KEY_ROTATION_REFUSED"
