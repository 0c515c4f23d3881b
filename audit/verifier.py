"""The auditor's offline verifier of export bundles. Streams: memory does not grow with the log.

For each bundle it checks, stopping at the first failure (named by file and entry):
- every file and line is in canonical form, so no byte can change unnoticed;
- the trust bundle versions are signed by the federation authority the auditor pins;
- every checkpoint is signed by the log owner's key and its root is recomputed from the entries;
- every entry is a DSSE statement signed by the party it names, with a key in force when it was made;
- every released result obeyed the agreement it names (parties, purpose, dataset, fields, k).
Across bundles it reconciles brokers' receipts with cities' results (both ways) and reports a fork
when two checkpoints of one log disagree.
"""

from __future__ import annotations

import base64
import binascii
import json
import multiprocessing
import os
import re
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from audit import bundle as layout
from audit.cosign import verify_cosignature, witness_name
from audit.ledger import Bundle, Ledger, ReceiptRef, ResultRef, Witnessed
from audit.merkle import EMPTY_ROOT, CompactRange, leaf_hash
from audit.note import NoteError, NoteVerifier, checkpoint_body, parse_checkpoint, verify_note
from domain import agreement as agreement_doc
from domain import statements
from domain.agreement import Agreement, Appearance
from domain.errors import VerificationError
from domain.kinds import LogKind, Statement
from keys import dsse, timefmt, trust
from keys.ed25519 import PublicKey
from keys.trust import Role, TrustBundle

# Bundles of at least this many entries check their entries' signatures in worker processes (one
# per CPU) while this process reads, parses and checks everything else; smaller ones, inline.
PARALLEL_MIN_ENTRIES = 20_000
MAX_WORKERS = 8
_BATCH = 256  # signature checks sent to a worker at once
_IN_FLIGHT = 4  # batches in flight per worker, so memory stays bounded whatever the bundle size

_SHA256 = re.compile(r"sha256:[0-9a-f]{64}")
ROLE_OF_ORIGIN = {"node": Role.CITY, "broker": Role.BROKER}
# A node result must be receipted if the broker logged receipts this long after it.
RECEIPT_GRACE = timedelta(minutes=1)
# Each logged statement type: the payload field naming its signer, and the field saying when.
STATEMENTS: dict[str, tuple[str, str]] = {
    Statement.QUERY: ("broker", "issued_at"),
    Statement.DESCRIBE: ("broker", "issued_at"),
    Statement.RESULT: ("city", "issued_at"),
    Statement.REFUSAL: ("city", "issued_at"),
    Statement.RECEIPT: ("broker", "issued_at"),
    Statement.CONSENT_RECEIPT: ("city", "at"),
    Statement.CONSENT_BATCH: ("city", "at"),
    Statement.AGREEMENT_REVOCATION: ("revoked_by", "at"),
    Statement.COSIGNATURE: ("city", "at"),
}
# The kinds each statement type is logged under (node/answering.py, node/service.py,
# broker/exchange.py). A kind lies outside the Merkle leaf, so it is checked against its entry.
KINDS: dict[str, set[str]] = {
    Statement.QUERY: {LogKind.EXCHANGE, LogKind.REFUSAL},
    Statement.RESULT: {LogKind.EXCHANGE},
    Statement.REFUSAL: {LogKind.REFUSAL},
    Statement.RECEIPT: {LogKind.EXCHANGE},
    Statement.CONSENT_RECEIPT: {LogKind.CONSENT},
    Statement.CONSENT_BATCH: {LogKind.CONSENT},
    Statement.AGREEMENT: {LogKind.AGREEMENT},
    Statement.AGREEMENT_REVOCATION: {LogKind.AGREEMENT},
    Statement.COSIGNATURE: {LogKind.WITNESS},
}


class BundleError(VerificationError):
    """The first thing in a bundle that failed, with where it is."""

    default_reason = "BUNDLE_INVALID"

    def __init__(self, message: str, reason: str, file: Path, entry: int | None = None) -> None:
        where = f"{file}" + (f", entry {entry}" if entry is not None else "")
        super().__init__(f"{where}: {message}", reason=reason)
        self.file, self.entry, self.detail = file, entry, message


