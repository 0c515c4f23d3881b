"""One exchange against fake cities (no gRPC): what the partner gets back, and what the broker signs
and logs about every city, whether it answered, refused, timed out or sent a result that fails."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from audit.log import MerkleLog
from broker import merge
from broker.exchange import Broker
from broker.gateway import CityReply, SignedResult, Targets
from cli import sandbox
from domain import agreement as agreement_doc
from domain import receipt as receipt_doc
from domain import statements
from domain.errors import InvalidArgument, RemoteError
from domain.plan import QueryPlan
from domain.query import Dimension, Measure, MeasureKind, Query
from keys import dsse, timefmt
from keys.ed25519 import Signer
from keys.tokens import VerifiedToken
from keys.trust import TrustStore

PURPOSE = "urban-mobility-planning"
BY_MODE = Query(
    "mobility", PURPOSE, (Measure(MeasureKind.COUNT_RECORDS),), group_by=(Dimension("mode"),)
)
CITIES = ("aurora", "borealis", "cascadia")

# A fake city: given the broker's verified request, its reply.
City = Callable[[str, statements.BrokerRequest], CityReply[SignedResult]]


def signed_result(
    request: statements.BrokerRequest,
    city: str,
    signer: Signer,
    cells: list[dict[str, Any]],
    /,
    **changes: Any,
) -> dsse.Envelope:
    """A city's result statement, signed over the fields the broker checks. Built by hand rather
    than with the node's builder, so that these tests pin what the broker relies on."""
    payload = {
        "request_id": request.request_id,
        "query_digest": request.digest,
        "city": city,
        "broker": request.broker,
        "partner": request.partner,
        "cells": cells,
        "withheld": [],
        "records": [],
        "issued_at": timefmt.fmt(timefmt.now()),
        **changes,
    }
    return dsse.sign(statements.RESULT, payload, signer)


def cell(mode: str, n: int) -> dict[str, Any]:
    return {"key": {"mode": mode}, "values": {"count_records": n}, "records": n}


def answers(
    signer: Signer, cells: list[dict[str, Any]], log_index: int = 7, **changes: Any
) -> City:
    def reply(city: str, request: statements.BrokerRequest) -> CityReply[SignedResult]:
        env = signed_result(request, city, signer, cells, **changes)
        return CityReply(city, value=SignedResult(env, log_index))

    return reply


def fails(code: str, reason: str = "", message: str = "") -> City:
    def reply(city: str, request: statements.BrokerRequest) -> CityReply[SignedResult]:
        return CityReply(city, error=RemoteError(code, reason, message))

    return reply


@dataclass
class FakeCities:
    """A CityGateway whose cities are functions; it records every fan-out it was asked for."""

    bundle: Any
    cities: dict[str, City] = field(default_factory=dict)
    plans: dict[str, QueryPlan | RemoteError] = field(default_factory=dict)
    offers: dict[str, list[dsse.Envelope] | RemoteError] = field(default_factory=dict)
    calls: list[tuple[str, dict[str, str], float]] = field(default_factory=list)
    sent: list[dsse.Envelope] = field(default_factory=list)

    def run_query(
        self, targets: Targets, signed_query: dsse.Envelope, timeout_s: float
    ) -> list[CityReply[SignedResult]]:
        self.calls.append(("run_query", dict(targets), timeout_s))
        self.sent.append(signed_query)
        request = statements.verify_request(signed_query, statements.QUERY, self.bundle)
        return [self.cities[c](c, request) for c in targets]

    def plan_query(
        self, targets: Targets, signed_request: dsse.Envelope, timeout_s: float
    ) -> list[CityReply[QueryPlan]]:
        self.calls.append(("plan_query", dict(targets), timeout_s))
        statements.verify_request(signed_request, statements.PLAN, self.bundle)
        return [_reply(c, self.plans[c]) for c in targets]

    def describe_offer(
        self, targets: Targets, signed_request: dsse.Envelope, timeout_s: float
    ) -> list[CityReply[list[dsse.Envelope]]]:
        self.calls.append(("describe_offer", dict(targets), timeout_s))
        statements.verify_request(signed_request, statements.DESCRIBE, self.bundle)
        return [_reply(c, self.offers[c]) for c in targets]

    def add_checkpoint(
        self, endpoint: str, old_size: int, checkpoint: str, proof: list[bytes], timeout_s: float
    ) -> str:
        raise AssertionError("the exchange never asks for cosignatures")


def _reply(city: str, value: Any) -> CityReply[Any]:
    if isinstance(value, RemoteError):
        return CityReply(city, error=value)
    return CityReply(city, value=value)


