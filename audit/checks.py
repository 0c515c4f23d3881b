"""The verifier's rules: pure checks over the bytes and parsed lines of an export bundle.

I/O boundary: nothing here opens a file, lists a directory or starts a process. The caller
(audit.verifier) reads the bundle with audit.bundle_reader and hands over bytes and parsed
lines; signatures may be checked elsewhere (audit.parallel) between `BundleChecks.entry` and
`BundleChecks.entry_signed`. Paths appear only as values, to name where a failure is. What the
rules must remember across lines (checkpoints, results, receipts, cosignatures) goes to the
caller's `Ledger`, which keeps memory flat whatever the bundle size.

Every rule fails closed, with a `BundleError` naming the file and entry of the first failure.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from audit import bundle as layout
from audit import city_checkpoint
from audit.cosign import verify_cosignature, witness_name
from audit.ledger import Bundle, Ledger, ReceiptRef, Recorded, ResultRef, Witnessed
from audit.merkle import EMPTY_ROOT, CompactRange, leaf_hash
from audit.note import NoteError, NoteVerifier, checkpoint_body, parse_checkpoint, verify_note
from domain import agreement as agreement_doc
from domain import commitment, statements
from domain.agreement import Agreement, Appearance, CellKeyTerms, FieldTerms, Regime
from domain.errors import VerificationError
from domain.kinds import LogKind, Statement
from keys import bounded_json, dsse, timefmt, trust
from keys.ed25519 import PublicKey
from keys.trust import Role, TrustBundle

_SHA256 = re.compile(r"sha256:[0-9a-f]{64}")
ROLE_OF_ORIGIN = {"node": Role.CITY, "broker": Role.BROKER}
# A node result must be receipted if the broker logged receipts this long after it.
RECEIPT_GRACE = timedelta(minutes=1)
# Receipt statuses (broker.outcomes) by which the broker says it received no result from a city
# because it stopped waiting for it (deadline) or lost the call: a result the city logged for
# that exchange was released but not delivered, and is reported, not failed.
STOPPED_WAITING = frozenset({"timed_out", "failed"})
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
    Statement.WITNESSED_CHECKPOINT: ("broker", "at"),
    Statement.COMMITMENT: ("city", "at"),
}
# The kinds each statement type is logged under (node/answering.py, node/consent_evidence.py,
# node/agreements.py, audit/witness.py, broker/exchange.py, broker/city_logs.py). A kind lies
# outside the Merkle leaf, so it is checked against its entry.
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
    Statement.WITNESSED_CHECKPOINT: {LogKind.WITNESS},
    # A resident-level statement's salted commitment (node/consent_evidence.py, audit.openings).
    # A commitment to an exchange's statement is logged under that statement's kinds.
    Statement.COMMITMENT: {LogKind.CONSENT},
}
# The statements of an exchange, which a log may hold as commitments (domain.commitment).
EXCHANGE_STATEMENTS = frozenset({Statement.QUERY, Statement.RESULT, Statement.REFUSAL})


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
    # Committed entries (audit.openings): how many, opened for `personal_data_for`, erased.
    commitments: int = 0
    # Exchanges about single residents logged as commitments: at a node, its committed results
    # and refusals; at a broker, its receipts naming a committed query or result. Reconciled by
    # commitment and log index; their statements are checked only when opened.
    committed_exchanges: int = 0
    openings_verified: int = 0
    erased_entries: int = 0
    erased_members: int = 0
    personal_data_for: str = ""

    def results(self) -> Iterator[ResultRef]:
        """The bundle's verified results, in log order."""
        return self.ledger.results(self.bundle)

    def receipts(self) -> Iterator[ReceiptRef]:
        """The bundle's verified receipt lines, in log order."""
        return self.ledger.receipts(self.bundle)

    def checkpoint_roots(self) -> dict[int, bytes]:
        """The root of each verified checkpoint, by tree size."""
        return dict(self.ledger.checkpoint_roots(self.bundle))

    def to_json(self) -> dict[str, Any]:
        """The summary as `citybroker audit verify` prints it."""
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
            "commitments": self.commitments,
            "committed_exchanges": self.committed_exchanges,
            "openings_verified": self.openings_verified,
            "erased_entries": self.erased_entries,
            "erased_batch_members": self.erased_members,
            "personal_data_for": self.personal_data_for,
        }