@dataclass
class BundleSummary:
    """What one bundle held; its results, receipts and checkpoints stay in the ledger."""

    path: Path
    origin: str
    party: str
    role: str
    size: int
    ledger: Ledger = field(repr=False)
    bundle: Bundle = field(repr=False)
    signatures_verified: int = 0
    checkpoints_verified: int = 0
    cosignatures_verified: int = 0
    result_count: int = 0
    receipt_count: int = 0
    dp_spent: dict[tuple[str, int], float] = field(default_factory=dict)

    def results(self) -> Iterator[ResultRef]:
        return self.ledger.results(self.bundle)

    def receipts(self) -> Iterator[ReceiptRef]:
        return self.ledger.receipts(self.bundle)

    def checkpoint_roots(self) -> dict[int, bytes]:
        return dict(self.ledger.checkpoint_roots(self.bundle))

    def to_json(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "origin": self.origin,
            "party": self.party,
            "role": self.role,
            "entries": self.size,
            "signatures_verified": self.signatures_verified,
            "checkpoints_verified": self.checkpoints_verified,
            "cosignatures_verified": self.cosignatures_verified,
            "results": self.result_count,
            "receipts": self.receipt_count,
        }


class _Keys:
    """Every key each party held, with its validity window, across all trust bundle versions."""

    def __init__(self, bundles: Sequence[TrustBundle]) -> None:
        self.bundles = bundles
        self._grants: dict[tuple[str, str], list[tuple[datetime, datetime, Ed25519PublicKey]]] = {}
        self.roles: dict[str, set[Role]] = {}
        for b in bundles:
            for p in b.parties.values():
                self.roles.setdefault(p.id, set()).add(p.role)
                for g in p.keys:
                    grants = self._grants.setdefault((p.id, g.public.keyid), [])
                    window = (g.not_before, g.not_after, g.public.crypto_key())
                    if not any(w[:2] == window[:2] for w in grants):
                        grants.append(window)

    def key_at(self, party: str, keyid: str, at: datetime) -> Ed25519PublicKey | None:
        """The party's key with this id in force at `at`, if any."""
        for start, end, key in self._grants.get((party, keyid), ()):
            if start <= at <= end:
                return key
        return None

    def verify(self, party: str, keyid: str, at: datetime, sig: bytes, message: bytes) -> bool:
        key = self.key_at(party, keyid, at)
        if key is None:
            return False
        try:
            key.verify(sig, message)
            return True
        except InvalidSignature:
            return False

    def public_keys(self, party: str) -> list[PublicKey]:
        seen: dict[str, PublicKey] = {}
        for b in self.bundles:
            p = b.parties.get(party)
            for g in p.keys if p else ():
                seen[g.public.keyid] = g.public
        return list(seen.values())

    def bundle_at(self, at: datetime) -> TrustBundle:
        """The newest version issued by `at` (the first one for earlier times)."""
        chosen = self.bundles[0]
        for b in self.bundles:
            if b.issued_at <= at:
                chosen = b
        return chosen


def _read_canonical_lines(path: Path, what: str) -> Iterator[tuple[int, dict[str, Any]]]:
    try:
        f = path.open("rb")
    except OSError as e:
        raise BundleError(
            f"cannot read {what}: {e.strerror}", "BUNDLE_FILE_MISSING", path
        ) from None
    with f:
        for number, raw in enumerate(f):
            try:
                obj = json.loads(raw)
            except ValueError:
                raise BundleError(
                    f"line {number + 1} is not JSON", "BUNDLE_LINE_MALFORMED", path, number
                ) from None
            if not isinstance(obj, dict) or layout.line(obj) != raw:
                raise BundleError(
                    f"line {number + 1} is not in canonical form",
                    "BUNDLE_LINE_MALFORMED",
                    path,
                    number,
                )
            yield number, obj


