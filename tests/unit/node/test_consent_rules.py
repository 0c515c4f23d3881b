"""The consent rule both the API and the bulk import apply: what one event does to a record."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from keys import timefmt
from node.consent_lifecycle import Event, State
from node.consent_rules import Outcome, Proposed, decide

FROM = timefmt.now() - timedelta(days=1)
LATER = FROM + timedelta(days=90)


@dataclass
class Record:
    state: State
    digest: str = "sha256:terms"
    valid_from: datetime = FROM


@dataclass
class History:
    until: str | None = None
    created: str = "sha256:created"
    renewed: set[str | None] = field(default_factory=set)
    asked: list[str] = field(default_factory=list)

    def created_digest(self) -> str:
        self.asked.append("created")
        return self.created

    def renewals(self) -> Collection[str | None]:
        self.asked.append("renewals")
        return self.renewed


def test_a_new_record_starts_in_the_state_its_event_names() -> None:
    for event, state in ((Event.GIVE, State.GIVEN), (Event.REFUSE, State.REFUSED)):
        decision = decide(None, Proposed("r1", event, "sha256:terms"))
        assert (decision.outcome, decision.state) == (Outcome.APPLY, state)


def test_giving_the_same_terms_again_is_already_applied() -> None:
    decision = decide(Record(State.GIVEN), Proposed("r1", Event.GIVE, "sha256:terms"))
    assert decision.outcome is Outcome.ALREADY


def test_other_terms_or_the_opposite_decision_conflict() -> None:
    other = decide(Record(State.GIVEN), Proposed("r1", Event.GIVE, "sha256:other"))
    assert other.outcome is Outcome.REFUSE and other.refusal is not None
    assert other.refusal.reason == "CONSENT_RECORD_CONFLICT"
    assert "different terms" in other.refusal.message
    opposite = decide(Record(State.REFUSED), Proposed("r1", Event.GIVE, "sha256:terms"))
    assert opposite.refusal is not None and opposite.refusal.reason == "CONSENT_RECORD_CONFLICT"
    assert opposite.refusal.message == "consent record r1 was refused, not given"


def test_a_replay_also_matches_the_terms_the_record_was_created_with() -> None:
    record = Record(State.RENEWED, digest="sha256:renewed")
    proposed = Proposed("r1", Event.GIVE, "sha256:created")
    assert decide(record, proposed).outcome is Outcome.REFUSE  # an API call: as it is now
    assert decide(record, proposed, History()).outcome is Outcome.ALREADY


def test_events_on_a_missing_or_ended_record_are_refused() -> None:
    missing = decide(None, Proposed("r1", Event.WITHDRAW))
    assert missing.refusal is not None and missing.refusal.reason == "CONSENT_NOT_FOUND"
    ended = decide(Record(State.WITHDRAWN), Proposed("r1", Event.REVOKE))
    assert ended.refusal is not None and ended.refusal.reason == "CONSENT_NOT_ACTIVE"


def test_a_renewal_must_end_after_valid_from() -> None:
    early = decide(Record(State.GIVEN), Proposed("r1", Event.RENEW, valid_until=FROM))
    assert early.refusal is not None and early.refusal.reason == "CONSENT_DATES_INVALID"
    later = decide(Record(State.GIVEN), Proposed("r1", Event.RENEW, valid_until=LATER))
    assert (later.outcome, later.state) == (Outcome.APPLY, State.RENEWED)


def test_a_replay_finds_events_the_history_holds_and_asks_only_what_it_needs() -> None:
    withdrawn = decide(Record(State.WITHDRAWN), Proposed("r1", Event.WITHDRAW), History())
    assert withdrawn.outcome is Outcome.ALREADY
    history = History(until=timefmt.fmt(LATER))
    renewal = Proposed("r1", Event.RENEW, valid_until=LATER)
    assert decide(Record(State.RENEWED), renewal, history).outcome is Outcome.ALREADY
    assert history.asked == []
    earlier = History(renewed={timefmt.fmt(LATER)})
    assert decide(Record(State.RENEWED), renewal, earlier).outcome is Outcome.ALREADY
    assert earlier.asked == ["renewals"]
    # The API takes the same call as new: withdrawing twice is refused.
    again = decide(Record(State.WITHDRAWN), Proposed("r1", Event.WITHDRAW))
    assert again.refusal is not None and again.refusal.reason == "CONSENT_NOT_ACTIVE"