@dataclass
class Setup:
    fed: sandbox.LocalFederation
    gateway: FakeCities
    broker: Broker
    log: MerkleLog
    logged: list[int]

    def signer(self, city: str) -> Signer:
        return self.fed.cities[city].signer


@pytest.fixture
def setup(fed: sandbox.LocalFederation, trust: TrustStore, broker_log: MerkleLog) -> Setup:
    gateway = FakeCities(fed.bundle)
    logged: list[int] = []
    broker = Broker(
        fed.broker_id,
        fed.broker_signer,
        trust,
        gateway,
        broker_log,
        city_timeout_s=5.0,
        after_log=lambda: logged.append(broker_log.size()),
    )
    return Setup(fed, gateway, broker, broker_log, logged)


def test_answered_refused_and_timed_out_cities(setup: Setup, caller: VerifiedToken) -> None:
    s = setup
    s.gateway.cities = {
        "aurora": answers(s.signer("aurora"), [cell("bus", 12), cell("tram", 30)], log_index=7),
        "borealis": fails("PERMISSION_DENIED", "PURPOSE_NOT_IN_AGREEMENT", "no such purpose"),
        "cascadia": fails("DEADLINE_EXCEEDED", "", "Deadline Exceeded"),
    }
    exchange = s.broker.query(caller, BY_MODE, deadline_s=None)

    outcomes = [(o.city, o.status, o.code, o.reason, o.log_index) for o in exchange.outcomes]
    assert outcomes == [
        ("aurora", "answered", "OK", "", 7),
        ("borealis", "refused", "PERMISSION_DENIED", "PURPOSE_NOT_IN_AGREEMENT", 0),
        ("cascadia", "timed_out", "DEADLINE_EXCEEDED", "", 0),
    ]
    assert exchange.outcomes[1].message == "no such purpose"
    assert [(c.key, c.values, c.contributing) for c in exchange.cells] == [
        ({"mode": "bus"}, {"count_records": 12.0}, ["aurora"]),
        ({"mode": "tram"}, {"count_records": 30.0}, ["aurora"]),
    ]
    # Every city of the trust bundle was asked, with the configured timeout.
    assert s.gateway.calls == [("run_query", {c: s.fed.cities[c].address for c in CITIES}, 5.0)]
    assert s.gateway.sent == [exchange.signed_query]

    receipt = statements.verify_receipt(exchange.receipt, s.fed.bundle)
    aurora_result = exchange.outcomes[0].signed_result
    assert aurora_result is not None
    assert receipt["cities"] == [
        {
            "city": "aurora",
            "status": "answered",
            "code": "OK",
            "reason": "",
            "result_digest": statements.digest(aurora_result.payload),
            "node_log_index": 7,
            "jurisdiction": s.fed.bundle.party("aurora").jurisdiction,  # type: ignore[union-attr]
        },
        {
            "city": "borealis",
            "status": "refused",
            "code": "PERMISSION_DENIED",
            "reason": "PURPOSE_NOT_IN_AGREEMENT",
            "result_digest": None,
            "node_log_index": None,
            "jurisdiction": s.fed.bundle.party("borealis").jurisdiction,  # type: ignore[union-attr]
        },
        {
            "city": "cascadia",
            "status": "timed_out",
            "code": "DEADLINE_EXCEEDED",
            "reason": "",
            "result_digest": None,
            "node_log_index": None,
            "jurisdiction": s.fed.bundle.party("cascadia").jurisdiction,  # type: ignore[union-attr]
        },
    ]
    assert receipt["request_id"] == exchange.request_id
    assert receipt["query_digest"] == statements.digest(exchange.signed_query.payload)
    assert (receipt["broker"], receipt["partner"]) == (s.fed.broker_id, s.fed.partner_id)
    assert receipt["partner_jurisdiction"] == "EU-DE"
    assert (receipt["purpose"], receipt["dataset"]) == (PURPOSE, "mobility")
    assert receipt["answer_digest"] == receipt_doc.answer_digest(merge.to_payload(exchange.cells))
    assert receipt["negotiation"] == []
    assert receipt_doc.listed_outcomes(receipt) == [
        ("aurora", "answered", "OK", "", statements.digest(aurora_result.payload), 7),
        ("borealis", "refused", "PERMISSION_DENIED", "PURPOSE_NOT_IN_AGREEMENT", None, None),
        ("cascadia", "timed_out", "DEADLINE_EXCEEDED", "", None, None),
    ]


