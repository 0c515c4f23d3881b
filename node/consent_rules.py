"""What one consent event does to a record: the rule the ConsentService API and the bulk import
both apply. Pure: the caller reads the record and writes the outcome; no I/O here.

A `given` / `refused` event starts a record; under an id that exists it is a retry when the terms
are the same (and the decision too), a conflict otherwise. Any other event follows
`node.consent_lifecycle.next_state`, and a renewal must end after the record's `valid_from`.

A replay (the import, which may read the same file twice) also knows the record's history: an
event the history already holds is a duplicate, not an error, and a record's terms as it was
created match as well as its current ones (a renewal changes its `valid_until`).
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime
from enum import Enum
from typing import NamedTuple, Protocol

from domain.errors import AlreadyExists, CitybrokerError, InvalidArgument, NotFound
from keys import timefmt
from node.consent_lifecycle import STARTING, Event, State, next_state


class Current(Protocol):
    """A stored record as the rule needs it."""

    @property
    def state(self) -> State:
        """The record's lifecycle state as it is now."""
        ...

    @property
    def digest(self) -> str:
        """The terms digest of the record as it is now."""
        ...

    @property
    def valid_from(self) -> datetime:
        """When the record's consent starts; a renewal's new validity end must be after it."""
        ...


class History(Protocol):
    """What a record's stored events hold, for a replay. Asked only when the rule needs it, so a
    caller may read it from the store lazily."""

    @property
    def until(self) -> str | None:
        """The record's validity end now (RFC 3339), or None."""
        ...

    def created_digest(self) -> str:
        """The terms digest the record was created with."""
        ...

    def renewals(self) -> Collection[str | None]:
        """The validity end (RFC 3339, or None) of each of its renewals."""
        ...


class Proposed(NamedTuple):
    """One event for a record: `digest` is the terms digest of a starting event's record,
    `valid_until` a renewal's new validity end."""

    record_id: str
    event: Event
    digest: str = ""
    valid_until: datetime | None = None


class Outcome(Enum):
    APPLY = "apply"  # record the event: the record moves to `Decision.state`
    ALREADY = "already"  # already applied: nothing changes
    REFUSE = "refuse"  # not allowed: `Decision.refusal` says why


class Decision(NamedTuple):
    """What an event does: its outcome, the state it leaves (APPLY), or why not (REFUSE)."""

    outcome: Outcome
    state: State | None = None
    refusal: CitybrokerError | None = None


ALREADY = Decision(Outcome.ALREADY)
_STARTED = {e: Decision(Outcome.APPLY, State(e.value)) for e in STARTING}


def decide(current: Current | None, proposed: Proposed, history: History | None = None) -> Decision:
    """What `proposed` does to the record in `current` (None: no such record), as a new call
    (`history` None) or as a replay of events that may already be applied (`history` given)."""
    if proposed.event in STARTING:
        if current is None:
            return _STARTED[proposed.event]
        return _start_again(current, proposed, history)
    if current is None:
        rid = proposed.record_id
        return _refuse(NotFound(f"no consent record {rid!r}", reason="CONSENT_NOT_FOUND"))
    if history is not None and _already_moved(current, proposed, history):
        return ALREADY
    try:
        state = next_state(current.state, proposed.event)
    except CitybrokerError as e:
        return _refuse(e)
    until = proposed.valid_until
    if proposed.event is Event.RENEW and until is not None and until <= current.valid_from:
        return _refuse(
            InvalidArgument("valid_until must be after valid_from", reason="CONSENT_DATES_INVALID")
        )
    return Decision(Outcome.APPLY, state)


def _start_again(current: Current, proposed: Proposed, history: History | None) -> Decision:
    """A starting event under an id that exists: a retry of the same decision on the same terms
    is already applied; other terms, or the opposite decision, conflict."""
    rid, event = proposed.record_id, proposed.event
    same_terms = proposed.digest == current.digest or (
        history is not None and proposed.digest == history.created_digest()
    )
    if not same_terms:
        return _conflict(f"consent record {rid} exists with different terms")
    # A refused record stays refused; any other started as given.
    first = Event.REFUSE if current.state is State.REFUSED else Event.GIVE
    if event is not first:
        return _conflict(f"consent record {rid} was {first.value}, not {event.value}")
    return ALREADY


def _already_moved(current: Current, proposed: Proposed, history: History) -> bool:
    """Whether the history already holds this (non-starting) event: for an end event, the state
    the record is in; for a renewal, one to the same validity end."""
    if proposed.event is not Event.RENEW:
        return current.state.value == proposed.event.value
    until = proposed.valid_until
    text = timefmt.fmt(until) if until is not None else None
    return (current.state is State.RENEWED and history.until == text) or text in history.renewals()


def _conflict(message: str) -> Decision:
    return _refuse(AlreadyExists(message, reason="CONSENT_RECORD_CONFLICT"))


def _refuse(error: CitybrokerError) -> Decision:
    return Decision(Outcome.REFUSE, refusal=error)