def _canonical_envelope(path: Path) -> dsse.Envelope:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise BundleError(f"cannot read: {e.strerror}", "BUNDLE_FILE_MISSING", path) from None
    try:
        env = dsse.Envelope.from_json(data)
    except VerificationError as e:
        raise BundleError(e.message, "ENVELOPE_MALFORMED", path) from None
    if env.to_json() != data:
        raise BundleError("not in canonical form", "BUNDLE_FILE_MALFORMED", path)
    return env


def _strict_b64(text: Any, path: Path, number: int) -> bytes:
    try:
        if not isinstance(text, str):
            raise ValueError
        data = base64.b64decode(text, validate=True)
    except (ValueError, binascii.Error):
        raise BundleError("entry is not base64", "BUNDLE_LINE_MALFORMED", path, number) from None
    if layout.b64(data) != text:
        raise BundleError("entry base64 is not canonical", "BUNDLE_LINE_MALFORMED", path, number)
    return data


def _load_trust(root: Path, authority: PublicKey) -> list[TrustBundle]:
    directory = root / layout.TRUST_DIR
    files = sorted(directory.glob("v*.json")) if directory.is_dir() else []
    if not files:
        raise BundleError("the bundle carries no trust bundle", "TRUST_BUNDLE_MISSING", directory)
    bundles = []
    for path in files:
        env = _canonical_envelope(path)
        try:
            b = trust.verify_bundle(env, authority)
        except VerificationError as e:
            raise BundleError(e.message, e.reason, path) from None
        if path.name != f"v{b.version}.json":
            raise BundleError(f"holds version {b.version}", "TRUST_BUNDLE_MISNAMED", path)
        bundles.append(b)
    return sorted(bundles, key=lambda b: b.version)


def _load_agreements(root: Path, keys: _Keys) -> dict[tuple[str, int], Agreement]:
    directory = root / layout.AGREEMENTS_DIR
    found: dict[tuple[str, int], Agreement] = {}
    for path in sorted(directory.glob("*.json")) if directory.is_dir() else []:
        env = _canonical_envelope(path)
        try:
            starts = timefmt.parse(json.loads(env.payload)["valid_from"])
            a = agreement_doc.verify(env, keys.bundle_at(starts))
        except (VerificationError, ValueError, KeyError, TypeError) as e:
            raise BundleError(
                getattr(e, "message", "agreement is malformed"),
                getattr(e, "reason", "AGREEMENT_MALFORMED"),
                path,
            ) from None
        if path.name != f"{a.agreement_id}-v{a.version}.json":
            raise BundleError("file name does not match the agreement", "AGREEMENT_MISNAMED", path)
        found[(a.agreement_id, a.version)] = a
    return found


def _check_result(
    result: dict[str, Any],
    agreements: dict[tuple[str, int], Agreement],
    path: Path,
    number: int,
    dp_spent: dict[tuple[str, int], float],
) -> None:
    """A released result must stay within the agreement it names, and within its privacy budget."""

    def fail(message: str) -> BundleError:
        return BundleError(message, "RESULT_BREAKS_AGREEMENT", path, number)

    ref = result["agreement"]
    a = agreements.get((str(ref["id"]), int(ref["version"])))
    if a is None:
        raise BundleError(
            f"names agreement {ref['id']} v{ref['version']}, not in the bundle",
            "AGREEMENT_MISSING",
            path,
            number,
        )
    issued = timefmt.parse(result["issued_at"])
    if (a.provider, a.consumer) != (result["city"], result["partner"]):
        raise fail("released between parties other than the agreement's")
    if not a.valid_from <= issued < a.valid_until:
        raise fail("released outside the agreement's validity window")
    if result["purpose"] not in a.purposes:
        raise fail(f"purpose {result['purpose']} is not in the agreement")
    terms = a.datasets.get(result["dataset"])
    if terms is None:
        raise fail(f"dataset {result['dataset']} is not in the agreement")
    if int(result["min_cell_size"]) < a.min_cell_size:
        raise fail(f"k = {result['min_cell_size']} is below the agreement's {a.min_cell_size}")
    for cell in [*result["cells"], *({"key": k, "values": {}} for k in result["withheld"])]:
        for f in cell["key"]:
            t = terms.get(f)
            if t is None or t.appearance is Appearance.AGGREGATE_ONLY:
                raise fail(f"field {f} appears as a group, which the agreement does not allow")
        for name in cell["values"]:
            inner = name[name.find("(") + 1 : -1] if "(" in name else None
            if inner is not None and inner not in terms:
                raise fail(f"measure {name} uses a field outside the agreement")
    if a.dp is not None:
        stated = result.get("privacy") or {}
        spent = stated.get("epsilon")
        if spent != a.dp.epsilon_per_query:
            raise fail("released without the differential privacy the agreement requires")
        bound = stated.get("records_per_resident")
        if stated.get("unit") == "resident" and bound != a.dp.records_per_resident:
            raise fail(
                f"noise for {bound} records per resident, the agreement says "
                f"{a.dp.records_per_resident}"
            )
        key = (a.agreement_id, a.version)
        dp_spent[key] = dp_spent.get(key, 0.0) + float(spent)
        if dp_spent[key] > a.dp.total_epsilon + 1e-9:
            raise fail(f"released beyond the agreement's privacy budget of {a.dp.total_epsilon}")