def test_the_signed_query_and_receipt_are_logged_before_the_reply(
    setup: Setup, caller: VerifiedToken
) -> None:
    s = setup
    s.gateway.cities = {c: answers(s.signer(c), [cell("bus", 11)]) for c in CITIES}
    exchange = s.broker.query(caller, BY_MODE, deadline_s=None)
    assert s.log.entries(0, s.log.size()) == [
        exchange.signed_query.to_json(),
        exchange.receipt.to_json(),
    ]
    assert s.logged == [2]  # witnessing was told once, after both entries were durable
    request = statements.verify_request(exchange.signed_query, statements.QUERY, s.fed.bundle)
    assert (request.request_id, request.partner, request.token) == (
        exchange.request_id,
        s.fed.partner_id,
        caller.raw,
    )
    assert request.query == BY_MODE
    (merged,) = exchange.cells
    assert (merged.values, merged.records, merged.contributing) == (
        {"count_records": 33.0},
        33,
        list(CITIES),
    )


@pytest.mark.parametrize(
    ("forge", "reason"),
    [
        ("signed_by_another_city", "SIGNATURE_INVALID"),
        ("for_another_request", "RESULT_MISMATCH"),
        ("claims_another_city", "RESULT_MISMATCH"),
    ],
)
def test_a_result_that_fails_verification_is_unverified_and_not_merged(
    setup: Setup, caller: VerifiedToken, forge: str, reason: str
) -> None:
    s = setup
    bad: City
    if forge == "signed_by_another_city":
        bad = answers(s.signer("aurora"), [cell("bus", 999)])
    elif forge == "for_another_request":
        bad = answers(s.signer("cascadia"), [cell("bus", 999)], request_id="another")
    else:
        bad = answers(s.signer("aurora"), [cell("bus", 999)], city="aurora")
    s.gateway.cities = {
        "aurora": answers(s.signer("aurora"), [cell("bus", 12)]),
        "borealis": answers(s.signer("borealis"), [cell("bus", 20)]),
        "cascadia": bad,
    }
    exchange = s.broker.query(caller, BY_MODE, deadline_s=None)
    cascadia = exchange.outcomes[2]
    assert (cascadia.status, cascadia.code, cascadia.reason) == ("unverified", "DATA_LOSS", reason)
    assert cascadia.signed_result is None and cascadia.verified_result is None
    (merged,) = exchange.cells
    assert (merged.values, merged.contributing) == ({"count_records": 32.0}, ["aurora", "borealis"])
    receipt = statements.verify_receipt(exchange.receipt, s.fed.bundle)
    assert receipt["cities"][2]["status"] == "unverified"
    assert receipt["cities"][2]["result_digest"] is None


def test_other_failures_are_failed(setup: Setup, caller: VerifiedToken) -> None:
    s = setup
    s.gateway.cities = {
        "aurora": fails("UNAVAILABLE", "", "connection refused"),
        "borealis": fails("INTERNAL", "", "internal error"),
        "cascadia": fails("NOT_FOUND", "DATASET_UNKNOWN"),
    }
    exchange = s.broker.query(caller, BY_MODE, deadline_s=None)
    assert [(o.status, o.code) for o in exchange.outcomes] == [
        ("failed", "UNAVAILABLE"),
        ("failed", "INTERNAL"),
        ("refused", "NOT_FOUND"),
    ]
    assert exchange.cells == []


def test_only_the_named_cities_are_asked(setup: Setup, caller: VerifiedToken) -> None:
    s = setup
    s.gateway.cities = {"borealis": answers(s.signer("borealis"), [cell("bus", 11)])}
    exchange = s.broker.query(caller, Query(**{**BY_MODE.__dict__, "cities": ("borealis",)}), None)
    assert [o.city for o in exchange.outcomes] == ["borealis"]
    assert s.gateway.calls[0][1] == {"borealis": s.fed.cities["borealis"].address}


def test_an_unknown_city_is_refused_before_any_city_is_asked(
    setup: Setup, caller: VerifiedToken
) -> None:
    query = Query(**{**BY_MODE.__dict__, "cities": ("atlantis",)})
    with pytest.raises(InvalidArgument) as info:
        setup.broker.query(caller, query, None)
    assert info.value.reason == "CITY_UNKNOWN"
    assert setup.gateway.calls == []
    assert setup.log.size() == 0