class Keys:
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
        """True only if `sig` over `message` is the party's, by a key in force at `at`."""
        key = self.key_at(party, keyid, at)
        if key is None:
            return False
        try:
            key.verify(sig, message)
            return True
        except InvalidSignature:
            return False

    def public_keys(self, party: str) -> list[PublicKey]:
        """Every key the party held in any version, once each."""
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


# -- files and lines -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Manifest:
    """A bundle's manifest, checked for form; its authority is the checkpoints, never itself."""

    origin: str
    party: str
    role: str
    size: int
    expected_role: Role


def check_manifest(raw: bytes, path: Path) -> Manifest:
    """The manifest in `raw`, if it is canonical and names a log of a node or broker."""
    try:
        manifest = bounded_json.loads(raw, "the manifest")
    except ValueError:
        raise BundleError("manifest is not JSON", "BUNDLE_FILE_MALFORMED", path) from None
    if (
        not isinstance(manifest, dict)
        or set(manifest) != {"format", "origin", "party", "role", "size"}
        or layout.line(manifest) != raw
        or manifest["format"] != layout.FORMAT
        or not isinstance(manifest["size"], int)
    ):
        raise BundleError(
            f"manifest is not a {layout.FORMAT} manifest", "BUNDLE_FILE_MALFORMED", path
        )
    origin, party, role = str(manifest["origin"]), str(manifest["party"]), str(manifest["role"])
    expected_role = ROLE_OF_ORIGIN.get(role)
    if expected_role is None or origin != f"citybroker/{role}/{party}":
        raise BundleError(
            f"origin {origin!r} does not name a {role} log of {party}",
            "BUNDLE_ORIGIN_MISMATCH",
            path,
        )
    return Manifest(origin, party, role, manifest["size"], expected_role)


def check_owner(manifest: Manifest, keys: Keys, path: Path) -> None:
    """The log's owner must hold the role its origin names in the trust bundle."""
    if manifest.expected_role not in keys.roles.get(manifest.party, set()):
        raise BundleError(
            f"{manifest.party} is not a {manifest.expected_role.value} in the trust bundle",
            "SIGNER_UNKNOWN",
            path,
        )


def canonical_line(raw: bytes, path: Path, number: int) -> dict[str, Any]:
    """The JSON object on line `number`, if the line is its one canonical encoding."""
    try:
        obj = bounded_json.loads(raw, f"line {number + 1}")
    except ValueError:
        raise BundleError(
            f"line {number + 1} is not JSON", "BUNDLE_LINE_MALFORMED", path, number
        ) from None
    if not isinstance(obj, dict) or layout.line(obj) != raw:
        raise BundleError(
            f"line {number + 1} is not in canonical form", "BUNDLE_LINE_MALFORMED", path, number
        )
    return obj


def canonical_envelope(data: bytes, path: Path) -> dsse.Envelope:
    """The DSSE envelope in `data`, if `data` is its one canonical encoding."""
    try:
        env = dsse.Envelope.from_json(data)
    except VerificationError as e:
        raise BundleError(e.message, "ENVELOPE_MALFORMED", path) from None
    if env.to_json() != data:
        raise BundleError("not in canonical form", "BUNDLE_FILE_MALFORMED", path)
    return env


def strict_b64(text: Any, path: Path, number: int) -> bytes:
    """The bytes `text` encodes, if it is their canonical base64."""
    try:
        if not isinstance(text, str):
            raise ValueError
        data = base64.b64decode(text, validate=True)
    except (ValueError, binascii.Error):
        raise BundleError("entry is not base64", "BUNDLE_LINE_MALFORMED", path, number) from None
    if layout.b64(data) != text:
        raise BundleError("entry base64 is not canonical", "BUNDLE_LINE_MALFORMED", path, number)
    return data


