"""The consent lifecycle as a pure state machine: which event may follow which state, and who may
cause it. No I/O; the registry applies it and the property tests drive it.

    (new) --given--> given --renewed--> renewed --renewed--> renewed
    (new) --refused--> refused
    given|renewed --withdrawn (resident) | revoked (city) | expired (time) | invalidated (city)--> end

Only given and renewed count as valid. Changing terms means withdrawing and giving a new record.
"""

from __future__ import annotations

from enum import StrEnum

from domain.errors import FailedPrecondition


class State(StrEnum):
    GIVEN = "given"
    RENEWED = "renewed"
    REFUSED = "refused"
    WITHDRAWN = "withdrawn"
    REVOKED = "revoked"
    EXPIRED = "expired"
    INVALIDATED = "invalidated"


class Event(StrEnum):
    GIVE = "given"
    RENEW = "renewed"
    REFUSE = "refused"
    WITHDRAW = "withdrawn"
    REVOKE = "revoked"
    EXPIRE = "expired"
    INVALIDATE = "invalidated"


class Actor(StrEnum):
    RESIDENT = "resident"
    CITY = "city"
    SYSTEM = "system"


VALID = frozenset({State.GIVEN, State.RENEWED})
STARTING = frozenset({Event.GIVE, Event.REFUSE})
# Who may cause each event: residents decide about their consent, the city can only end it.
ACTORS: dict[Event, Actor] = {
    Event.GIVE: Actor.RESIDENT,
    Event.RENEW: Actor.RESIDENT,
    Event.REFUSE: Actor.RESIDENT,
    Event.WITHDRAW: Actor.RESIDENT,
    Event.REVOKE: Actor.CITY,
    Event.INVALIDATE: Actor.CITY,
    Event.EXPIRE: Actor.SYSTEM,
}


def next_state(current: State | None, event: Event) -> State:
    """The state after `event`, or FailedPrecondition naming why it cannot happen now."""
    if current is None:
        if event in STARTING:
            return State(event.value)
        raise FailedPrecondition(
            f"a consent record cannot start with {event.value}",
            reason="CONSENT_EVENT_NOT_ALLOWED",
            event=event.value,
        )
    if event in STARTING:
        raise FailedPrecondition(
            f"the record already exists ({current.value})",
            reason="CONSENT_RECORD_EXISTS",
            state=current.value,
        )
    if current not in VALID:
        raise FailedPrecondition(
            f"consent is {current.value}; it can no longer be {event.value}",
            reason="CONSENT_NOT_ACTIVE",
            state=current.value,
        )
    return State(event.value)
