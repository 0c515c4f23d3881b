"""The auditor's offline verifier of export bundles. Streams: memory does not grow with the log.

For each bundle it checks, stopping at the first failure (named by file and entry):
- every file and line is in canonical form, so no byte can change unnoticed;
- the trust bundle versions are signed by the federation authority the auditor pins;
- every checkpoint is signed by the log owner's key and its root is recomputed from the entries;
- every entry is a DSSE statement signed by the party it names, with a key in force when it was made;
- every released result obeyed the agreement it names (parties, purpose, dataset, fields, k).
- every commitment to a resident's statement is the owner's; erased ones are reported as erased,
  and, when the city exported personal data for an auditor, each opening opens its commitment
  (audit.openings). Exchanges about single residents logged as commitments reconcile by their
  commitments and log indexes and are reported as committed; opened, they are checked in full.
Across bundles it reconciles brokers' receipts with cities' results (both ways), reports a fork
when two checkpoints of one log disagree (also a city checkpoint a broker recorded against the
city's bundle), and checks what the set covers (audit.coverage): each log as long as the other
parties saw it, and a bundle of every party expected.

I/O boundary: this module only wires the parts together. The rules are pure (audit.checks),
the files are read by audit.bundle_reader, and the entries' signatures may be checked in
worker processes (audit.parallel).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from audit import bundle as layout
from audit import bundle_reader as reader
from audit.checks import (
    BundleChecks,
    BundleError,
    BundleSummary,
    Keys,
    check_manifest,
    check_owner,
    reconcile,
    trust_versions,
)
from audit.coverage import (
    BUNDLE_ROLE,
    Coverage,
    Expected,
    check_recorded,
    check_truncation,
    coverage,
)
from audit.ledger import Ledger
from audit.openings import CommittedEntries
from audit.parallel import SignatureChecks, default_workers
from keys.ed25519 import PublicKey

__all__ = [
    "BundleError",
    "BundleSummary",
    "Report",
    "reconcile",
    "verify_bundle",
    "verify_bundles",
]


@dataclass
class Report:
    """What every bundle given to `verify_bundles` held, all verified and reconciled."""

    bundles: list[BundleSummary]
    # Which parties' logs the bundles covered, to what size, and what was left out.
    coverage: Coverage | None = None

    @property
    def signatures_verified(self) -> int:
        """Signatures verified across all the bundles."""
        return sum(b.signatures_verified for b in self.bundles)

    def to_json(self) -> dict[str, Any]:
        """The report as `citybroker audit verify` prints it."""
        return {
            "ok": True,
            "signatures_verified": self.signatures_verified,
            "bundles": [b.to_json() for b in self.bundles],
            **(self.coverage.to_json() if self.coverage else {}),
        }


def verify_bundle(
    root: Path,
    authority: PublicKey,
    progress: Callable[[int, int], None] | None = None,
    *,
    workers: int | None = None,
    ledger: Ledger | None = None,
) -> BundleSummary:
    """Verify one bundle; raise BundleError naming the first failing file and entry.

    `workers`: processes that check the entries' signatures while this one checks the rest;
    1 checks them inline. By default, one per CPU for bundles of PARALLEL_MIN_ENTRIES or more.
    `ledger`: where its checkpoints, results and receipts are kept for reconciliation with other
    bundles (verify_bundles shares one); by default, a ledger of its own.
    """
    manifest_path = root / layout.MANIFEST
    manifest = check_manifest(reader.read_manifest(manifest_path), manifest_path)
    trust_dir = root / layout.TRUST_DIR
    keys = Keys(trust_versions(trust_dir, reader.signed_files(trust_dir, "v*.json"), authority))
    check_owner(manifest, keys, manifest_path)
    ledger = Ledger() if ledger is None else ledger
    m = manifest
    bundle = ledger.add_bundle(root, m.origin, m.party, m.role)
    summary = BundleSummary(root, m.origin, m.party, m.role, m.size, ledger, bundle)
    state = BundleChecks(summary, keys)
    state.agreements(reader.signed_files(root / layout.AGREEMENTS_DIR, "*.json"))
    for number, obj in reader.canonical_lines(state.checkpoints_path, "checkpoints"):
        state.checkpoint(number, obj)
    state.checkpoints_end()
    workers = default_workers(m.size) if workers is None else max(1, workers)
    committed = CommittedEntries(root, summary, state.opened)
    _verify_entries(state, keys, workers, progress, committed)
    committed.end()
    for number, obj in reader.canonical_lines(state.cosignatures_path, "cosignatures"):
        state.cosignature(number, obj)
    if progress:
        progress(m.size, m.size)
    return summary


def _verify_entries(
    state: BundleChecks,
    keys: Keys,
    workers: int,
    progress: Callable[[int, int], None] | None,
    committed: CommittedEntries,
) -> None:
    path, size = state.entries_path, state.summary.size
    with SignatureChecks(keys, path, workers) as signatures:
        try:
            for number, obj in reader.canonical_lines(path, "entries"):
                entry = state.entry(number, obj)
                signatures.require(entry)
                state.entry_signed(entry)
                committed.see(entry)
                if progress and number % 1000 == 0:
                    progress(number, size)
            signatures.drain()
        except Exception as failure:
            # Signature checks still running belong to earlier entries (or this one, whose
            # signature comes first): a bad one among them is the first failure.
            first = signatures.first_failure()
            if first is not None and first is not failure:
                raise first from None
            raise
    state.entries_end()


def verify_bundles(
    paths: Sequence[Path],
    authority: PublicKey,
    progress: Callable[[Path, int, int], None] | None = None,
    *,
    parties: Sequence[str] | None = None,
    exclude: Sequence[str] = (),
) -> Report:
    """Verify each bundle, then reconcile them with each other and check what they cover
    (audit.coverage): every party's log as long as others saw it (else LOG_TRUNCATED), and a
    bundle of every city and broker of the trust bundle in force, or of each of `parties` if
    given, except those in `exclude` (else PARTY_MISSING)."""

    def per_bundle(path: Path) -> Callable[[int, int], None] | None:
        if progress is None:
            return None
        report = progress
        return lambda done, total: report(path, done, total)

    ledger = Ledger()
    summaries = [verify_bundle(p, authority, per_bundle(p), ledger=ledger) for p in paths]
    check_truncation(ledger)
    check_recorded(ledger)
    reconcile(ledger)
    expected = _expected(paths, authority, parties)
    return Report(summaries, coverage(ledger, expected, exclude, parties or ()))


def _expected(
    paths: Sequence[Path], authority: PublicKey, parties: Sequence[str] | None
) -> Expected:
    """The cities and brokers of the newest trust bundle version the (verified) bundles carry,
    with any other party the auditor asked for."""
    newest, named_in = None, Path()
    for path in paths:
        trust_dir = path / layout.TRUST_DIR
        latest = trust_versions(trust_dir, reader.signed_files(trust_dir, "v*.json"), authority)[-1]
        if newest is None or latest.version > newest.version:
            newest, named_in = latest, trust_dir / f"v{latest.version}.json"
    roles = {
        p.id: BUNDLE_ROLE[p.role.value]
        for p in (newest.parties.values() if newest else ())
        if p.role.value in BUNDLE_ROLE
    }
    for party in parties or ():
        roles.setdefault(party, "unknown")
    return Expected(roles, named_in)
