"""What a set of bundles covers of a federation's logs, and what it leaves out.

A bundle shows only as much of a log as its owner chose to export, so no bundle can prove by
itself that nothing came after its newest checkpoint. The other parties' logs can: a city logs
every broker checkpoint it cosigned (audit.witness); a broker's receipts name the index at which
each city logged the result it received; and a broker logs each city's checkpoint its witnessing
round checked (audit.city_checkpoint), which vouches for what the city logged after the last
result the broker received (consent events, agreement changes, other exchanges). Verified
together, every party's log must reach the largest size any other party witnessed or referenced
for it (else `LOG_TRUNCATED`), a city checkpoint a broker recorded must be in the city's bundle
with the same root (else `LOG_FORK`, or `CHECKPOINT_MISSING` if it has no checkpoint of that size),
and every party that keeps a log in the trust bundle in force must be there, unless the auditor
leaves it out by name (else `PARTY_MISSING`). The report says which parties and sizes were covered.

Results a city released after the broker stopped waiting for it (the broker's receipt says it
timed out or lost the call) are listed as released but not delivered, not failed.

Pure: questions to the verifier's ledger, values out, `BundleError` for what fails; no I/O.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from audit import bundle as layout
from audit.checks import BundleError
from audit.ledger import Bundle, Ledger

# What the trust bundle calls a party, and what its log's bundles call it.
BUNDLE_ROLE = {"city": "node", "broker": "broker"}
COVERED, EXCLUDED, NOT_REQUESTED = "covered", "excluded", "not requested"


@dataclass(frozen=True)
class Seen:
    """The largest size of a party's log another party's log vouches for, and where."""

    size: int
    by: str
    # "cosigned" (a city's cosignature entry), "receipted" (a broker's receipt) or "witnessed"
    # (a broker's record of the city's checkpoint)
    how: str
    bundle: Path
    entry: int


@dataclass(frozen=True)
class PartyCoverage:
    """One party's log as the verified bundles cover it (size None: no bundle of it)."""

    party: str
    role: str
    status: str
    size: int | None = None
    bundles: tuple[Path, ...] = ()
    cosigned_by: tuple[str, ...] = ()  # witnesses of the newest checkpoint, in its bundle
    seen: Seen | None = None

    def to_json(self) -> dict[str, Any]:
        """The party's line in the report."""
        return {
            "party": self.party,
            "role": self.role,
            "status": self.status,
            "size": self.size,
            "bundles": [str(p) for p in self.bundles],
            "newest_checkpoint_cosigned_by": list(self.cosigned_by),
            "largest_size_seen_by_others": None if self.seen is None else self.seen.size,
            "seen_by": None if self.seen is None else self.seen.by,
            "seen_how": None if self.seen is None else self.seen.how,
        }


@dataclass(frozen=True)
class Undelivered:
    """A result a city released and logged after the broker had stopped waiting for it."""

    city: str
    broker: str
    request_id: str
    log_index: int
    receipt_status: str

    def to_json(self) -> dict[str, Any]:
        """The result's line in the report."""
        return {
            "city": self.city,
            "broker": self.broker,
            "request_id": self.request_id,
            "log_index": self.log_index,
            "receipt_status": self.receipt_status,
        }


@dataclass(frozen=True)
class Coverage:
    """Every party the verification expected or was given, and the undelivered results."""

    parties: tuple[PartyCoverage, ...]
    undelivered: tuple[Undelivered, ...]

    def to_json(self) -> dict[str, Any]:
        """The coverage part of the report."""
        return {
            "parties": [p.to_json() for p in self.parties],
            "released_not_delivered": [u.to_json() for u in self.undelivered],
        }


@dataclass(frozen=True)
class Expected:
    """The parties a federation verification expects, by party id: their bundle role
    ("node"/"broker"), and the trust bundle file that names them (to point a failure at)."""

    roles: Mapping[str, str]
    named_in: Path


def _by_party(ledger: Ledger) -> dict[str, list[Bundle]]:
    found: dict[str, list[Bundle]] = {}
    for b in ledger.bundles():
        found.setdefault(b.party, []).append(b)
    return found


def _vouched(ledger: Ledger, party: str, role: str, origin: str) -> list[Seen]:
    """For each way other parties' verified logs vouch for `party`'s log, the largest size
    vouched for, in the order they are checked."""
    found = []
    if role == "broker":
        witnessed = ledger.largest_witnessed(origin)
        if witnessed is not None:
            city_bundle, size, entry = witnessed
            found.append(Seen(size, city_bundle.party, "cosigned", city_bundle.path, entry))
        return found
    referenced = ledger.largest_referenced(party)
    if referenced is not None:
        broker_bundle, index = referenced
        # The result sits at `index`, so the city's log held at least index + 1 entries.
        found.append(Seen(index + 1, broker_bundle.party, "receipted", broker_bundle.path, index))
    recorded = ledger.largest_recorded(origin)
    if recorded is not None:
        broker_bundle, size, entry = recorded
        found.append(Seen(size, broker_bundle.party, "witnessed", broker_bundle.path, entry))
    return found


