"""Bulk consent import: idempotence, conflicts, per-row errors, batch transactions, receipts (the
API's, byte for byte) and the signed batch statements in the log that cover them."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from audit.log import MerkleLog
from domain import commitment, consent_batch
from domain.errors import AlreadyExists, CitybrokerError, FailedPrecondition
from infra import storage
from keys import dsse, timefmt
from node.consent import RECEIPT, ConsentRecord, ConsentRegistry
from node.consent_import import (
    ConsentImporter,
    ImportFormat,
    ImportLimits,
    checkpoints,
    write,
)
from node.consent_lifecycle import Event, State
from node.schema import consent_events, consent_records, consent_scopes
from tests.unit.node.consent_import.support import (
    CITY_KEY,
    FROM,
    LATER,
    NOW,
    ORIGIN,
    UNTIL,
    event,
    given,
    history,
    importer,
    logged_statements,
    receipts,
    rows_of,
    run,
    verified,
    write_csv,
)

# -- applying -------------------------------------------------------------------------------------


def test_import_stores_records_events_and_receipts_the_api_would(
    engine: sa.Engine, log: MerkleLog, tmp_path: Path
) -> None:
    path = write_csv(
        tmp_path / "events.csv",
        [
            given("r1", actor="portal"),
            given("r2", "res-2", recipients="northwind;category:public-authority"),
            event("withdrawn", "r1"),
            event("renewed", "r2", valid_until=LATER),
            given("r3", "res-3", valid_until=""),
        ],
    )
    report, errors = run(importer(engine, log), path)
    assert errors == []
    assert (report.rows, report.applied, report.duplicates, report.batches) == (5, 5, 0, 2)

    records = {r["record_id"]: r for r in rows_of(engine, consent_records)}
    assert {k: v["state"] for k, v in records.items()} == {
        "r1": "withdrawn",
        "r2": "renewed",
        "r3": "given",
    }
    scopes = rows_of(engine, consent_scopes, consent_scopes.c.record_id)
    assert len(scopes) == 2 + 4 + 2
    assert {s["state"] for s in scopes if s["record_id"] == "r2"} == {"renewed"}
    assert {s["valid_until"] for s in scopes if s["record_id"] == "r2"} == {
        timefmt.to_db(timefmt.parse(LATER))
    }
    # What is stored reads back as the registry reads its own records.
    registry = ConsentRegistry(engine, "aurora", CITY_KEY, log)
    r2 = registry.get("r2")
    assert r2.recipients == ("category:public-authority", "northwind")
    assert r2.valid_until == timefmt.parse(LATER)
    assert records["r2"]["content_digest"] == r2.digest()
    assert registry.get("r3").valid_until is None

    events = rows_of(engine, consent_events, consent_events.c.event_id)
    assert [(e["record_id"], e["event"]) for e in events] == [
        ("r1", "given"),
        ("r2", "given"),
        ("r1", "withdrawn"),
        ("r2", "renewed"),
        ("r3", "given"),
    ]
    assert events[0]["actor"] == "portal"
    assert events[1]["actor"] == "import via events.csv"
    # Receipts verify with the city's key and are exactly what the API signs for that event.
    signed = receipts(engine, log)
    for e, receipt in zip(events, signed, strict=True):
        assert e["receipt"] is None  # signed when asked for, over the stored payload
        payload = verified(receipt)
        assert (payload["record_id"], payload["event"]) == (e["record_id"], e["event"])
        at = timefmt.parse(payload["at"])
        assert timefmt.to_db(at) == e["at"]
        record = registry.get(e["record_id"])
        if e["event"] == "given":  # the terms as given (before a later renewal)
            record = record if e["record_id"] != "r2" else _with_until(record, UNTIL)
        expected = registry.receipt(record, Event(e["event"]), e["actor"], at, State(e["event"]))
        assert receipt == expected
    assert [h.receipt for h in registry.history("r1")] == [signed[0], signed[2]]
    # Each batch's statement covers its events' receipt payloads, in order, and is in the log.
    statements = logged_statements(engine, log)
    assert log.size() == len(statements) == 2
    # Listed in order, each salted with its event's own salt (domain.commitment.member_digest).
    assert [d for s in statements for d in s["receipts"]] == [
        commitment.member_digest(
            bytes(e["salt"]),
            "sha256:" + hashlib.sha256(dsse.Envelope.from_json(r).payload).hexdigest(),
        )
        for e, r in zip(events, signed, strict=True)
    ]
    assert {(s["city"], s["at"]) for s in statements} == {("aurora", payload["at"])}


def _with_until(record: ConsentRecord, until: str) -> ConsentRecord:
    import dataclasses

    return dataclasses.replace(record, valid_until=timefmt.parse(until), state=State.GIVEN)


def test_importing_the_same_file_again_changes_nothing(
    engine: sa.Engine, log: MerkleLog, tmp_path: Path
) -> None:
    path = write_csv(
        tmp_path / "events.csv",
        [
            given("r1"),
            event("renewed", "r1", valid_until=LATER),
            event("withdrawn", "r1"),
            given("r2", "res-2"),
            event("renewed", "r2", valid_until=LATER),
            event("renewed", "r2", valid_until=""),
            given("r3", "res-3"),
            event("revoked", "r3"),
            event(
                "refused",
                "r4",
                resident_id="res-4",
                purposes="scientific-research",
                recipients="borealis",
                data_categories="age",
                valid_from=FROM,
            ),
            given("r5", "res-5"),
        ],
    )
    first, errors = run(importer(engine, log), path)
    assert errors == [] and first.applied == 10
    events_before = rows_of(engine, consent_events, consent_events.c.event_id)
    records_before = rows_of(engine, consent_records, consent_records.c.record_id)
    size = log.size()

    for batch_size in (3, 100):  # wherever the batches split
        again, errors = run(importer(engine, log, batch_size), path)
        assert errors == []
        assert (again.applied, again.duplicates) == (0, 10)
        assert rows_of(engine, consent_events, consent_events.c.event_id) == events_before
        assert rows_of(engine, consent_records, consent_records.c.record_id) == records_before
        assert log.size() == size


def test_a_record_id_with_other_terms_is_a_conflict(
    engine: sa.Engine, log: MerkleLog, tmp_path: Path
) -> None:
    registry = ConsentRegistry(engine, "aurora", CITY_KEY, log)
    path = write_csv(
        tmp_path / "events.csv",
        [
            given("r1"),
            given("r1", "someone-else"),
            given("r1"),  # the same terms again: already applied
            given("r2", purposes="scientific-research"),
        ],
    )
    report, errors = run(importer(engine, log), path)
    assert [(e.row, e.record_id, e.reason) for e in errors] == [
        (3, "r1", "CONSENT_RECORD_CONFLICT")
    ]
    assert (report.applied, report.duplicates) == (2, 1)
    assert registry.get("r1").resident_id == "res-1"
    # Given through the API first: the same terms are a duplicate there too.
    conflict = write_csv(
        tmp_path / "more.csv", [given("r2", purposes="scientific-research", actor="x")]
    )
    report, errors = run(importer(engine, log), conflict)
    assert (report.applied, report.duplicates, errors) == (0, 1, [])


def test_bad_rows_are_reported_and_never_stop_the_good_ones(
    engine: sa.Engine, log: MerkleLog, tmp_path: Path
) -> None:
    path = write_csv(
        tmp_path / "events.csv",
        [
            given("ok-1"),
            given("bad-purpose", purposes="selling-data"),
            given("bad-category", data_categories="mobility;dna"),
            given("bad-date", valid_from="yesterday"),
            given("no-date", valid_from=""),
            given("wrong-order", valid_until=FROM, valid_from=UNTIL),
            given("stranger", recipients="nobody-we-know"),
            event("withdrawn", "unknown-record"),
            event("expired", "ok-1"),
            event("deleted", "ok-1"),
            given("ok-1", "someone-else", event="refused"),  # different terms
            given("ok-2", "res-2"),
            event("revoked", "ok-2"),
            event("renewed", "ok-2", valid_until=LATER),  # no longer active
            event("renewed", "ok-1", valid_until=FROM),  # before valid_from
            given("", "res-3"),
            given("ok-3", "res-3"),
        ],
    )
    report, errors = run(importer(engine, log, batch_size=4), path)
    assert [(e.row, e.record_id, e.reason) for e in errors] == [
        (3, "bad-purpose", "PURPOSE_UNKNOWN"),
        (4, "bad-category", "DATA_CATEGORY_UNKNOWN"),
        (5, "bad-date", "TIMESTAMP_INVALID"),
        (6, "no-date", "TIMESTAMP_INVALID"),
        (7, "wrong-order", "CONSENT_DATES_INVALID"),
        (8, "stranger", "RECIPIENT_UNKNOWN"),
        (9, "unknown-record", "CONSENT_NOT_FOUND"),
        (10, "ok-1", "CONSENT_EVENT_NOT_ALLOWED"),
        (11, "ok-1", "CONSENT_EVENT_UNKNOWN"),
        (12, "ok-1", "CONSENT_RECORD_CONFLICT"),
        (15, "ok-2", "CONSENT_NOT_ACTIVE"),
        (16, "ok-1", "CONSENT_DATES_INVALID"),
        (17, "", "CONSENT_FIELD_INVALID"),
    ]
    assert all(e.message for e in errors)
    assert "selling-data" in errors[0].message
    assert report.applied == 4 and report.error_rows == 13
    assert report.errors["TIMESTAMP_INVALID"] == 2
    assert {r["record_id"] for r in rows_of(engine, consent_records)} == {"ok-1", "ok-2", "ok-3"}
    assert history(engine, "ok-2") == ["given", "revoked"]


def test_jsonl_import_and_its_type_errors(
    engine: sa.Engine, log: MerkleLog, tmp_path: Path
) -> None:
    base = {
        "event": "given",
        "resident_id": "res-1",
        "purposes": ["urban-mobility-planning"],
        "recipients": ["northwind"],
        "data_categories": ["mobility"],
        "valid_from": FROM,
        "retention_days": 90,
        "language": "fi",
    }
    lines = [
        {**base, "record_id": "j1"},
        {**base, "record_id": "j2", "purposes": "urban-mobility-planning"},
        {**base, "record_id": "j3", "retention_days": "ninety"},
        {**base, "record_id": "j4", "valid_until": 5},
        {**base, "record_id": "j5", "notice_url": ["x"]},
        {"event": "withdrawn", "record_id": "j1", "actor": "resident"},
    ]
    path = tmp_path / "events.data"
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    report, errors = run(importer(engine, log), path, ImportFormat.JSONL)
    assert [(e.row, e.reason) for e in errors] == [
        (2, "CONSENT_FIELD_INVALID"),
        (3, "CONSENT_FIELD_INVALID"),
        (4, "TIMESTAMP_INVALID"),
        (5, "CONSENT_FIELD_INVALID"),
    ]
    assert report.applied == 2
    stored = ConsentRegistry(engine, "aurora", CITY_KEY, log).get("j1")
    assert (stored.retention_days, stored.language, stored.state) == (90, "fi", State.WITHDRAWN)


def test_a_database_failure_rolls_back_exactly_one_batch(
    engine: sa.Engine, log: MerkleLog, tmp_path: Path
) -> None:
    rows = [given(f"r{i}", f"res-{i}") for i in range(9)]
    rows.insert(7, event("withdrawn", "r4"))  # in batch 3, about a record of batch 2
    path = write_csv(tmp_path / "events.csv", rows)
    inserts = {"n": 0}

    def fail_second_batch(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.startswith("INSERT INTO consent_events"):
            inserts["n"] += 1
            if inserts["n"] == 2:
                raise sqlite3.OperationalError("disk I/O error")

    sa.event.listen(engine, "before_cursor_execute", fail_second_batch)
    try:
        report, errors = run(importer(engine, log, batch_size=3), path)
    finally:
        sa.event.remove(engine, "before_cursor_execute", fail_second_batch)
    assert (report.batches, report.failed_batches, report.applied) == (4, 1, 6)
    assert [(e.row, e.record_id, e.reason) for e in errors] == [
        (5, "r3", "BATCH_FAILED"),
        (6, "r4", "BATCH_FAILED"),
        (7, "r5", "BATCH_FAILED"),
        (9, "r4", "CONSENT_NOT_FOUND"),
    ]
    assert "lines 5-7" in errors[0].message and "disk I/O error" in errors[0].message
    # Nothing of batch 2 is stored anywhere: records, scopes, events or log.
    stored = {r["record_id"] for r in rows_of(engine, consent_records)}
    assert stored == {"r0", "r1", "r2", "r6", "r7", "r8"}
    assert {s["record_id"] for s in rows_of(engine, consent_scopes)} == stored
    assert log.size() == 3
    assert {verified(r)["record_id"] for r in receipts(engine, log)} == stored
    assert sum(len(s["receipts"]) for s in logged_statements(engine, log)) == 6
    # Running the file again applies what failed, and only that.
    report, errors = run(importer(engine, log, batch_size=3), path)
    assert errors == [] and (report.applied, report.duplicates) == (4, 6)
    assert history(engine, "r4") == ["given", "withdrawn"]
    assert log.size() == 5
    assert sum(len(s["receipts"]) for s in logged_statements(engine, log)) == 10


def test_a_change_through_the_api_while_importing_is_respected(
    engine: sa.Engine, log: MerkleLog, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = ConsentRegistry(engine, "aurora", CITY_KEY, log)
    registry.give(
        ConsentRecord(
            "r1",
            "res-1",
            ("urban-mobility-planning",),
            ("northwind",),
            ("mobility",),
            NOW - timedelta(days=1),
        ),
        actor="portal",
    )
    path = write_csv(tmp_path / "events.csv", [event("withdrawn", "r1"), given("r2")])
    original = write.BatchWriter.write
    calls = {"n": 0}

    def api_withdraws_first(self: Any, batch: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            registry.withdraw("r1", actor="resident via portal")
        original(self, batch)

    monkeypatch.setattr(write.BatchWriter, "write", api_withdraws_first)
    report, errors = run(importer(engine, log), path)
    assert calls["n"] == 2  # the first attempt found r1 changed and resolved the batch again
    assert errors == [] and (report.applied, report.duplicates) == (1, 1)
    assert history(engine, "r1") == ["given", "withdrawn"]
    with pytest.raises(FailedPrecondition):
        registry.withdraw("r1", actor="resident")


def test_records_given_and_changed_in_one_batch_are_stored_as_they_end_up(
    engine: sa.Engine, log: MerkleLog, tmp_path: Path
) -> None:
    path = write_csv(
        tmp_path / "events.csv",
        [
            given("a"),
            event("renewed", "a", valid_until=LATER),
            event("invalidated", "a"),
            given("b", "res-2", valid_until=""),
            event("renewed", "b", valid_until=LATER),
        ],
    )
    report, errors = run(importer(engine, log, batch_size=10), path)
    assert errors == [] and report.applied == 5
    registry = ConsentRegistry(engine, "aurora", CITY_KEY, log)
    a, b = registry.get("a"), registry.get("b")
    assert (a.state, a.valid_until) == (State.INVALIDATED, timefmt.parse(LATER))
    assert (b.state, b.valid_until) == (State.RENEWED, timefmt.parse(LATER))
    scopes = rows_of(engine, consent_scopes)
    assert {(s["record_id"], s["state"]) for s in scopes} == {
        ("a", "invalidated"),
        ("b", "renewed"),
    }
    digests = {r["record_id"]: r["content_digest"] for r in rows_of(engine, consent_records)}
    assert digests == {"a": a.digest(), "b": b.digest()}
    signed = receipts(engine, log)
    assert [verified(r)["state"] for r in signed] == [
        "given",
        "renewed",
        "invalidated",
        "given",
        "renewed",
    ]
    assert verified(signed[2])["terms_digest"] == a.digest()


def test_without_a_trust_bundle_any_recipient_id_passes(
    engine: sa.Engine, log: MerkleLog, tmp_path: Path
) -> None:
    path = write_csv(tmp_path / "events.csv", [given("r1", recipients="anyone")])
    imp = ConsentImporter(engine, "aurora", CITY_KEY, log, None, ImportLimits(workers=0))
    report, errors = run(imp, path)
    assert errors == [] and report.applied == 1


def test_receipts_match_the_registry_also_for_non_ascii_terms(
    engine: sa.Engine, log: MerkleLog, tmp_path: Path
) -> None:
    path = write_csv(
        tmp_path / "events.csv",
        [given("r-ä", "asukas-ö", actor="kaupunki € portal")],
    )
    report, errors = run(importer(engine, log), path)
    assert errors == [] and report.applied == 1
    (stored,) = receipts(engine, log)
    registry = ConsentRegistry(engine, "aurora", CITY_KEY, log)
    at = timefmt.parse(verified(stored)["at"])
    expected = registry.receipt(
        registry.get("r-ä"), Event.GIVE, "kaupunki € portal", at, State.GIVEN
    )
    assert stored == expected
    logged_statements(engine, log)


def test_a_record_changed_in_the_batch_that_creates_it_gets_the_payloads_of_one_stored_first(
    engine: sa.Engine, log: MerkleLog, tmp_path: Path
) -> None:
    # In one batch the renewal and withdrawal build on the rows the batch creates; one row per
    # batch builds them on the record as stored. The payloads must agree (but for their time).
    rows = [
        given("r1", data_categories="mobility;location;age"),
        event("renewed", "r1", valid_until=LATER),
        event("withdrawn", "r1"),
    ]
    path = write_csv(tmp_path / "events.csv", rows)

    def payloads(e: sa.Engine, e_log: MerkleLog) -> list[dict[str, Any]]:
        out = []
        for receipt in receipts(e, e_log):
            payload = verified(receipt)
            del payload["at"]
            out.append(payload)
        return out

    report, errors = run(importer(engine, log, batch_size=10), path)
    assert (report.applied, report.batches, errors) == (3, 1, [])
    one_by_one = storage.create_engine(f"sqlite:///{tmp_path / 'other.db'}")
    storage.upgrade(one_by_one)
    with MerkleLog(one_by_one, ORIGIN, CITY_KEY) as other_log:
        report, errors = run(importer(one_by_one, other_log, batch_size=1), path)
        assert (report.applied, report.batches, errors) == (3, 3, [])
        assert payloads(engine, log) == payloads(one_by_one, other_log)
    assert [p["state"] for p in payloads(engine, log)] == ["given", "renewed", "withdrawn"]
    one_by_one.dispose()


def test_worker_processes_give_the_same_result(
    engine: sa.Engine, log: MerkleLog, tmp_path: Path
) -> None:
    rows: list[dict[str, str]] = []
    for i in range(120):
        rows.append(given(f"r{i}", f"res-{i}"))
        if i % 7 == 3:
            rows.append(event("withdrawn", f"r{i - 2}"))
        if i % 11 == 5 and (i - 3) % 7 != 1:  # not one withdrawn already
            rows.append(event("renewed", f"r{i - 3}", valid_until=LATER))
    rows.append(given("bad", purposes="nope"))
    path = write_csv(tmp_path / "events.csv", rows)
    report, errors = run(importer(engine, log, batch_size=25, workers=2), path)
    assert [e.reason for e in errors] == ["PURPOSE_UNKNOWN"]
    assert report.applied == len(rows) - 1
    events = rows_of(engine, consent_events, consent_events.c.event_id)
    assert len(events) == report.applied
    signed = receipts(engine, log)
    assert [verified(r)["record_id"] for r in signed] == [e["record_id"] for e in events]
    assert sum(len(s["receipts"]) for s in logged_statements(engine, log)) == len(events)
    again, errors = run(importer(engine, log, batch_size=25, workers=2), path)
    assert (again.applied, again.duplicates, len(errors)) == (0, len(rows) - 1, 1)


def test_a_record_the_api_changes_meanwhile_is_resolved_again(
    engine: sa.Engine, log: MerkleLog, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = ConsentRegistry(engine, "aurora", CITY_KEY, log)
    run(importer(engine, log), write_csv(tmp_path / "given.csv", [given("r1"), given("r2")]))
    original = write.BatchWriter.write
    withdrawn: list[str] = []

    def api_first(self: Any, batch: Any) -> None:
        if not withdrawn:  # the resident withdraws through the API just before it is written
            withdrawn.append("r1")
            registry.withdraw("r1", actor="resident")
        original(self, batch)

    monkeypatch.setattr(write.BatchWriter, "write", api_first)
    path = write_csv(
        tmp_path / "later.csv",
        [event("renewed", "r1", valid_until=LATER), event("renewed", "r2", valid_until=LATER)],
    )
    report, errors = run(importer(engine, log), path)
    # Resolved again on what the API left: r1 can no longer be renewed; r2 is.
    assert [(e.record_id, e.reason) for e in errors] == [("r1", "CONSENT_NOT_ACTIVE")]
    assert report.applied == 1
    assert history(engine, "r1") == ["given", "withdrawn"]
    assert history(engine, "r2") == ["given", "renewed"]
    logged_statements(engine, log)


def test_the_wal_is_copied_back_in_the_background_and_starts_over(
    engine: sa.Engine, log: MerkleLog, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # However short the WAL, the writer waits for a pass before each batch, so it starts over.
    monkeypatch.setattr(checkpoints, "CHECKPOINT_PAGES", 1)
    database, wal = tmp_path / "node.db", tmp_path / "node.db-wal"

    def autocheckpoint() -> int:
        with engine.connect() as conn:
            return int(conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar_one())

    with engine.connect() as conn:  # an empty WAL to start with (the migrations filled it)
        conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    seen: list[tuple[int, int, int]] = []
    path = write_csv(
        tmp_path / "events.csv", [given(f"r{i:03}", resident=f"res-{i}") for i in range(60)]
    )
    report = importer(engine, log).run(
        path,
        progress=lambda _: seen.append(
            (autocheckpoint(), database.stat().st_size, wal.stat().st_size)
        ),
    )
    assert report.applied == 60 and len(seen) == 20
    assert {a for a, _, _ in seen} == {0}  # no commit copies the WAL itself
    assert seen[-1][1] > seen[0][1]  # the database file grew while the import ran
    # 20 batches in one WAL would take 20 times the first one's room.
    assert seen[-1][2] < 5 * seen[0][2]
    assert autocheckpoint() == 1000
    assert rows_of(engine, consent_records, consent_records.c.record_id)[-1]["record_id"] == "r059"


def test_a_database_without_a_wal_needs_no_checkpoints(tmp_path: Path) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'rollback-journal.db'}")  # journal: DELETE
    storage.upgrade(engine)
    threads: list[str] = []
    path = write_csv(tmp_path / "events.csv", [given(f"r{i}") for i in range(7)])
    with MerkleLog(engine, ORIGIN, CITY_KEY) as log:
        report = importer(engine, log).run(
            path, progress=lambda _: threads.extend(t.name for t in threading.enumerate())
        )
        assert report.applied == 7 and logged_statements(engine, log)
    assert "consent-import-writer_0" in threads  # seen while the import ran
    assert "consent-import-checkpoints" not in threads
    engine.dispose()


def test_limits_are_checked() -> None:
    with pytest.raises(Exception, match="batch size"):
        ImportLimits(batch_size=0)
    with pytest.raises(Exception, match="workers"):
        ImportLimits(workers=-1)


def test_stored_rows_are_the_rows_the_registry_stores(
    engine: sa.Engine, log: MerkleLog, tmp_path: Path
) -> None:
    path = write_csv(
        tmp_path / "events.csv",
        [given("r1", recipients="northwind;category:public-authority", valid_until="")],
    )
    run(importer(engine, log), path)
    other = storage.create_engine(f"sqlite:///{tmp_path / 'api.db'}")
    storage.upgrade(other)
    try:
        with MerkleLog(other, ORIGIN, CITY_KEY) as other_log:
            registry = ConsentRegistry(other, "aurora", CITY_KEY, other_log)
            registry.give(
                ConsentRegistry(engine, "aurora", CITY_KEY, log).get("r1"), actor="portal"
            )
        for table, order in (
            (consent_records, consent_records.c.record_id),
            (consent_scopes, sa.text("purpose, recipient, data_category")),
        ):
            with engine.connect() as a, other.connect() as b:
                query = sa.text(f"SELECT * FROM {table.name} ORDER BY {order}")
                assert list(a.execute(query)) == list(b.execute(query))
    finally:
        other.dispose()


def test_an_import_racing_the_api_keeps_every_history_valid(
    engine: sa.Engine, log: MerkleLog, tmp_path: Path
) -> None:
    """The API withdraws records while the import gives, renews and withdraws them."""
    import threading

    rows: list[dict[str, str]] = []
    for i in range(400):
        rows.append(given(f"r{i}", f"res-{i}"))
        if i % 4 == 3:
            rows.append(event("withdrawn", f"r{i - 3}"))
            rows.append(event("renewed", f"r{i - 2}", valid_until=LATER))
    path = write_csv(tmp_path / "events.csv", rows)
    registry = ConsentRegistry(engine, "aurora", CITY_KEY, log)
    done = threading.Event()
    withdrawn_by_api: list[str] = []

    failed: list[BaseException] = []

    def api() -> None:
        try:
            withdraw_while_importing()
        except BaseException as e:  # the API must fail only with its own errors
            failed.append(e)

    def withdraw_while_importing() -> None:
        while not done.is_set():
            for i in range(0, 400, 3):
                if f"r{i}" in withdrawn_by_api:
                    continue
                try:
                    registry.withdraw(f"r{i}", actor="resident via portal")
                    withdrawn_by_api.append(f"r{i}")
                except CitybrokerError:  # not imported yet, or withdrawn by the import
                    pass
            done.wait(0.01)

    racer = threading.Thread(target=api)
    racer.start()
    try:
        report, errors = run(importer(engine, log, batch_size=50), path)
    finally:
        done.set()
        racer.join()
    assert not failed, failed
    assert report.failed_batches == 0
    assert report.applied + report.duplicates + report.error_rows == len(rows)
    assert {e.reason for e in errors} <= {"CONSENT_NOT_ACTIVE"}
    for i in range(400):
        h = history(engine, f"r{i}")
        assert h[0] == "given" and h.count("withdrawn") <= 1, (i, h)
        if "withdrawn" in h:
            assert h[-1] == "withdrawn" and h.index("withdrawn") == len(h) - 1
    assert withdrawn_by_api  # the race did happen


def test_a_refusal_and_a_consent_under_one_id_conflict_as_in_the_api(
    engine: sa.Engine, log: MerkleLog, tmp_path: Path
) -> None:
    path = write_csv(
        tmp_path / "events.csv",
        [
            given("r1", event="refused"),
            given("r1", event="refused"),  # the same decision again: already applied
            given("r1"),  # the opposite decision, same terms
            given("r2"),
            given("r2", event="refused"),
            given("r3", data_categories="mobility;mobility"),  # as ConsentRecord.validate says
        ],
    )
    report, errors = run(importer(engine, log), path)
    assert [(e.row, e.record_id, e.reason) for e in errors] == [
        (4, "r1", "CONSENT_RECORD_CONFLICT"),
        (6, "r2", "CONSENT_RECORD_CONFLICT"),
        (7, "r3", "CONSENT_FIELD_INVALID"),
    ]
    assert errors[0].message == "consent record r1 was refused, not given"
    assert (report.applied, report.duplicates) == (2, 1)
    # The API agrees on what it would do with the same requests.
    registry = ConsentRegistry(engine, "aurora", CITY_KEY, log)
    with pytest.raises(AlreadyExists):
        registry.give(registry.get("r1"), actor="portal")
    again, errors = run(importer(engine, log), path)
    assert (again.applied, again.duplicates, len(errors)) == (0, 3, 3)


def test_every_imported_event_is_covered_by_a_signed_statement_in_the_log(
    engine: sa.Engine, log: MerkleLog, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(consent_batch, "MAX_EVENTS", 2)
    rows = [given(f"r{i}", f"res-{i}") for i in range(5)]
    path = write_csv(tmp_path / "events.csv", [*rows, event("withdrawn", "r0")])
    report, errors = run(importer(engine, log, batch_size=10), path)
    assert errors == [] and report.applied == 6
    # One batch, over the limit of a statement: three statements, each logged.
    statements = logged_statements(engine, log)
    assert [len(s["receipts"]) for s in statements] == [2, 2, 2]
    assert log.size() == 3
    assert {s["receipt_type"] for s in statements} == {dsse.media_type(RECEIPT)}
    # The payloads are rebuilt from the event rows and records: a stored event or record that
    # is not what was signed is not covered any more.
    event_where = consent_events.c.record_id == "r3"
    tampering: list[tuple[sa.Table, Any, dict[str, Any]]] = [
        (consent_events, event_where, {"actor": "someone else"}),
        (consent_events, event_where, {"valid_until": None}),
        (consent_records, consent_records.c.record_id == "r3", {"notice_url": "https://x"}),
    ]
    for table, where, values in tampering:
        with engine.begin() as conn:
            before = conn.execute(sa.select(table).where(where)).one()._asdict()
            conn.execute(table.update().where(where).values(values))
        with pytest.raises(AssertionError):
            logged_statements(engine, log)
        with engine.begin() as conn:
            conn.execute(table.update().where(where).values(before))
        logged_statements(engine, log)


@pytest.mark.postgres
def test_the_same_import_on_postgresql(postgres_url: str, tmp_path: Path) -> None:
    engine = storage.create_engine(postgres_url)
    storage.upgrade(engine)
    rows = [given(f"r{i}", f"res-{i}") for i in range(6)]
    rows += [event("withdrawn", "r1"), event("renewed", "r2", valid_until=LATER)]
    path = write_csv(tmp_path / "events.csv", [*rows, given("r3", "res-9")])
    try:
        with MerkleLog(engine, ORIGIN, CITY_KEY) as log:
            report, errors = run(importer(engine, log, batch_size=4), path)
            assert [e.reason for e in errors] == ["CONSENT_RECORD_CONFLICT"]
            assert report.applied == 8
            registry = ConsentRegistry(engine, "aurora", CITY_KEY, log)
            assert registry.get("r1").state is State.WITHDRAWN
            assert registry.get("r2").valid_until == timefmt.parse(LATER)
            assert [verified(r)["event"] for r in receipts(engine, log)][-2:] == [
                "withdrawn",
                "renewed",
            ]
            assert sum(len(s["receipts"]) for s in logged_statements(engine, log)) == 8
            again, _ = run(importer(engine, log, batch_size=4), path)
            assert (again.applied, again.duplicates) == (0, 8)
    finally:
        engine.dispose()
