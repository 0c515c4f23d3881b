"""Resolving a batch: its prepared rows applied in file order, by the consent rule the API
applies (`node.consent_rules.decide`, as a replay), to what is stored and to what the batch
before (being written meanwhile) leaves."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, NamedTuple

from domain.consent_batch import receipt_digest
from keys import timefmt
from node.consent import ConsentRecord, record_from_row
from node.consent_import.codec import (
    R_DIGEST,
    R_FROM,
    R_STATE,
    R_UNTIL,
    RECORD_COLUMNS,
    S_STATE,
    S_UNTIL,
    naive,
    receipt_json,
)
from node.consent_import.model import ErrorRow, MoveRow, Prepared, RowError, StartRow
from node.consent_import.parse import Preparer
from node.consent_import.records import RecordStore, Stored
from node.consent_lifecycle import Event, State
from node.consent_rules import Decision, Outcome, Proposed, decide

Rows = tuple[tuple[Any, ...], tuple[tuple[Any, ...], ...]]  # consent_records row, scope rows
_EVENTS = {e.value: e for e in Event}


@dataclass(slots=True, eq=False)
class Rec:
    """What the import knows of one record while resolving a batch: the consent rule's view of
    it (`Current`, and as a replay its `History`, read from the store only when asked)."""

    record_id: str
    store: RecordStore
    state: State
    digest: str
    until: str | None  # valid_until, RFC 3339; matters only once renewed
    # The record, or (created by the import) its consent_records and consent_scopes rows.
    record: ConsentRecord | None = None
    rows: Rows | None = None
    first_digest: str | None = None  # terms digest when the record was created; None: unknown
    renewed: set[str | None] | None = None  # valid_until of every renewal; None: unknown
    created: bool = False  # created by this batch
    # (state, digest) the batch expects to find stored, for records it changes.
    expect: tuple[str, str] | None = None

    @property
    def valid_from(self) -> datetime:
        """The record's current `valid_from` (built from `rows` if not yet, without store I/O)."""
        return self.as_record().valid_from

    def as_record(self) -> ConsentRecord:
        """The record as it is now."""
        if self.record is None:
            assert self.rows is not None
            row, scopes = self.rows
            stored = dict(zip(RECORD_COLUMNS, row, strict=True))
            stored["valid_from"], stored["valid_until"] = naive(row[R_FROM]), naive(row[R_UNTIL])
            self.record = record_from_row(stored, (s[1:4] for s in scopes))
        return self.record

    def created_digest(self) -> str:
        """The terms digest it was created with (read once, when first asked)."""
        if self.first_digest is None:
            self.first_digest = self.store.first_digest(self.record_id, self.as_record())
        return self.first_digest

    def renewals(self) -> set[str | None]:
        """The validity end of each of its renewals (read once, when first asked)."""
        if self.renewed is None:
            self.renewed = self.store.renewals(self.record_id, self.as_record())
        return self.renewed

    def copy(self) -> Rec:
        """A copy for the next batch, which expects to find this as stored."""
        return Rec(
            self.record_id,
            self.store,
            self.state,
            self.digest,
            self.until,
            self.record,
            self.rows,
            self.first_digest,
            set(self.renewed) if self.renewed is not None else None,
            expect=(self.state.value, self.digest),
        )


class Applied(NamedTuple):
    """An event the batch applies."""

    line: int
    record_id: str
    event: str
    actor: str
    valid_until: Any  # the record's, as of this event (as `Codec` gives it)
    digest: str  # of its canonical receipt payload (`receipt_digest`)


@dataclass
class Batch:
    """A batch of rows on its way through the pipeline, and what resolving it decided."""

    index: int
    at: datetime
    bytes_read: int
    prepared: list[Prepared] = field(default_factory=list)
    rows: int = 0
    first_line: int = 0
    last_line: int = 0
    # Outcome of resolution:
    view: dict[str, Rec] = field(default_factory=dict)
    creates: dict[str, Rows] = field(default_factory=dict)
    changes: dict[str, Rec] = field(default_factory=dict)  # stored records this batch changes
    events: list[Applied] = field(default_factory=list)
    errors: list[RowError] = field(default_factory=list)
    duplicates: int = 0
    failure: str = ""
    # (consent_batches id, signed statement, its commitment salt) of what was written, to log.
    statements: list[tuple[int, bytes, bytes]] = field(default_factory=list)

    def record_ids(self) -> list[str]:
        """The ids of the records its rows name, sorted."""
        return sorted({item.record_id for item in self.prepared if type(item) is not ErrorRow})