# One signature check for a worker: for each signer, the (raw public key, signature) pairs that
# may carry its signature (its keys in force at the time, by key id), and the signed message.
_SigJob = tuple[tuple[tuple[tuple[bytes, bytes], ...], ...], bytes]
_worker_keys: dict[bytes, Ed25519PublicKey] = {}


def _check_batch(jobs: list[_SigJob]) -> tuple[int, int] | None:
    """In a worker process: (job, signer) of the first signer without a valid signature, or None."""
    for j, (signers, message) in enumerate(jobs):
        for s, candidates in enumerate(signers):
            if not any(_verify_raw(raw, sig, message) for raw, sig in candidates):
                return j, s
    return None


def _verify_raw(raw: bytes, sig: bytes, message: bytes) -> bool:
    key = _worker_keys.get(raw)
    if key is None:
        key = _worker_keys[raw] = Ed25519PublicKey.from_public_bytes(raw)
    try:
        key.verify(sig, message)
        return True
    except InvalidSignature:
        return False


def _default_workers(size: int) -> int:
    if size < PARALLEL_MIN_ENTRIES:
        return 1
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, MAX_WORKERS))


class _SignatureChecks:
    """The entries' signature checks, inline or in worker processes.

    Either way the bundle fails at its first bad entry, with the same error: with workers, an
    error found while the checks of earlier entries are still running is raised only once they
    have all passed (`first_failure`), and a bad signature is reported for the entry it is in.
    """

    def __init__(self, keys: _Keys, path: Path, workers: int) -> None:
        self._keys, self._path = keys, path
        self._pool = (
            ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
            if workers > 1
            else None
        )
        self._limit = _IN_FLIGHT * workers
        self._jobs: list[_SigJob] = []
        self._where: list[tuple[int, str, list[str], datetime]] = []
        self._in_flight: deque[
            tuple[Future[tuple[int, int] | None], list[tuple[int, str, list[str], datetime]]]
        ] = deque()
        self._raw: dict[int, bytes] = {}
        self._failure: BundleError | None = None

    def __enter__(self) -> _SignatureChecks:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def require(
        self,
        number: int,
        thing: str,
        signers: list[str],
        at: datetime,
        sigs: list[tuple[str, bytes]],
        message: bytes,
    ) -> None:
        """Each signer must have signed `message` with a key in force at `at`."""
        if self._pool is None:
            for signer in signers:
                if not any(
                    self._keys.verify(signer, keyid, at, sig, message) for keyid, sig in sigs
                ):
                    raise self._error(number, thing, signer, at)
            return
        candidates = []
        for signer in signers:
            mine = []
            for keyid, sig in sigs:
                key = self._keys.key_at(signer, keyid, at)
                if key is not None:
                    raw = self._raw.get(id(key))
                    if raw is None:
                        raw = self._raw[id(key)] = key.public_bytes_raw()
                    mine.append((raw, sig))
            candidates.append(tuple(mine))
        self._jobs.append((tuple(candidates), message))
        self._where.append((number, thing, signers, at))
        if len(self._jobs) >= _BATCH:
            self._submit()

    def _submit(self) -> None:
        assert self._pool is not None
        if self._jobs:
            self._in_flight.append((self._pool.submit(_check_batch, self._jobs), self._where))
            self._jobs, self._where = [], []
        while len(self._in_flight) > self._limit:
            self._settle_oldest()

    def _settle_oldest(self) -> None:
        future, where = self._in_flight.popleft()
        failed = future.result()
        if failed is not None:
            number, thing, signers, at = where[failed[0]]
            self._failure = self._error(number, thing, signers[failed[1]], at)
            raise self._failure

    def drain(self) -> None:
        """Wait for every check required so far; raise for the first that failed."""
        if self._failure is not None:
            raise self._failure
        if self._pool is None:
            return
        self._submit()
        while self._in_flight:
            self._settle_oldest()

    def first_failure(self) -> BundleError | None:
        """After an error: the bad signature of an earlier entry (or this one), if there is one."""
        try:
            self.drain()
        except BundleError as e:
            return e
        return None

    def _error(self, number: int, thing: str, signer: str, at: datetime) -> BundleError:
        return BundleError(
            f"{thing} lacks a valid signature of {signer} with a key in force at {timefmt.fmt(at)}",
            "SIGNATURE_INVALID",
            self._path,
            number,
        )


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
    try:
        raw = manifest_path.read_bytes()
        manifest = json.loads(raw)
    except OSError as e:
        raise BundleError(
            f"cannot read manifest: {e.strerror}", "BUNDLE_FILE_MISSING", manifest_path
        ) from None
    except ValueError:
        raise BundleError("manifest is not JSON", "BUNDLE_FILE_MALFORMED", manifest_path) from None
    keys_expected = {"format", "origin", "party", "role", "size"}
    if (
        not isinstance(manifest, dict)
        or set(manifest) != keys_expected
        or layout.line(manifest) != raw
        or manifest["format"] != layout.FORMAT
        or not isinstance(manifest["size"], int)
    ):
        raise BundleError(
            f"manifest is not a {layout.FORMAT} manifest", "BUNDLE_FILE_MALFORMED", manifest_path
        )
    origin, party, role, size = (
        str(manifest["origin"]),
        str(manifest["party"]),
        str(manifest["role"]),
        manifest["size"],
    )
    expected_role = ROLE_OF_ORIGIN.get(role)
    if expected_role is None or origin != f"citybroker/{role}/{party}":
        raise BundleError(
            f"origin {origin!r} does not name a {role} log of {party}",
            "BUNDLE_ORIGIN_MISMATCH",
            manifest_path,
        )
    keys = _Keys(_load_trust(root, authority))
    if expected_role not in keys.roles.get(party, set()):
        raise BundleError(
            f"{party} is not a {expected_role.value} in the trust bundle",
            "SIGNER_UNKNOWN",
            manifest_path,
        )
    verifiers = [NoteVerifier.for_key(origin, k) for k in keys.public_keys(party)]
    ledger = Ledger() if ledger is None else ledger
    summary = BundleSummary(
        root, origin, party, role, size, ledger, ledger.add_bundle(root, origin, party, role)
    )
    agreements = _load_agreements(root, keys)

    # Checkpoints go to the ledger as they verify; only the last one is kept here.
    last: tuple[int, bytes] | None = None
    cp_path = root / layout.CHECKPOINTS
    for number, obj in _read_canonical_lines(cp_path, "checkpoints"):
        try:
            body = verify_note(str(obj["note"]), verifiers)
            cp_origin, cp_size, cp_root = parse_checkpoint(body)
        except (NoteError, KeyError) as e:
            raise BundleError(
                getattr(e, "message", "checkpoint line lacks a note"),
                "CHECKPOINT_INVALID",
                cp_path,
                number,
            ) from None
        summary.signatures_verified += 1
        if cp_origin != origin:
            raise BundleError(
                f"checkpoint is for origin {cp_origin!r}, not {origin!r}",
                "CHECKPOINT_ORIGIN_MISMATCH",
                cp_path,
                number,
            )
        if cp_size != obj.get("size"):
            raise BundleError(
                "line size differs from the signed size", "CHECKPOINT_INVALID", cp_path, number
            )
        if last is not None and last[0] == cp_size and last[1] != cp_root:
            raise BundleError(
                f"two checkpoints of size {cp_size} with different roots",
                "LOG_FORK",
                cp_path,
                number,
            )
        if last is not None and cp_size <= last[0]:
            raise BundleError(
                "checkpoints are not in increasing size order", "CHECKPOINT_ORDER", cp_path, number
            )
        ledger.add_checkpoint(summary.bundle, cp_size, cp_root)
        last = (cp_size, cp_root)
    if last is None or last[0] != size:
        raise BundleError(
            f"no checkpoint covers the manifest size {size}", "CHECKPOINT_MISSING", cp_path
        )

    entries_path = root / layout.ENTRIES
    tree = CompactRange()
    no_more = (-1, b"")

    def following(size: int) -> tuple[int, bytes]:
        return ledger.next_checkpoint(summary.bundle, size) or no_more

    next_cp = following(-1)
    while next_cp[0] == 0:
        if next_cp[1] != EMPTY_ROOT:
            raise BundleError(
                "checkpoint of the empty log has a non-empty root", "LOG_FORK", cp_path
            )
        summary.checkpoints_verified += 1
        next_cp = following(0)
    workers = _default_workers(size) if workers is None else max(1, workers)
    with _SignatureChecks(keys, entries_path, workers) as checks:
        try:
            for number, obj in _read_canonical_lines(entries_path, "entries"):
                if number >= size:
                    raise BundleError(
                        "more entries than the signed log holds",
                        "ENTRY_EXTRA",
                        entries_path,
                        number,
                    )
                if obj.get("index") != number or not isinstance(obj.get("kind"), str):
                    raise BundleError(
                        f"expected entry index {number}", "ENTRY_OUT_OF_ORDER", entries_path, number
                    )
                entry = _strict_b64(obj.get("entry"), entries_path, number)
                tree.append(leaf_hash(entry))
                summary.signatures_verified += _verify_entry(
                    entry, str(obj["kind"]), number, keys, summary, agreements, entries_path, checks
                )
                if tree.size == next_cp[0]:
                    if tree.root() != next_cp[1]:
                        raise BundleError(
                            f"entries up to here do not give the root signed for size {tree.size}",
                            "CHECKPOINT_ROOT_MISMATCH",
                            entries_path,
                            number,
                        )
                    summary.checkpoints_verified += 1
                    next_cp = following(tree.size)
                if progress and number % 1000 == 0:
                    progress(number, size)
            checks.drain()
        except Exception as failure:
            # Signature checks still running belong to earlier entries (or this one, whose
            # signature comes first): a bad one among them is the first failure.
            first = checks.first_failure()
            if first is not None and first is not failure:
                raise first from None
            raise
    if tree.size != size:
        raise BundleError(
            f"{tree.size} entries, but the log signed {size}",
            "ENTRY_MISSING",
            entries_path,
            tree.size,
        )
    _verify_cosignatures(root / layout.COSIGNATURES, origin, keys, summary)
    if progress:
        progress(size, size)
    return summary


