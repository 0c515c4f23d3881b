"""A real ConsentRegistry (SQLite in a temp dir) driven through random event sequences and compared
with a plain model: states, errors, the append-only history with its signed receipts, and the
query-time consent filter."""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from audit.log import MerkleLog
from domain.errors import (
    AlreadyExists,
    CitybrokerError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
)
from infra import storage
from keys import dsse, timefmt
from keys.ed25519 import Signer
from node import aggregate, consent
from node.consent import ConsentRecord, ConsentRegistry
from node.consent_lifecycle import VALID, Event, State

CITY_KEY = Signer.generate()
BASE = timefmt.now()
VALID_FROM = BASE - timedelta(days=1)
PARTNER = "northwind-mobility"
CATEGORY = "category:public-transport-operator"
PURPOSE = "urban-mobility-planning"
FILTER_RECIPIENTS = (PARTNER, CATEGORY)

# record id -> (resident, purpose, recipient): two records of one resident, one given to the
# partner's category, one for a purpose the filter never asks about.
RECORDS = {
    "r0": ("res-a", PURPOSE, PARTNER),
    "r1": ("res-a", PURPOSE, CATEGORY),
    "r2": ("res-b", PURPOSE, PARTNER),
    "r3": ("res-c", PURPOSE, PARTNER),
    "r4": ("res-d", "scientific-research", PARTNER),
}
RESIDENTS = sorted({r for r, _, _ in RECORDS.values()})
# Ends of validity, in days after BASE (None: open-ended); renewals may also try one before start.
UNTIL = [None, 2, 10, 40]
RENEW_UNTIL = [*UNTIL, -3]
people = sa.Table("people", sa.MetaData(), sa.Column("resident_id", sa.String(128)))


def at(days: float | None) -> datetime | None:
    return None if days is None else BASE + timedelta(days=days)


