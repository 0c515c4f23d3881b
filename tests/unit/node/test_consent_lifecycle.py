"""The consent lifecycle state machine (node.consent_lifecycle): every (state, event) pair."""

from __future__ import annotations

import pytest

from domain.errors import FailedPrecondition
from node.consent_lifecycle import ACTORS, STARTING, VALID, Actor, Event, State, next_state

TERMINAL = [s for s in State if s not in VALID]
ENDING = [Event.WITHDRAW, Event.REVOKE, Event.EXPIRE, Event.INVALIDATE]


def test_only_given_and_renewed_are_valid() -> None:
    assert {State.GIVEN, State.RENEWED} == VALID
    assert set(TERMINAL) == {
        State.REFUSED,
        State.WITHDRAWN,
        State.REVOKED,
        State.EXPIRED,
        State.INVALIDATED,
    }


@pytest.mark.parametrize(
    ("event", "state"), [(Event.GIVE, State.GIVEN), (Event.REFUSE, State.REFUSED)]
)
def test_a_record_starts_given_or_refused(event: Event, state: State) -> None:
    assert next_state(None, event) is state


@pytest.mark.parametrize("event", [e for e in Event if e not in STARTING])
def test_a_record_cannot_start_with_anything_else(event: Event) -> None:
    with pytest.raises(FailedPrecondition) as e:
        next_state(None, event)
    assert e.value.reason == "CONSENT_EVENT_NOT_ALLOWED"
    assert e.value.metadata == {"event": event.value}


@pytest.mark.parametrize("current", list(State))
@pytest.mark.parametrize("event", sorted(STARTING))
def test_an_existing_record_cannot_start_again(current: State, event: Event) -> None:
    with pytest.raises(FailedPrecondition) as e:
        next_state(current, event)
    assert e.value.reason == "CONSENT_RECORD_EXISTS"
    assert e.value.metadata == {"state": current.value}


@pytest.mark.parametrize("current", sorted(VALID))
def test_a_valid_consent_can_be_renewed_again_and_again(current: State) -> None:
    assert next_state(current, Event.RENEW) is State.RENEWED


@pytest.mark.parametrize("current", sorted(VALID))
@pytest.mark.parametrize("event", ENDING)
def test_a_valid_consent_ends_in_the_state_named_by_the_event(current: State, event: Event) -> None:
    after = next_state(current, event)
    assert after.value == event.value
    assert after not in VALID


@pytest.mark.parametrize("current", TERMINAL)
@pytest.mark.parametrize("event", [e for e in Event if e not in STARTING])
def test_terminal_states_never_change(current: State, event: Event) -> None:
    with pytest.raises(FailedPrecondition) as e:
        next_state(current, event)
    assert e.value.reason == "CONSENT_NOT_ACTIVE"
    assert e.value.metadata == {"state": current.value}
    assert current.value in e.value.message and event.value in e.value.message


def test_who_may_cause_each_event() -> None:
    assert set(ACTORS) == set(Event)
    resident = {e for e, a in ACTORS.items() if a is Actor.RESIDENT}
    assert resident == {Event.GIVE, Event.RENEW, Event.REFUSE, Event.WITHDRAW}
    assert {e for e, a in ACTORS.items() if a is Actor.CITY} == {Event.REVOKE, Event.INVALIDATE}
    assert ACTORS[Event.EXPIRE] is Actor.SYSTEM