def trust_versions(
    directory: Path, files: Iterable[tuple[Path, bytes]], authority: PublicKey
) -> list[TrustBundle]:
    """The trust bundle versions in `files`, each signed by `authority`, oldest first."""
    bundles = []
    for path, data in files:
        env = canonical_envelope(data, path)
        try:
            b = trust.verify_bundle(env, authority)
        except VerificationError as e:
            raise BundleError(e.message, e.reason, path) from None
        if path.name != f"v{b.version}.json":
            raise BundleError(f"holds version {b.version}", "TRUST_BUNDLE_MISNAMED", path)
        bundles.append(b)
    if not bundles:
        raise BundleError("the bundle carries no trust bundle", "TRUST_BUNDLE_MISSING", directory)
    return sorted(bundles, key=lambda b: b.version)


def agreements_in(
    files: Iterable[tuple[Path, bytes]], keys: Keys
) -> dict[tuple[str, int], Agreement]:
    """The agreements in `files`, each signed by its parties as of its start, by (id, version)."""
    found: dict[tuple[str, int], Agreement] = {}
    for path, data in files:
        env = canonical_envelope(data, path)
        try:
            starts = timefmt.parse(bounded_json.loads(env.payload, "an agreement")["valid_from"])
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


# -- statements ----------------------------------------------------------------------------------


