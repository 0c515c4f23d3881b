"""Permission before existence: a partner cannot tell what a city holds outside its agreement.

Each probe pairs something the city has but the demo agreement does not offer with something the
city does not have at all. Through the broker's partner API (real gRPC, the partner's own token),
both are refused with the same code, reason and message (up to the name asked), in the answer and
in the dry run, and no message names a generalisation the agreement does not offer.
"""

from __future__ import annotations

import pytest

from domain.query import Dimension, Filter, FilterOp, Measure, MeasureKind, Query
from tests.conftest import RunningFederation
from tests.integration.conftest import by_mode

COUNT = (Measure(MeasureKind.COUNT_RECORDS),)


def _traffic(**overrides: object) -> Query:
    return by_mode(**{"dataset": "traffic", "group_by": (), **overrides})


# (what the city has outside the agreement, the same shape with a name it does not have, the name
# asked in each): the demo catalogue has a `residents` dataset, a traffic `hour` field and
# `week`/`day` generalisations of trip dates, none of them in the demo agreement.
PROBES: dict[str, tuple[Query, Query, str, str]] = {
    "dataset": (
        by_mode(dataset="residents"),
        by_mode(dataset="parking"),
        "residents",
        "parking",
    ),
    "group-field": (
        _traffic(group_by=(Dimension("hour"),)),
        _traffic(group_by=(Dimension("lanes"),)),
        "hour",
        "lanes",
    ),
    "measure-field": (
        _traffic(measures=(Measure(MeasureKind.SUM, "hour"),)),
        _traffic(measures=(Measure(MeasureKind.SUM, "lanes"),)),
        "hour",
        "lanes",
    ),
    "filter-field": (
        _traffic(measures=COUNT, filters=(Filter("hour", FilterOp.IN, ("5-9",), "band5"),)),
        _traffic(measures=COUNT, filters=(Filter("lanes", FilterOp.IN, ("5-9",), "band5"),)),
        "hour",
        "lanes",
    ),
    "group-generalisation": (
        by_mode(group_by=(Dimension("trip_date", "week"),)),
        by_mode(group_by=(Dimension("trip_date", "fortnight"),)),
        "week",
        "fortnight",
    ),
    "filter-generalisation": (
        by_mode(filters=(Filter("trip_date", FilterOp.IN, ("2026-W33",), "week"),)),
        by_mode(filters=(Filter("trip_date", FilterOp.IN, ("2026-W33",), "fortnight"),)),
        "week",
        "fortnight",
    ),
    "raw-number-filter": (
        by_mode(filters=(Filter("distance_km", FilterOp.EQUALS, ("3.0",)),)),
        by_mode(filters=(Filter("seats", FilterOp.EQUALS, ("3.0",)),)),
        "distance_km",
        "seats",
    ),
}

# Generalisations the demo catalogue has that the demo agreement offers nowhere.
NOT_OFFERED = ("day", "week", "band5", "band10", "hour")


Seen = dict[str, tuple[str, str, str]]


def _refusals(rf: RunningFederation, query: Query, name: str) -> Seen:
    """Each city's refusal: code, reason and message with the name asked blanked out."""
    with rf.partner() as client:
        answer = client.query(query)
    assert answer.cells == []
    return {c.city: (c.code, c.reason, c.message.replace(name, "<asked>")) for c in answer.cities}


def _plans(rf: RunningFederation, query: Query, name: str) -> Seen:
    """Each city's dry-run refusal, as `_refusals`."""
    with rf.partner() as client:
        plan = client.plan(query)
    seen: Seen = {}
    for c in plan.cities:
        assert c.plan is not None and not c.plan.allowed
        seen[c.city] = (c.plan.code, c.plan.reason, c.plan.message.replace(name, "<asked>"))
    return seen


@pytest.mark.parametrize("probe", sorted(PROBES))
def test_what_exists_outside_the_agreement_is_refused_like_what_does_not(
    federation: RunningFederation, probe: str
) -> None:
    existing, missing, existing_name, missing_name = PROBES[probe]
    seen = _refusals(federation, existing, existing_name)
    assert len(seen) == 3
    assert seen == _refusals(federation, missing, missing_name)
    for code, reason, message in seen.values():
        assert code == "PERMISSION_DENIED" and reason.endswith("_NOT_IN_AGREEMENT")
        assert not any(g in message for g in NOT_OFFERED), message
    # The dry run says the same.
    assert _plans(federation, existing, existing_name) == seen
    assert _plans(federation, missing, missing_name) == seen


def test_refusals_name_only_the_generalisations_the_agreement_offers(
    federation: RunningFederation,
) -> None:
    raw_date = by_mode(filters=(Filter("trip_date", FilterOp.EQUALS, ("2026-08-03",)),))
    with federation.partner() as client:
        answer = client.query(raw_date)
    for city in answer.cities:
        assert city.reason == "FILTER_NOT_IN_AGREEMENT"
        assert "month, year" in city.message
        assert not any(g in city.message for g in NOT_OFFERED), city.message