def record(record_id: str, until: float | None) -> ConsentRecord:
    resident, purpose, recipient = RECORDS[record_id]
    return ConsentRecord(
        record_id=record_id,
        resident_id=resident,
        purposes=(purpose,),
        recipients=(recipient,),
        data_categories=("mobility",),
        valid_from=VALID_FROM,
        valid_until=at(until),
        jurisdiction="EU-FI",
    )


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated node database with a table of residents, copied for every example."""
    path = tmp_path_factory.mktemp("consent-sm") / "template.db"
    engine = storage.create_engine(f"sqlite:///{path}")
    storage.upgrade(engine)
    people.create(engine)
    with engine.begin() as conn:
        conn.execute(people.insert(), [{"resident_id": r} for r in RESIDENTS])
    engine.dispose()
    return path


@dataclass
class Model:
    terms: ConsentRecord
    first_event: Event
    state: State
    events: list[str] = field(default_factory=list)

    def valid_at(self, t: datetime) -> bool:
        until = self.terms.valid_until
        return self.state in VALID and self.terms.valid_from <= t and (until is None or t < until)


class ConsentLifecycle(RuleBasedStateMachine):
    template: Path

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="consent-sm-"))
        db = self.dir / "node.db"
        shutil.copy(self.template, db)
        self.engine = storage.create_engine(f"sqlite:///{db}")
        self.log = MerkleLog(self.engine, "citybroker/node/aurora", CITY_KEY)
        self.registry = ConsentRegistry(self.engine, "aurora", CITY_KEY, self.log)
        self.model: dict[str, Model] = {}
        self.receipts: dict[str, list[bytes]] = {}
        self.ended: dict[str, State] = {}
        self.clock = 0.0  # days after BASE

    def teardown(self) -> None:
        self.log.close()
        self.engine.dispose()
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- helpers ---------------------------------------------------------------------------------

    def expect_error(self, error: type[CitybrokerError], reason: str, call: object) -> None:
        assert callable(call)
        try:
            call()
        except error as e:
            assert e.reason == reason, (e.reason, reason)
            return
        raise AssertionError(f"expected {reason}")

    def check_receipt(self, receipt: bytes, record_id: str, event: Event, state: State) -> None:
        payload, _ = dsse.verify(
            dsse.Envelope.from_json(receipt),
            consent.RECEIPT,
            lambda kid: CITY_KEY.public if kid == CITY_KEY.keyid else None,
        )
        assert (payload["record_id"], payload["event"], payload["state"]) == (
            record_id,
            event.value,
            state.value,
        )
        assert payload["terms_digest"] == self.model[record_id].terms.digest()

    def appended(self, record_id: str, event: Event, receipt: bytes) -> None:
        m = self.model[record_id]
        m.events.append(event.value)
        self.receipts.setdefault(record_id, []).append(receipt)
        self.check_receipt(receipt, record_id, event, m.state)

    # -- rules -----------------------------------------------------------------------------------

    def start(self, event: Event, record_id: str, until: float | None) -> None:
        r = record(record_id, until)
        call = self.registry.give if event is Event.GIVE else self.registry.refuse
        m = self.model.get(record_id)
        if m is None:
            receipt = call(r, "resident")
            state = State.GIVEN if event is Event.GIVE else State.REFUSED
            self.model[record_id] = Model(r, event, state)
            self.appended(record_id, event, receipt)
        elif m.terms.digest() == r.digest() and m.first_event is event:
            # Idempotent: the same decision on the same terms returns the first receipt.
            assert call(r, "resident") == self.receipts[record_id][0]
        else:
            self.expect_error(AlreadyExists, "CONSENT_RECORD_CONFLICT", lambda: call(r, "resident"))

    @rule(record_id=st.sampled_from(sorted(RECORDS)), until=st.sampled_from(UNTIL))
    def give(self, record_id: str, until: float | None) -> None:
        self.start(Event.GIVE, record_id, until)

    @rule(record_id=st.sampled_from(sorted(RECORDS)), until=st.sampled_from(UNTIL))
    def refuse(self, record_id: str, until: float | None) -> None:
        self.start(Event.REFUSE, record_id, until)

    @rule(record_id=st.sampled_from(sorted(RECORDS)), until=st.sampled_from(RENEW_UNTIL))
    def renew(self, record_id: str, until: float | None) -> None:
        m = self.model.get(record_id)
        call = lambda: self.registry.renew(record_id, at(until), "resident")  # noqa: E731
        if m is None:
            self.expect_error(NotFound, "CONSENT_NOT_FOUND", call)
        elif m.state not in VALID:
            self.expect_error(FailedPrecondition, "CONSENT_NOT_ACTIVE", call)
        elif until is not None and at(until) <= m.terms.valid_from:  # type: ignore[operator]
            self.expect_error(InvalidArgument, "CONSENT_DATES_INVALID", call)
        else:
            receipt = call()
            m.terms, m.state = replace(m.terms, valid_until=at(until)), State.RENEWED
            self.appended(record_id, Event.RENEW, receipt)

    @rule(
        record_id=st.sampled_from([*sorted(RECORDS), "never-given"]),
        event=st.sampled_from([Event.WITHDRAW, Event.REVOKE, Event.INVALIDATE]),
    )
    def end(self, record_id: str, event: Event) -> None:
        method = {
            Event.WITHDRAW: self.registry.withdraw,
            Event.REVOKE: self.registry.revoke,
            Event.INVALIDATE: self.registry.invalidate,
        }[event]
        m = self.model.get(record_id)
        call = lambda: method(record_id, "someone")  # noqa: E731
        if m is None:
            self.expect_error(NotFound, "CONSENT_NOT_FOUND", call)
        elif m.state not in VALID:
            self.expect_error(FailedPrecondition, "CONSENT_NOT_ACTIVE", call)
        else:
            receipt = call()
            m.state = State(event.value)
            self.appended(record_id, event, receipt)

    @rule(days=st.sampled_from([0, 1, 3, 5, 12, 45]))
    def time_passes(self, days: float) -> None:
        """Time moves on by `days` and the expiry job runs."""
        self.clock += days
        now = BASE + timedelta(days=self.clock)
        due = sorted(
            rid
            for rid, m in self.model.items()
            if m.state in VALID and m.terms.valid_until is not None and m.terms.valid_until <= now
        )
        receipts = self.registry.expire_due(now, batch=2)
        assert len(receipts) == len(due)
        by_record = {consent_payload(r)["record_id"]: r for r in receipts}
        assert sorted(by_record) == due
        for rid in due:
            self.model[rid].state = State.EXPIRED
            self.appended(rid, Event.EXPIRE, by_record[rid])

    # -- invariants ------------------------------------------------------------------------------

    @invariant()
    def states_match_the_model(self) -> None:
        for rid in [*RECORDS, "never-given"]:
            m = self.model.get(rid)
            if m is None:
                self.expect_error(NotFound, "CONSENT_NOT_FOUND", lambda: self.registry.get(rid))  # noqa: B023
                continue
            stored = self.registry.get(rid)
            assert stored.state is m.state
            assert stored == replace(m.terms, state=m.state)

    @invariant()
    def terminal_states_never_change(self) -> None:
        for rid, m in self.model.items():
            if m.state not in VALID:
                self.ended.setdefault(rid, m.state)
        for rid, state in self.ended.items():
            assert self.registry.get(rid).state is state

    @invariant()
    def history_is_append_only_and_matches(self) -> None:
        for rid, m in self.model.items():
            history = self.registry.history(rid)
            assert [e.event.value for e in history] == m.events
            # The receipts returned when each event happened are stored unchanged, in order.
            assert [e.receipt for e in history] == self.receipts[rid]
            assert all(e.actor == "system" for e in history if e.event is Event.EXPIRE)

    @invariant()
    def consent_filter_admits_exactly_the_valid(self) -> None:
        now = BASE + timedelta(days=self.clock)
        expected = {
            RECORDS[rid][0]
            for rid, m in self.model.items()
            if RECORDS[rid][1] == PURPOSE and m.valid_at(now)
        }
        stmt = sa.select(people.c.resident_id).where(
            aggregate.consent_filter(
                people.c.resident_id, PURPOSE, FILTER_RECIPIENTS, "mobility", now
            )
        )
        with self.engine.connect() as conn:
            got = {r[0] for r in conn.execute(stmt)}
        assert got == expected
        # Partner by name only: the category consent does not count.
        by_name = sa.select(people.c.resident_id).where(
            aggregate.consent_filter(people.c.resident_id, PURPOSE, (PARTNER,), "mobility", now)
        )
        with self.engine.connect() as conn:
            named = {r[0] for r in conn.execute(by_name)}
        assert named == {
            RECORDS[rid][0]
            for rid, m in self.model.items()
            if RECORDS[rid][1:] == (PURPOSE, PARTNER) and m.valid_at(now)
        }


def consent_payload(receipt: bytes) -> dict[str, object]:
    payload, _ = dsse.verify(
        dsse.Envelope.from_json(receipt),
        consent.RECEIPT,
        lambda kid: CITY_KEY.public if kid == CITY_KEY.keyid else None,
    )
    return payload


def test_consent_lifecycle_against_the_model(template: Path) -> None:
    ConsentLifecycle.template = template
    state_machine_test = ConsentLifecycle.TestCase
    state_machine_test.settings = settings(
        max_examples=35,
        stateful_step_count=25,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    state_machine_test("runTest").runTest()