def check_result(
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
    _check_disclosure(result, a, fail)
    for cell in [*result["cells"], *({"key": k, "values": {}} for k in result["withheld"])]:
        for f in cell["key"]:
            t = terms.get(f)
            if t is None or t.appearance is Appearance.AGGREGATE_ONLY:
                raise fail(f"field {f} appears as a group, which the agreement does not allow")
        for name in cell["values"]:
            inner = name[name.find("(") + 1 : -1] if "(" in name else None
            if inner is not None and inner not in terms:
                raise fail(f"measure {name} uses a field outside the agreement")
            extreme = name.startswith(("min(", "max("))
            if extreme and inner is not None and not _extremes_allowed(terms[inner]):
                raise fail(f"measure {name} releases an extreme the agreement does not allow")
    if a.dp is not None:
        _check_privacy(result, a, dp_spent, fail)


def _extremes_allowed(t: FieldTerms) -> bool:
    return t.extremes and t.appearance is not Appearance.AGGREGATE_ONLY


def _check_disclosure(
    result: dict[str, Any], a: Agreement, fail: Callable[[str], BundleError]
) -> None:
    """The result states the agreement's disclosure regime and parameters, and withholds cells
    under the regime's smallest cell. A result without the statement predates it: allowed only
    under an agreement that names no regime."""
    terms = a.disclosure_terms
    stated = result.get("disclosure")
    if stated is None and a.disclosure is not None:
        raise fail(f"does not state the agreement's disclosure regime {terms.regime.value}")
    if stated is not None and stated != terms.to_payload():
        raise fail(
            f"states disclosure {json.dumps(stated, sort_keys=True)}, the agreement says "
            f"{json.dumps(terms.to_payload(), sort_keys=True)}"
        )
    smallest = a.min_cell_size
    if terms.regime is Regime.CELL_KEY:
        smallest = (terms.cell_key or CellKeyTerms()).small_cell_threshold
    if int(result["min_cell_size"]) < smallest:
        raise fail(f"k = {result['min_cell_size']} is below the agreement's {smallest}")


def _check_privacy(
    result: dict[str, Any],
    a: Agreement,
    dp_spent: dict[tuple[str, int], float],
    fail: Callable[[str], BundleError],
) -> None:
    assert a.dp is not None
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


def check_consent_batch(
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


@dataclass(frozen=True)
class UnverifiedEntry:
    """A logged statement, parsed but not yet known to be signed: who must have signed what."""

    number: int
    thing: str
    signers: list[str]
    at: datetime
    sigs: list[tuple[str, bytes]]
    message: bytes
    payload: bytes
    unverified_claims: dict[str, Any]


def parse_entry(entry: bytes, kind: str, path: Path, number: int) -> UnverifiedEntry:
    """The DSSE statement in log entry `number`, logged under `kind`, with its claimed signers."""

    def fail(message: str, reason: str) -> BundleError:
        return BundleError(message, reason, path, number)

    try:
        env = bounded_json.loads(entry, "a log entry")
        if len(env["signatures"]) > dsse.MAX_SIGNATURES:
            raise fail("entry carries too many signatures", "TOO_MANY_SIGNATURES")
        ptype = env["payloadType"]
        payload = base64.b64decode(env["payload"], validate=True)
        sigs = [(s["keyid"], base64.b64decode(s["sig"], validate=True)) for s in env["signatures"]]
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise fail("entry is not a DSSE envelope", "ENVELOPE_MALFORMED") from None
    if not isinstance(ptype, str) or not ptype.startswith(dsse.MEDIA_PREFIX):
        raise fail(f"unknown statement type {ptype!r}", "STATEMENT_UNKNOWN")
    thing = ptype.removeprefix(dsse.MEDIA_PREFIX).removesuffix("+json")
    try:
        claims = bounded_json.loads(payload, "a statement")
        if thing == Statement.AGREEMENT:
            signers = [str(claims["provider"]), str(claims["consumer"])]
            at = timefmt.parse(claims["valid_from"])
        else:
            signer_field, time_field = STATEMENTS[thing]
            if thing == Statement.COMMITMENT:  # a broker's commitment names it as `broker`
                signer_field = commitment.signer_field(claims)
            signers = [str(claims[signer_field])]
            at = timefmt.parse(claims[time_field])
    except KeyError:
        raise fail(f"unknown or malformed {thing} statement", "STATEMENT_UNKNOWN") from None
    except (ValueError, TypeError):
        raise fail(f"{thing} payload is malformed", "PAYLOAD_MALFORMED") from None
    check_entry_kind(_kind_of(thing, claims), kind, path, number)
    return UnverifiedEntry(
        number, thing, signers, at, sigs, dsse.pae(ptype, payload), payload, claims
    )


def _kind_of(thing: str, claims: Any) -> str:
    """The statement type whose kinds an entry must be logged under: a commitment to an
    exchange's statement is logged as that statement would be."""
    committed = claims.get("statement") if thing == Statement.COMMITMENT else None
    return committed if isinstance(committed, str) and committed in EXCHANGE_STATEMENTS else thing


def check_entry_kind(thing: str, kind: str, path: Path, number: int) -> None:
    """A statement must be logged under a kind its type is logged as (the kind is unsigned)."""
    if kind not in KINDS.get(thing, ()):
        raise BundleError(
            f"a {thing} statement is not logged as kind {kind!r}",
            "ENTRY_KIND_MISMATCH",
            path,
            number,
        )


def check_checkpoint_root(
    computed: bytes, size: int, signed: bytes, path: Path, number: int
) -> None:
    """The entries up to `number` must hash to the root signed for their tree `size`."""
    if computed != signed:
        raise BundleError(
            f"entries up to here do not give the root signed for size {size}",
            "CHECKPOINT_ROOT_MISMATCH",
            path,
            number,
        )


# -- one bundle ----------------------------------------------------------------------------------


class BundleChecks:
    """The state of one bundle's verification, fed its lines in file order; does no I/O.

    Give it the agreement files (`agreements`), then every checkpoint line (`checkpoint`, then
    `checkpoints_end`), then every entry line
    (`entry`; once that entry's signatures are required, `entry_signed`; then `entries_end`),
    then every cosignature line (`cosignature`). Each call raises at the first failure.
    """

    def __init__(self, summary: BundleSummary, keys: Keys) -> None:
        self.summary, self._keys = summary, keys
        self._agreements: dict[tuple[str, int], Agreement] = {}
        self.checkpoints_path = summary.path / layout.CHECKPOINTS
        self.entries_path = summary.path / layout.ENTRIES
        self.cosignatures_path = summary.path / layout.COSIGNATURES
        self._verifiers = [
            NoteVerifier.for_key(summary.origin, k) for k in keys.public_keys(summary.party)
        ]
        # Checkpoints go to the ledger as they verify; only the last one is kept here.
        self._last: tuple[int, bytes] | None = None
        self._tree = CompactRange()
        self._next: tuple[int, bytes] = _NO_MORE

    def agreements(self, files: Iterable[tuple[Path, bytes]]) -> None:
        """The bundle's agreement files (see `agreements_in`), which its results must keep to."""
        self._agreements = agreements_in(files, self._keys)

    def checkpoint(self, number: int, obj: dict[str, Any]) -> None:
        """One checkpoints.jsonl line: signed by the owner, in increasing size, never forked."""

        def fail(message: str, reason: str) -> BundleError:
            return BundleError(message, reason, self.checkpoints_path, number)

        try:
            body = verify_note(str(obj["note"]), self._verifiers)
            origin, size, root = parse_checkpoint(body)
        except (NoteError, KeyError) as e:
            raise fail(
                getattr(e, "message", "checkpoint line lacks a note"), "CHECKPOINT_INVALID"
            ) from None
        self.summary.signatures_verified += 1
        if origin != self.summary.origin:
            raise fail(
                f"checkpoint is for origin {origin!r}, not {self.summary.origin!r}",
                "CHECKPOINT_ORIGIN_MISMATCH",
            )
        if size != obj.get("size"):
            raise fail("line size differs from the signed size", "CHECKPOINT_INVALID")
        last = self._last
        if last is not None and last[0] == size and last[1] != root:
            raise fail(f"two checkpoints of size {size} with different roots", "LOG_FORK")
        if last is not None and size <= last[0]:
            raise fail("checkpoints are not in increasing size order", "CHECKPOINT_ORDER")
        self.summary.ledger.add_checkpoint(self.summary.bundle, size, root)
        self._last = (size, root)

    def checkpoints_end(self) -> None:
        """After the last checkpoint line: the newest signed checkpoint is the bundle's extent,
        which the entries must fill; the unsigned manifest can only agree with it."""
        claimed = self.summary.size
        if self._last is None or self._last[0] != claimed:
            raise BundleError(
                f"no checkpoint covers the manifest size {claimed}",
                "CHECKPOINT_MISSING",
                self.checkpoints_path,
            )
        self.summary.size = self._last[0]
        self._next = self._following(-1)
        while self._next[0] == 0:
            if self._next[1] != EMPTY_ROOT:
                raise BundleError(
                    "checkpoint of the empty log has a non-empty root",
                    "LOG_FORK",
                    self.checkpoints_path,
                )
            self.summary.checkpoints_verified += 1
            self._next = self._following(0)

    def entry(self, number: int, obj: dict[str, Any]) -> UnverifiedEntry:
        """One entries.jsonl line, hashed into the tree; its signatures are the caller's to
        require before `entry_signed`."""
        path = self.entries_path
        if number >= self.summary.size:
            raise BundleError("more entries than the signed log holds", "ENTRY_EXTRA", path, number)
        if obj.get("index") != number or not isinstance(obj.get("kind"), str):
            raise BundleError(f"expected entry index {number}", "ENTRY_OUT_OF_ORDER", path, number)
        entry = strict_b64(obj.get("entry"), path, number)
        self._tree.append(leaf_hash(entry))
        return parse_entry(entry, str(obj["kind"]), path, number)

    def entry_signed(self, entry: UnverifiedEntry) -> None:
        """The statement rules for an entry whose signatures are required (checked, or being
        checked by the caller), then the checkpoint its tree size reaches, if any."""
        _record_statement(entry, self.summary, self._agreements, self._keys, self.entries_path)
        self.summary.signatures_verified += len(entry.signers)
        if self._tree.size == self._next[0]:
            check_checkpoint_root(
                self._tree.root(), self._tree.size, self._next[1], self.entries_path, entry.number
            )
            self.summary.checkpoints_verified += 1
            self._next = self._following(self._tree.size)

    def entries_end(self) -> None:
        """After the last entry line: the entries must be as many as the log signed."""
        if self._tree.size != self.summary.size:
            raise BundleError(
                f"{self._tree.size} entries, but the log signed {self.summary.size}",
                "ENTRY_MISSING",
                self.entries_path,
                self._tree.size,
            )

    def opened(self, statement: bytes, path: Path, number: int) -> None:
        """An opened exchange statement (audit.openings, line `number` of `path`), checked as it
        would be when logged whole: signed by the party it names with a key then in force, the
        city's own, and a result within its agreement and privacy budget. It is not recorded
        again: the ledger holds its commitment."""
        thing = commitment.statement_type(statement) or ""
        kind = LogKind.REFUSAL if thing == Statement.REFUSAL else LogKind.EXCHANGE
        entry = parse_entry(statement, kind, path, number)
        for signer in entry.signers:
            if not any(
                self._keys.verify(signer, keyid, entry.at, sig, entry.message)
                for keyid, sig in entry.sigs
            ):
                raise BundleError(
                    f"{thing} lacks a valid signature of {signer}",
                    "SIGNATURE_INVALID",
                    path,
                    number,
                )
        self.summary.signatures_verified += len(entry.signers)
        claims = entry.unverified_claims
        try:
            if thing != Statement.QUERY and claims["city"] != self.summary.party:
                raise BundleError(
                    "opens another city's statement", "STATEMENT_MISPLACED", path, number
                )
            if thing == Statement.RESULT:
                check_result(claims, self._agreements, path, number, self.summary.dp_spent)
        except (KeyError, TypeError, ValueError):
            raise BundleError(
                f"{thing} payload is malformed", "PAYLOAD_MALFORMED", path, number
            ) from None

    def cosignature(self, number: int, obj: dict[str, Any]) -> None:
        """One cosignatures.jsonl line: a city's valid cosignature of a checkpoint of this bundle."""
        s, path = self.summary, self.cosignatures_path
        size, city, line = obj.get("size"), str(obj.get("witness")), obj.get("cosignature")
        root = s.ledger.root(s.bundle, size) if isinstance(size, int) else None
        if root is None or not isinstance(line, str):
            raise BundleError(
                "cosigns no checkpoint of this bundle", "COSIGNATURE_INVALID", path, number
            )
        assert isinstance(size, int)
        body = checkpoint_body(s.origin, size, root)
        keys = self._keys
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
        s.signatures_verified += 1
        s.cosignatures_verified += 1
        s.ledger.add_cosignature(s.bundle, city, size)

    def _following(self, size: int) -> tuple[int, bytes]:
        return self.summary.ledger.next_checkpoint(self.summary.bundle, size) or _NO_MORE


_NO_MORE = (-1, b"")


def _record_statement(
    entry: UnverifiedEntry,
    summary: BundleSummary,
    agreements: dict[tuple[str, int], Agreement],
    keys: Keys,
    path: Path,
) -> None:
    """Check a statement against its log and agreement, and remember what reconciliation needs.

    With worker processes its signatures may still be being checked; an error raised here is
    reported only once they (and all before) have verified, so it is never a forger's word.
    """

    def fail(message: str, reason: str) -> BundleError:
        return BundleError(message, reason, path, entry.number)

    statement, thing = entry.unverified_claims, entry.thing
    try:
        if thing == Statement.RESULT:
            if statement["city"] != summary.party:
                raise fail("a city's log holds another city's result", "STATEMENT_MISPLACED")
            check_result(statement, agreements, path, entry.number, summary.dp_spent)
            summary.result_count += 1
            summary.ledger.add_result(
                summary.bundle,
                ResultRef(
                    summary.party,
                    str(statement["broker"]),
                    str(statement["request_id"]),
                    statements.digest(entry.payload),
                    entry.number,
                    entry.at,
                ),
            )
        elif thing == Statement.RECEIPT:
            if statement["broker"] != summary.party:
                raise fail("a broker's log holds another broker's receipt", "STATEMENT_MISPLACED")
            _record_receipt(statement, summary, entry.at)
        elif thing == Statement.CONSENT_BATCH:
            check_consent_batch(statement, summary.party, fail)
        elif thing == Statement.COSIGNATURE:
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
                    entry.number,
                ),
            )
        elif thing == Statement.WITNESSED_CHECKPOINT:
            _record_city_checkpoint(entry, summary, keys, fail)
    except (KeyError, TypeError, ValueError, binascii.Error):
        raise fail(f"{thing} payload is malformed", "PAYLOAD_MALFORMED") from None