class Resolver:
    """Resolves batches for one run (`payload`: the receipt payloads the API would sign;
    `dt`: times as the driver gets them)."""

    def __init__(self, store: RecordStore, preparer: Preparer, dt: Callable[[Any], Any]) -> None:
        self.store, self.preparer, self.dt = store, preparer, dt

    def again(self, batch: Batch) -> None:
        """Resolve the batch again from what is stored now."""
        self.resolve(batch, self.store.lookup(batch.record_ids()), {})

    def resolve(self, batch: Batch, stored: Stored, overlay: dict[str, Rec]) -> None:
        """Apply the batch's rows in file order to what is stored (and the batch before)."""
        batch.view, batch.creates, batch.changes = {}, {}, {}
        batch.events, batch.errors, batch.duplicates = [], [], 0
        view = batch.view
        changed_creations: list[str] = []
        for item in batch.prepared:
            if type(item) is ErrorRow:
                batch.errors.append(RowError(*item))
                continue
            rid = item.record_id
            rec = view.get(rid)
            if rec is None:
                rec = self._known(rid, stored, overlay)
                if rec is not None:
                    view[rid] = rec
            if type(item) is StartRow:
                proposed = Proposed(rid, _EVENTS[item.event], item.digest)
            else:
                assert type(item) is MoveRow
                proposed = Proposed(rid, _EVENTS[item.event], valid_until=item.valid_until)
            decision = decide(rec, proposed, rec)
            if decision.outcome is Outcome.ALREADY:
                batch.duplicates += 1
            elif decision.refusal is not None:
                e = decision.refusal
                batch.errors.append(RowError(item.line, rid, e.reason, e.message))
            elif type(item) is StartRow:
                self._create(batch, item, decision)
            else:
                assert rec is not None and type(item) is MoveRow
                self._move(batch, item, rec, decision)
                if rec.created:
                    changed_creations.append(rid)
                else:
                    batch.changes[rid] = rec
        # Records created and then changed in this batch are inserted as they end up.
        for rid in changed_creations:
            batch.creates[rid] = self._final_rows(view[rid], *batch.creates[rid])

    def _known(self, rid: str, stored: Stored, overlay: dict[str, Rec]) -> Rec | None:
        """The record as the batch before leaves it, or as stored; None if there is none."""
        known = overlay.get(rid)
        if known is not None:
            return known.copy()
        row = stored.rows.get(rid)
        if row is None:
            return None
        until = row["valid_until"]
        rec = Rec(
            rid,
            self.store,
            State(row["state"]),
            row["content_digest"],
            timefmt.fmt(timefmt.from_db(until)) if until else None,
            record=record_from_row(row, stored.scopes.get(rid, ())),
        )
        if rec.state in (State.GIVEN, State.REFUSED):
            rec.renewed = set()  # never renewed, or it would be in another state
        rec.expect = (rec.state.value, rec.digest)
        return rec

    def _create(self, batch: Batch, item: StartRow, decision: Decision) -> None:
        assert decision.state is not None
        rid, digest = item.record_id, item.digest
        rows = (item.record, item.scopes)
        batch.view[rid] = Rec(
            rid,
            self.store,
            decision.state,
            digest,
            None,
            rows=rows,
            first_digest=digest,
            renewed=set(),
            created=True,
        )
        batch.creates[rid] = rows
        batch.events.append(
            Applied(item.line, rid, item.event, item.actor, item.record[R_UNTIL], item.receipt)
        )

    def _move(self, batch: Batch, item: MoveRow, rec: Rec, decision: Decision) -> None:
        """Apply a non-starting event to the record the batch holds."""
        assert decision.state is not None
        event, state = _EVENTS[item.event], decision.state
        record = rec.as_record()
        renew = event is Event.RENEW
        if renew:
            record = replace(record, valid_until=item.valid_until)
        payload = self.preparer.payload(record, event, item.actor, batch.at, state)
        rec.state = state
        if renew:
            until = timefmt.fmt(item.valid_until) if item.valid_until is not None else None
            rec.record, rec.digest, rec.until = record, payload["terms_digest"], until
            rec.renewals().add(until)
        after = record.valid_until
        batch.events.append(
            Applied(
                item.line,
                item.record_id,
                item.event,
                item.actor,
                self.dt(timefmt.to_db(after)) if after is not None else None,
                receipt_digest(receipt_json(payload)),
            )
        )

    def _final_rows(self, rec: Rec, record: tuple[Any, ...], scopes: tuple[Any, ...]) -> Rows:
        renewed = record[R_DIGEST] != rec.digest
        new = list(record)
        new[R_STATE] = rec.state.value
        until = record[R_UNTIL]
        if renewed:
            assert rec.record is not None
            valid_until = rec.record.valid_until
            until = self.dt(timefmt.to_db(valid_until) if valid_until else None)
            new[R_UNTIL], new[R_DIGEST] = until, rec.digest
        changed = []
        for scope in scopes:
            row = list(scope)
            row[S_STATE], row[S_UNTIL] = rec.state.value, until
            changed.append(tuple(row))
        return tuple(new), tuple(changed)
