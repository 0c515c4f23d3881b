"""The verifier's checks of committed entries (domain.commitment) and what an export says of them.

A bundle may carry, beside its entries (audit.bundle):
    erasures.jsonl       always: {"index", "members"} per erased entry (members null: the whole
                         entry; else how many of a batch statement's events). No personal data.
    openings.jsonl       only when the city exported personal data on purpose, for one auditor:
                         {"index", "salt", "statement"} opening a commitment, each followed by
                         {"index", "member", "member_salt"} per imported event it lists still kept.
    personal-data.json   with openings.jsonl: {"auditor": who the city exported them for}.
Every commitment must be the owner's, in its form; each erasure must name a commitment that is
not opened; with openings, each must open its commitment (salted digest, statement type, member
listed), and every commitment must be opened or erased, every batch member opened or erased.

A commitment to an exchange's statement (an attribute check's or record release's query, result
or refusal at a node; an attribute check's query at a broker) names its exchange (`request_id`,
and at a node the `broker`). A committed result goes to the ledger under its commitment, which
the broker's receipt names (`result_commitment`), so receipts and results reconcile without
openings; the summary reports such exchanges as committed. An opened exchange statement is
checked as a statement logged whole would be (`BundleChecks.opened`: signature, agreement).

Memory: the commitments are remembered only when openings or erasures must be matched to them
(the erased ones, or every one when the bundle carries openings).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from audit import bundle_reader as reader
from audit.bundle import ERASURES, OPENINGS, PERSONAL_DATA
from audit.checks import (
    EXCHANGE_STATEMENTS,
    BundleError,
    BundleSummary,
    UnverifiedEntry,
    strict_b64,
)
from audit.ledger import ResultRef
from domain import commitment
from domain.commitment import Opening
from domain.kinds import Statement
from keys import dsse


class CommittedEntries:
    """One bundle's commitment entries, fed in log order (`see`), then checked against its
    erasures and openings (`end`)."""

    def __init__(
        self,
        root: Path,
        summary: BundleSummary,
        check_opened: Callable[[bytes, Path, int], None] | None = None,
    ) -> None:
        self._root, self._summary = root, summary
        # Checks an opened exchange statement as if logged whole (BundleChecks.opened).
        self._check_opened = check_opened
        self._erased = _read_erasures(root / ERASURES)
        self._auditor = _read_personal_data(root)
        self._claims: dict[int, dict[str, Any]] = {}

    def see(self, entry: UnverifiedEntry) -> None:
        """An entry whose signatures are required: a commitment is checked for form and kept
        while something must be matched to it; an erasure must name a commitment."""
        path = self._root / ERASURES
        if entry.thing != Statement.COMMITMENT:
            if entry.number in self._erased:
                raise BundleError(
                    f"entry {entry.number} is erased, but it is no commitment",
                    "ERASURE_INVALID",
                    path,
                )
            return
        claims = entry.unverified_claims
        fail = self._root / "entries.jsonl"
        broker = self._summary.role == "broker"
        if claims.get(commitment.signer_field(claims)) != self._summary.party or broker != (
            "city" not in claims
        ):
            raise BundleError(
                "a log holds another party's commitment",
                "STATEMENT_MISPLACED",
                fail,
                entry.number,
            )
        digest = claims.get("commitment")
        if (
            not isinstance(digest, str)
            or len(digest) != 71
            or not digest.startswith(commitment.PREFIX)
            or claims.get("statement")
            not in (commitment.BROKER_COMMITTED if broker else commitment.COMMITTED)
        ):
            raise BundleError("commitment is malformed", "PAYLOAD_MALFORMED", fail, entry.number)
        self._summary.commitments += 1
        if claims["statement"] in EXCHANGE_STATEMENTS or "request_id" in claims:
            self._exchange(entry, digest, fail)
        if self._auditor is not None or entry.number in self._erased:
            self._claims[entry.number] = claims

    def _exchange(self, entry: UnverifiedEntry, digest: str, fail: Path) -> None:
        """A commitment to an exchange's statement: it names its exchange; a city's committed
        result goes to the ledger under its commitment (the receipt names it so)."""
        claims, s = entry.unverified_claims, self._summary
        request_id, broker = claims.get("request_id"), claims.get("broker")
        if (
            claims["statement"] not in EXCHANGE_STATEMENTS
            or not isinstance(request_id, str)
            or not request_id
            or not isinstance(broker, str)
            or not broker
        ):
            raise BundleError(
                "an exchange's commitment must name its exchange",
                "PAYLOAD_MALFORMED",
                fail,
                entry.number,
            )
        if s.role == "broker" or claims["statement"] == Statement.QUERY:
            return  # a broker's receipts are counted with the receipts (audit.checks)
        s.committed_exchanges += 1
        if claims["statement"] == Statement.RESULT:
            s.ledger.add_result(
                s.bundle,
                ResultRef(s.party, broker, request_id, digest, entry.number, entry.at, True),
            )

    def end(self) -> None:
        """After the last entry: every erasure names a commitment; openings, if any, verify."""
        s = self._summary
        for index, members in self._erased.items():
            if index not in self._claims:
                raise BundleError(
                    f"entry {index} is erased, but the log has no commitment there",
                    "ERASURE_INVALID",
                    self._root / ERASURES,
                )
            if members is None:
                s.erased_entries += 1
            else:
                s.erased_members += members
        if self._auditor is None:
            return
        s.personal_data_for = self._auditor
        opened = _OpenedBatch(self._root / OPENINGS, self._erased)
        for number, opening in _read_openings(self._root / OPENINGS):
            self._check_opening(number, opening, opened)
        opened.close(-1)
        for index in self._claims:
            if index not in opened.indexes and not self._wholly_erased(index):
                raise BundleError(
                    f"entry {index} is a commitment neither opened nor erased",
                    "OPENING_MISSING",
                    self._root / OPENINGS,
                )

    def _wholly_erased(self, index: int) -> bool:
        return index in self._erased and self._erased[index] is None

    def _check_opening(self, number: int, opening: Opening, opened: _OpenedBatch) -> None:
        path = self._root / OPENINGS
        claims = self._claims.get(opening.index)
        if claims is None:
            raise BundleError("opens no commitment of the log", "OPENING_INVALID", path, number)
        if opening.statement:
            if self._wholly_erased(opening.index):
                raise BundleError("opens an erased entry", "OPENING_INVALID", path, number)
            problem = commitment.opening_problem(claims, opening)
            if problem is not None:
                raise BundleError(problem, "OPENING_INVALID", path, number)
            if claims.get("statement") in EXCHANGE_STATEMENTS and self._check_opened is not None:
                self._check_opened(opening.statement, path, number)
            opened.start(number, opening)
            self._summary.openings_verified += 1
            return
        problem = opened.member(number, opening)
        if problem is not None:
            raise BundleError(problem, "OPENING_INVALID", path, number)
        self._summary.openings_verified += 1


class _OpenedBatch:
    """The batch statement whose members the openings list, and every index opened."""

    def __init__(self, path: Path, erased: dict[int, int | None]) -> None:
        self._path, self._erased = path, erased
        self.indexes: set[int] = set()
        self._current: Opening | None = None
        self._members = 0
        self._listed = 0

    def start(self, number: int, opening: Opening) -> None:
        if opening.index in self.indexes:
            raise BundleError("opens an entry twice", "OPENING_INVALID", self._path, number)
        self.close(number)
        self.indexes.add(opening.index)
        self._current, self._members = opening, 0
        self._listed = 0
        if commitment.statement_type(opening.statement) == Statement.CONSENT_BATCH:
            payload = json.loads(dsse.Envelope.from_json(opening.statement).payload)
            self._listed = len(payload.get("receipts", []))

    def member(self, number: int, opening: Opening) -> str | None:
        current = self._current
        if current is None or current.index != opening.index:
            return "a batch member must follow its statement's opening"
        problem = commitment.opening_problem(
            {
                "commitment": commitment.digest(current.salt, current.statement),
                "statement": Statement.CONSENT_BATCH,
            },
            Opening(
                opening.index,
                current.statement,
                current.salt,
                opening.member_payload,
                opening.member_salt,
            ),
        )
        self._members += 1
        return problem

    def close(self, number: int) -> None:
        """The batch opened last: each event it lists is opened or erased."""
        current = self._current
        if current is None or not self._listed:
            return
        erased = self._erased.get(current.index) or 0
        if self._members + erased != self._listed:
            raise BundleError(
                f"the batch statement at entry {current.index} lists {self._listed} events; "
                f"{self._members} are opened and {erased} erased",
                "OPENING_MISSING",
                self._path,
                number if number >= 0 else None,
            )
        self._current = None


def _read_erasures(path: Path) -> dict[int, int | None]:
    erased: dict[int, int | None] = {}
    if not path.exists():
        return erased  # a bundle exported before erasures were recorded
    for number, obj in reader.canonical_lines(path, "erasures"):
        index, members = obj.get("index"), obj.get("members")
        if (
            set(obj) != {"index", "members"}
            or not isinstance(index, int)
            or index in erased
            or not (members is None or (isinstance(members, int) and members > 0))
        ):
            raise BundleError("not an erasure line", "BUNDLE_FILE_MALFORMED", path, number)
        erased[index] = members
    return erased


def _read_personal_data(root: Path) -> str | None:
    """Whom the bundle's openings were exported for; None if it holds none."""
    openings, named = root / OPENINGS, root / PERSONAL_DATA
    if not openings.exists() and not named.exists():
        return None
    try:
        auditor = json.loads(named.read_bytes())["auditor"]
    except (OSError, ValueError, KeyError, TypeError):
        raise BundleError(
            "openings must come with personal-data.json naming the auditor",
            "BUNDLE_FILE_MALFORMED",
            named,
        ) from None
    if not isinstance(auditor, str) or not auditor or not openings.exists():
        raise BundleError("personal-data.json without openings", "BUNDLE_FILE_MALFORMED", named)
    return auditor


def _read_openings(path: Path) -> Iterator[tuple[int, Opening]]:
    for number, obj in reader.canonical_lines(path, "openings"):
        index = obj.get("index")
        if not isinstance(index, int):
            raise BundleError("not an opening line", "BUNDLE_FILE_MALFORMED", path, number)
        if set(obj) == {"index", "salt", "statement"}:
            yield (
                number,
                Opening(
                    index,
                    strict_b64(obj["statement"], path, number),
                    strict_b64(obj["salt"], path, number),
                ),
            )
        elif set(obj) == {"index", "member", "member_salt"}:
            yield (
                number,
                Opening(
                    index,
                    b"",
                    b"",
                    strict_b64(obj["member"], path, number),
                    strict_b64(obj["member_salt"], path, number),
                ),
            )
        else:
            raise BundleError("not an opening line", "BUNDLE_FILE_MALFORMED", path, number)