def _verify_cosignatures(path: Path, origin: str, keys: _Keys, summary: BundleSummary) -> None:
    """Each cosignature must be a city's valid cosignature of a checkpoint in this bundle."""
    for number, obj in _read_canonical_lines(path, "cosignatures"):
        size, city, line = obj.get("size"), str(obj.get("witness")), obj.get("cosignature")
        root = summary.ledger.root(summary.bundle, size) if isinstance(size, int) else None
        if root is None or not isinstance(line, str):
            raise BundleError(
                "cosigns no checkpoint of this bundle", "COSIGNATURE_INVALID", path, number
            )
        assert isinstance(size, int)
        body = checkpoint_body(origin, size, root)
        for public in keys.public_keys(city) if Role.CITY in keys.roles.get(city, ()) else []:
            try:
                verify_cosignature(line, body, witness_name(city), public)
                break
            except NoteError:
                continue
        else:
            raise BundleError(
                f"not a valid cosignature by city {city}", "COSIGNATURE_INVALID", path, number
            )
        summary.signatures_verified += 1
        summary.cosignatures_verified += 1
        summary.ledger.add_cosignature(summary.bundle, city, size)


def _verify_entry(
    entry: bytes,
    kind: str,
    number: int,
    keys: _Keys,
    summary: BundleSummary,
    agreements: dict[tuple[str, int], Agreement],
    path: Path,
    checks: _SignatureChecks,
) -> int:
    """Verify one logged statement; return how many signatures were checked."""

    def fail(message: str, reason: str) -> BundleError:
        return BundleError(message, reason, path, number)

    try:
        env = json.loads(entry)
        ptype = env["payloadType"]
        payload = base64.b64decode(env["payload"], validate=True)
        sigs = [(s["keyid"], base64.b64decode(s["sig"], validate=True)) for s in env["signatures"]]
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise fail("entry is not a DSSE envelope", "ENVELOPE_MALFORMED") from None
    if not isinstance(ptype, str) or not ptype.startswith(dsse.MEDIA_PREFIX):
        raise fail(f"unknown statement type {ptype!r}", "STATEMENT_UNKNOWN")
    thing = ptype.removeprefix(dsse.MEDIA_PREFIX).removesuffix("+json")
    message = dsse.pae(ptype, payload)
    try:
        unverified = json.loads(payload)
        if thing == Statement.AGREEMENT:
            signers = [str(unverified["provider"]), str(unverified["consumer"])]
            at = timefmt.parse(unverified["valid_from"])
        else:
            signer_field, time_field = STATEMENTS[thing]
            signers = [str(unverified[signer_field])]
            at = timefmt.parse(unverified[time_field])
    except KeyError:
        raise fail(f"unknown or malformed {thing} statement", "STATEMENT_UNKNOWN") from None
    except (ValueError, TypeError):
        raise fail(f"{thing} payload is malformed", "PAYLOAD_MALFORMED") from None
    if kind not in KINDS.get(thing, ()):
        raise fail(f"a {thing} statement is not logged as kind {kind!r}", "ENTRY_KIND_MISMATCH")
    checks.require(number, thing, signers, at, sigs, message)
    # Verified from here on; with worker processes, possibly still being verified, and then an
    # error below is raised only once this entry's signatures (and all before) have verified.
    statement = unverified
    try:
        if thing == "result":
            if statement["city"] != summary.party:
                raise fail("a city's log holds another city's result", "STATEMENT_MISPLACED")
            _check_result(statement, agreements, path, number, summary.dp_spent)
            summary.result_count += 1
            summary.ledger.add_result(
                summary.bundle,
                ResultRef(
                    summary.party,
                    str(statement["broker"]),
                    str(statement["request_id"]),
                    statements.digest(payload),
                    number,
                    at,
                ),
            )
        elif thing == "receipt":
            if statement["broker"] != summary.party:
                raise fail("a broker's log holds another broker's receipt", "STATEMENT_MISPLACED")
            for c in statement["cities"]:
                if c["result_digest"]:
                    summary.receipt_count += 1
                    summary.ledger.add_receipt(
                        summary.bundle,
                        ReceiptRef(
                            summary.party,
                            str(c["city"]),
                            str(statement["request_id"]),
                            str(c["result_digest"]),
                            int(c["node_log_index"]),
                            at,
                        ),
                    )
        elif thing == "consent-batch":
            _check_consent_batch(statement, summary.party, fail)
        elif thing == "cosignature":
            if statement["city"] != summary.party:
                raise fail("a city's log holds another city's cosignature", "STATEMENT_MISPLACED")
            summary.ledger.add_witnessed(
                summary.bundle,
                Witnessed(
                    summary.party,
                    str(statement["origin"]),
                    int(statement["tree_size"]),
                    base64.b64decode(statement["root"], validate=True),
                    str(statement["cosignature"]),
                    number,
                ),
            )
    except (KeyError, TypeError, ValueError, binascii.Error):
        raise fail(f"{thing} payload is malformed", "PAYLOAD_MALFORMED") from None
    return len(signers)