def _record_city_checkpoint(
    entry: UnverifiedEntry,
    summary: BundleSummary,
    keys: Keys,
    fail: Callable[[str, str], BundleError],
) -> None:
    """A broker's record of a city's checkpoint (audit.city_checkpoint): in that broker's own
    log, carrying a note the city named signed (any key it ever held: a note says not when it
    was signed), with the note's size and root; kept for audit.coverage."""
    claims = entry.unverified_claims
    if summary.role != "broker" or claims["broker"] != summary.party:
        raise fail("a log holds another party's record of a city checkpoint", "STATEMENT_MISPLACED")
    city = str(claims["city"])
    public = keys.public_keys(city) if Role.CITY in keys.roles.get(city, set()) else []
    try:
        checkpoint = city_checkpoint.recorded(claims, public)
    except NoteError as e:
        raise fail(
            f"records a checkpoint of {city} that {city} did not sign: {e.message}",
            "CHECKPOINT_INVALID",
        ) from None
    except VerificationError as e:
        raise fail(e.message, e.reason) from None
    summary.ledger.add_recorded(
        summary.bundle,
        Recorded(
            summary.party,
            city,
            city_checkpoint.node_origin(city),
            checkpoint.size,
            checkpoint.root,
            entry.number,
        ),
    )


def _record_receipt(statement: dict[str, Any], summary: BundleSummary, at: datetime) -> None:
    committed = "query_commitment" in statement
    for c in statement["cities"]:
        # A city that logged its result as a commitment is named by it (domain.receipt).
        named = c["result_digest"] or c.get("result_commitment")
        # A city that returned nothing has no result for the receipt to name.
        if named:
            committed = committed or not c["result_digest"]
            summary.receipt_count += 1
            summary.ledger.add_receipt(
                summary.bundle,
                ReceiptRef(
                    summary.party,
                    str(c["city"]),
                    str(statement["request_id"]),
                    str(named),
                    int(c["node_log_index"]),
                    at,
                    committed=not c["result_digest"],
                ),
            )
        elif c["status"] in STOPPED_WAITING:
            # The broker's signed word that it gave up on this city in this exchange: a result
            # the city released anyway was released but not delivered (audit.coverage).
            summary.ledger.add_undelivered(
                summary.bundle,
                summary.party,
                str(c["city"]),
                str(statement["request_id"]),
                str(c["status"]),
            )
    if committed:
        summary.committed_exchanges += 1


# -- across bundles ------------------------------------------------------------------------------


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
        _check_witnessed(ledger, broker)
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


def _check_witnessed(ledger: Ledger, broker: Bundle) -> None:
    """What cities logged that they cosigned of this broker's log must be in its bundle."""
    unmatched = ledger.witnessed_unmatched(broker)
    if unmatched is None:
        return
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