def seen_by_others(ledger: Ledger, party: str, role: str, origin: str) -> Seen | None:
    """The largest size of `party`'s log that another party's verified log vouches for."""
    return max(_vouched(ledger, party, role, origin), key=lambda s: s.size, default=None)


def _how(seen: Seen) -> str:
    if seen.how == "cosigned":
        return f"logged (its entry {seen.entry} in {seen.bundle}) that it cosigned size {seen.size}"
    if seen.how == "receipted":
        return (
            f"receipted a result at index {seen.entry} of it (in {seen.bundle}), so it "
            f"held at least {seen.size} entries"
        )
    return (
        f"logged (its entry {seen.entry} in {seen.bundle}) that it witnessed this log's "
        f"checkpoint of size {seen.size}, signed by its owner"
    )


def check_truncation(ledger: Ledger) -> None:
    """Every party's log, in the largest of its bundles, must reach every size another party
    witnessed or referenced for it; fails with LOG_TRUNCATED naming both and the sizes.
    Forks are left to `audit.checks.reconcile`, which names them better."""
    if ledger.fork() is not None:
        return
    for party, bundles in _by_party(ledger).items():
        longest = max(bundles, key=ledger.extent)
        size = ledger.extent(longest)
        for seen in _vouched(ledger, party, longest.role, longest.origin):
            if seen.size > size:
                raise BundleError(
                    f"{longest.role} {party}'s log ends at size {size} in every bundle given, "
                    f"but {seen.by} {_how(seen)}",
                    "LOG_TRUNCATED",
                    longest.path / layout.CHECKPOINTS,
                )


def check_recorded(ledger: Ledger) -> None:
    """Every city checkpoint a broker recorded, up to the size of a bundle of that city's log,
    must be one of that bundle's checkpoints, with the same root: else LOG_FORK (the city signed
    two trees of one size: the note in the broker's log is the city's, checked when the broker's
    bundle was verified) or CHECKPOINT_MISSING (the bundle lacks that checkpoint). Forks between
    bundles are left to `audit.checks.reconcile`."""
    if ledger.fork() is not None:
        return
    for node in ledger.bundles():
        if node.role != "node":
            continue
        unmatched = ledger.recorded_unmatched(node)
        if unmatched is None:
            continue
        broker, r, problem = unmatched
        where = f"{r.broker} recorded (its entry {r.index} in {broker.path}) {r.city}'s checkpoint"
        if problem == "fork":
            raise BundleError(
                f"{where} of size {r.size} with root {base64.b64encode(r.root).decode()}, "
                f"signed by {r.city}; this bundle's checkpoint of that size has another root",
                "LOG_FORK",
                node.path / layout.CHECKPOINTS,
            )
        raise BundleError(
            f"{where} of size {r.size}; this bundle has no checkpoint of that size",
            "CHECKPOINT_MISSING",
            node.path / layout.CHECKPOINTS,
        )


def coverage(
    ledger: Ledger, expected: Expected, exclude: Iterable[str], requested: Sequence[str] = ()
) -> Coverage:
    """What the bundles cover; fails with PARTY_MISSING for an expected party with no bundle
    that the auditor did not leave out. `requested`: the parties of the trust bundle the
    auditor asked for, if not all (the others are reported as not requested)."""
    left_out = set(exclude)
    given = _by_party(ledger)
    for party, role in sorted(expected.roles.items()):
        if party not in given and party not in left_out and (not requested or party in requested):
            raise BundleError(
                f"no bundle of {role} {party}, which the trust bundle in force names; give its "
                "bundle, or leave it out by name (--exclude)",
                "PARTY_MISSING",
                expected.named_in,
            )
    lines = []
    for party in sorted({*expected.roles, *given}):
        bundles = given.get(party)
        if bundles is None:
            status = EXCLUDED if party in left_out else NOT_REQUESTED
            lines.append(PartyCoverage(party, expected.roles[party], status))
            continue
        longest = max(bundles, key=ledger.extent)
        size = ledger.extent(longest)
        lines.append(
            PartyCoverage(
                party,
                longest.role,
                COVERED,
                size,
                tuple(b.path for b in bundles),
                tuple(ledger.cosigners(longest, size)),
                seen_by_others(ledger, party, longest.role, longest.origin),
            )
        )
    undelivered = tuple(
        Undelivered(r.city, broker.party, r.request_id, r.index, status)
        for _, r, broker, status in ledger.undelivered_results()
    )
    return Coverage(tuple(lines), undelivered)