def _check_consent_batch(
    statement: dict[str, Any], party: str, fail: Callable[[str, str], BundleError]
) -> None:
    """A bulk consent import's statement (node.consent_import): the city's own, and a list of
    SHA-256 digests, one per imported event's receipt payload."""
    if statement["city"] != party:
        raise fail("a city's log holds another city's consent batch", "STATEMENT_MISPLACED")
    digests = statement["receipts"]
    if not isinstance(digests, list) or not all(
        isinstance(d, str) and _SHA256.fullmatch(d) for d in digests
    ):
        raise fail("consent-batch receipts must be sha256:<64 hex digits>", "PAYLOAD_MALFORMED")


@dataclass
class Report:
    bundles: list[BundleSummary]

    @property
    def signatures_verified(self) -> int:
        return sum(b.signatures_verified for b in self.bundles)

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": True,
            "signatures_verified": self.signatures_verified,
            "bundles": [b.to_json() for b in self.bundles],
        }


def reconcile(ledger: Ledger) -> None:
    """Cross-bundle checks over every bundle in `ledger`: forks between exports of one log,
    brokers' receipts against cities' results (both ways)."""
    fork = ledger.fork()
    if fork is not None:
        later, earlier, size = fork
        raise BundleError(
            f"log {later.origin} signed two different trees of size {size} "
            f"(also in {earlier.path})",
            "LOG_FORK",
            later.path,
        )
    for broker in ledger.bundles():
        if broker.role != "broker":
            continue
        unmatched = ledger.witnessed_unmatched(broker)
        if unmatched is not None:
            node, w, problem = unmatched
            if problem == "uncosigned":
                raise BundleError(
                    f"{w.city} logged (its entry {w.index} in {node.path}) that it cosigned "
                    f"size {w.size} of this log; this bundle holds no cosignature of that "
                    "size by it",
                    "COSIGNATURE_MISSING",
                    broker.path / layout.COSIGNATURES,
                )
            raise BundleError(
                f"{w.city} cosigned size {w.size} of {broker.origin} with root "
                f"{base64.b64encode(w.root).decode()}; this bundle has "
                + ("no checkpoint of that size" if problem == "missing" else "another root"),
                "LOG_FORK" if problem == "fork" else "CHECKPOINT_MISSING",
                node.path,
                w.index,
            )
        receipt = ledger.receipt_without_result(broker)
        if receipt is not None:
            raise BundleError(
                f"receipt {receipt.request_id} names a result of {receipt.city} at log index "
                f"{receipt.node_log_index} that its log does not hold",
                "RECEIPT_RESULT_MISSING",
                broker.path,
            )
        unreceipted = ledger.result_without_receipt(broker, RECEIPT_GRACE)
        if unreceipted is not None:
            node, result = unreceipted
            raise BundleError(
                f"result {result.request_id} released to {broker.party} has no receipt in its log",
                "RESULT_NOT_RECEIPTED",
                node.path,
                result.index,
            )


def verify_bundles(
    paths: Sequence[Path],
    authority: PublicKey,
    progress: Callable[[Path, int, int], None] | None = None,
) -> Report:
    """Verify each bundle, then reconcile them with each other."""

    def per_bundle(path: Path) -> Callable[[int, int], None] | None:
        if progress is None:
            return None
        report = progress
        return lambda done, total: report(path, done, total)

    ledger = Ledger()
    summaries = [verify_bundle(p, authority, per_bundle(p), ledger=ledger) for p in paths]
    reconcile(ledger)
    return Report(summaries)
