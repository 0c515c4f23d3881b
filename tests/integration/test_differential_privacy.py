"""Agreements that ask for differential privacy: noisy answers, a budget charged per answer, and
BUDGET_EXHAUSTED once it is spent."""

from __future__ import annotations

import dataclasses
import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import sqlalchemy as sa

from domain import agreement as agreement_doc
from domain.agreement import DpTerms
from domain.query import Dimension, Measure, MeasureKind, Query
from node.schema import dp_budgets, dp_ledger
from tests.conftest import PURPOSE, RunningFederation

CITY = "aurora"
COUNTS = Query(
    "mobility",
    PURPOSE,
    (Measure(MeasureKind.COUNT_RECORDS), Measure(MeasureKind.SUM, "distance_km")),
    group_by=(Dimension("mode"),),
    cities=(CITY,),
)


def _require_dp(rf: RunningFederation, per_query: float, total: float) -> None:
    fed = rf.fed
    terms = dataclasses.replace(
        fed.agreement(CITY, version=2), dp=DpTerms(per_query, total, {"distance_km": (0.0, 30.0)})
    )
    rf.operators[CITY].activate_agreement(
        agreement_doc.sign(terms, fed.cities[CITY].signer, fed.partner_signer)
    )


def test_answers_carry_noise_and_state_what_they_spent(fresh_federation: RunningFederation) -> None:
    rf = fresh_federation
    with rf.partner() as client:
        exact = client.query(COUNTS)
        _require_dp(rf, 0.5, 2.0)
        noisy = client.query(COUNTS)
    assert [c.status for c in noisy.cities] == ["answered"]
    exact_values = {c.key["mode"]: c.values for c in exact.cells}
    noisy_values = {c.key["mode"]: c.values for c in noisy.cells}
    assert set(noisy_values) == set(exact_values)
    assert noisy_values != exact_values  # scale 4 per count: equal everywhere is ~impossible
    payload = _result_payload(rf, noisy.query_id)
    assert payload["privacy"]["epsilon"] == 0.5
    assert payload["privacy"]["budget_left"] == 1.5
    assert (payload["privacy"]["unit"], payload["privacy"]["records_per_resident"]) == (
        "resident",
        1,
    )
    assert all(c["records"] == 0 for c in payload["cells"])


def test_spent_budget_refuses_with_budget_exhausted(fresh_federation: RunningFederation) -> None:
    rf = fresh_federation
    _require_dp(rf, 1.0, 2.0)
    with rf.partner() as client:
        assert client.query(COUNTS).cities[0].status == "answered"
        assert client.query(COUNTS).cities[0].status == "answered"
        third = client.query(COUNTS)
    assert (third.cities[0].code, third.cities[0].reason) == (
        "RESOURCE_EXHAUSTED",
        "BUDGET_EXHAUSTED",
    )


def test_measures_without_a_mechanism_are_refused(fresh_federation: RunningFederation) -> None:
    rf = fresh_federation
    _require_dp(rf, 0.5, 2.0)
    avg = dataclasses.replace(COUNTS, measures=(Measure(MeasureKind.AVG, "distance_km"),))
    with rf.partner() as client:
        answer = client.query(avg)
    assert answer.cities[0].reason == "DP_MEASURE_NOT_SUPPORTED"


def test_concurrent_answers_each_state_the_budget_they_left(
    fresh_federation: RunningFederation,
) -> None:
    """The budget is booked in the transaction that logs the result, and each signed result
    states the budget left after it: answers racing for one budget state distinct figures that
    add up, and the ledger holds exactly what they spent."""
    rf = fresh_federation
    _require_dp(rf, 0.25, 2.0)
    with rf.partner() as client, ThreadPoolExecutor(max_workers=6) as pool:
        answers = list(pool.map(lambda _: client.query(COUNTS), range(6)))
    assert [a.cities[0].status for a in answers] == ["answered"] * 6
    left = sorted(_result_payload(rf, a.query_id)["privacy"]["budget_left"] for a in answers)
    assert left == [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]
    with rf.nodes[CITY].engine.connect() as conn:
        spent = conn.execute(sa.select(dp_budgets.c.spent_epsilon)).scalar_one()
        booked = conn.execute(sa.select(sa.func.count()).select_from(dp_ledger)).scalar_one()
    assert (spent, booked) == (1.5, 6)


def _result_payload(rf: RunningFederation, request_id: str) -> dict[str, Any]:
    log = rf.nodes[CITY].log
    for entry in reversed(log.entries(0, log.size())):
        env = json.loads(entry)
        if env["payloadType"].endswith("result+json"):
            import base64

            payload = json.loads(base64.b64decode(env["payload"]))
            if payload["request_id"] == request_id:
                return payload  # type: ignore[no-any-return]
    raise AssertionError("result not in the node's log")