@pytest.mark.parametrize(
    ("deadline_s", "city_timeout_s"),
    [(None, 5.0), (60.0, 5.0), (4.0, 3.0), (1.0, 0.75), (0.0, 0.0)],
)
def test_cities_get_the_partners_deadline_less_a_reserve(
    setup: Setup, caller: VerifiedToken, deadline_s: float | None, city_timeout_s: float
) -> None:
    s = setup
    s.gateway.cities = {c: fails("DEADLINE_EXCEEDED") for c in CITIES}
    s.broker.query(caller, BY_MODE, deadline_s)
    assert s.gateway.calls[0][2] == pytest.approx(city_timeout_s)


def _plan(allowed: bool, *generalisations: str) -> QueryPlan:
    terms = agreement_doc.FieldTerms(
        agreement_doc.Appearance.GENERALISED, frozenset(generalisations)
    )
    return QueryPlan(allowed, fields={"trip_date": terms, "mode": _RAW})


_RAW = agreement_doc.FieldTerms(agreement_doc.Appearance.RAW)
BY_DAY = Query(
    "mobility",
    PURPOSE,
    (Measure(MeasureKind.COUNT_RECORDS),),
    group_by=(Dimension("trip_date", "day"),),
)


def test_plan_negotiates_and_reports_a_failed_city(setup: Setup, caller: VerifiedToken) -> None:
    s = setup
    s.gateway.plans = {
        "aurora": _plan(False, "month", "year"),
        "borealis": _plan(True, "day", "week", "month", "year"),
        "cascadia": RemoteError("UNAVAILABLE", "", "down"),
    }
    plan = s.broker.plan(caller, BY_DAY, None)
    assert plan.negotiated.group_by == (Dimension("trip_date", "month"),)
    assert len(plan.notes) == 1 and "trip_date: day -> month" in plan.notes[0]
    assert [(c.city, c.outcome.status, c.outcome.code) for c in plan.cities] == [
        ("aurora", "answered", "OK"),
        ("borealis", "answered", "OK"),
        ("cascadia", "failed", "UNAVAILABLE"),
    ]
    assert plan.cities[0].plan == s.gateway.plans["aurora"]
    assert plan.cities[2].plan is None
    assert s.log.size() == 0  # a dry run logs nothing


def test_a_negotiated_query_is_signed_with_what_was_asked(
    setup: Setup, caller: VerifiedToken
) -> None:
    s = setup
    s.gateway.plans = {c: _plan(True, "month", "year") for c in CITIES}
    s.gateway.cities = {c: answers(s.signer(c), [cell("bus", 11)]) for c in CITIES}
    exchange = s.broker.query(caller, BY_DAY, None, negotiate_shape=True)
    assert [call[0] for call in s.gateway.calls] == ["plan_query", "run_query"]
    request = statements.verify_request(exchange.signed_query, statements.QUERY, s.fed.bundle)
    assert request.asked == BY_DAY
    assert request.query is not None
    assert request.query.group_by == (Dimension("trip_date", "month"),)
    assert request.negotiation == tuple(exchange.negotiation) and exchange.negotiation
    receipt = statements.verify_receipt(exchange.receipt, s.fed.bundle)
    assert receipt["negotiation"] == exchange.negotiation


def test_describe_keeps_only_verified_agreements_with_the_caller(
    setup: Setup, caller: VerifiedToken
) -> None:
    s = setup
    fed = s.fed
    signed = {
        c: agreement_doc.sign(fed.agreement(c), fed.cities[c].signer, fed.partner_signer)
        for c in CITIES
    }
    only_city_signed = agreement_doc.sign(fed.agreement("borealis"), fed.cities["borealis"].signer)
    s.gateway.offers = {
        # An agreement of another city is not this city's to offer.
        "aurora": [signed["aurora"], signed["cascadia"]],
        "borealis": [only_city_signed],
        "cascadia": RemoteError("UNAVAILABLE", "", "down"),
    }
    offers = s.broker.describe(caller, None)
    assert [(o.city, o.outcome.status, o.outcome.code) for o in offers] == [
        ("aurora", "answered", "OK"),
        ("borealis", "unverified", "DATA_LOSS"),
        ("cascadia", "failed", "UNAVAILABLE"),
    ]
    assert [(a.agreement_id, env) for a, env in offers[0].agreements] == [
        (fed.agreement("aurora").agreement_id, signed["aurora"])
    ]
    assert offers[1].agreements == [] and offers[1].outcome.reason == "AGREEMENT_SIGNATURE_INVALID"
    assert (offers[0].name, offers[0].jurisdiction) == (
        fed.cities["aurora"].plan.name,
        fed.cities["aurora"].plan.jurisdiction,
    )
