"""What a partner's token authorises, at the broker and at a node; and fresh statements."""

from __future__ import annotations

import dataclasses
import time
from datetime import timedelta

import pytest

from domain import authorisation, freshness, statements
from domain.errors import AuthenticationError, PermissionDenied
from domain.query import Dimension, Filter, FilterOp, Measure, MeasureKind, Query, query_digest
from keys import timefmt
from keys.tokens import CLOCK_SKEW_S, MAX_LIFETIME_S, Call, Grant, VerifiedToken

BY_DAY = Query(
    "mobility",
    "urban-mobility-planning",
    (Measure(MeasureKind.COUNT_RECORDS),),
    group_by=(Dimension("trip_date", "day"), Dimension("age", "band5")),
    cities=("aurora", "borealis"),
)


def _token(grant: Grant) -> VerifiedToken:
    now = int(time.time())
    return VerifiedToken("p", "p", "broker-1", "j", now, now + 60, "raw", grant)


def _request(query: Query | None, asked: Query | None = None) -> statements.BrokerRequest:
    return statements.BrokerRequest(
        "r", "broker-1", "p", "raw", timefmt.now(), query, "sha256:x", asked
    )


def _reason(error: pytest.ExceptionInfo[PermissionDenied]) -> str:
    return error.value.reason


def test_the_digest_is_of_the_canonical_query() -> None:
    assert query_digest(BY_DAY) == query_digest(Query.from_payload(BY_DAY.to_payload()))
    assert query_digest(BY_DAY) != query_digest(dataclasses.replace(BY_DAY, cities=("aurora",)))
    assert query_digest(BY_DAY).startswith("sha256:")


def test_grants() -> None:
    assert authorisation.grant_for(Call.DESCRIBE) == Grant(Call.DESCRIBE)
    grant = authorisation.grant_for(Call.QUERY, BY_DAY, negotiate=True)
    assert grant == Grant(Call.QUERY, query_digest(BY_DAY), BY_DAY.cities, True)
    # Only a query may be negotiated; a plan or query token names its query.
    assert not authorisation.grant_for(Call.PLAN, BY_DAY, negotiate=True).negotiate
    with pytest.raises(ValueError):
        authorisation.grant_for(Call.QUERY)


def test_at_the_broker() -> None:
    token = _token(authorisation.grant_for(Call.QUERY, BY_DAY))
    authorisation.check_call(token, Call.QUERY, BY_DAY)
    cases = [
        ((Call.PLAN, BY_DAY, False), "TOKEN_CALL_MISMATCH"),
        ((Call.DESCRIBE, None, False), "TOKEN_CALL_MISMATCH"),
        ((Call.QUERY, dataclasses.replace(BY_DAY, cities=()), False), "TOKEN_QUERY_MISMATCH"),
        ((Call.QUERY, BY_DAY, True), "TOKEN_NEGOTIATION_NOT_ALLOWED"),
    ]
    for (call, query, negotiate), reason in cases:
        with pytest.raises(PermissionDenied) as e:
            authorisation.check_call(token, call, query, negotiate)
        assert _reason(e) == reason
    # A token whose cities disagree with the query it names (not one the partner client makes).
    odd = _token(dataclasses.replace(token.grant, cities=("aurora",)))
    with pytest.raises(PermissionDenied) as e:
        authorisation.check_call(odd, Call.QUERY, BY_DAY)
    assert _reason(e) == "TOKEN_CITY_MISMATCH"


def test_at_a_node_the_exact_query_at_a_city_it_names() -> None:
    token = _token(authorisation.grant_for(Call.QUERY, BY_DAY))
    authorisation.check_request(token, statements.QUERY, _request(BY_DAY), "aurora")
    with pytest.raises(PermissionDenied) as e:
        authorisation.check_request(token, statements.QUERY, _request(BY_DAY), "cascadia")
    assert _reason(e) == "TOKEN_CITY_MISMATCH"
    for thing in (statements.PLAN, statements.DESCRIBE):
        with pytest.raises(PermissionDenied) as e:
            authorisation.check_request(token, thing, _request(BY_DAY), "aurora")
        assert _reason(e) == "TOKEN_CALL_MISMATCH"
    # A token for every city is spent at any of them.
    everywhere = dataclasses.replace(BY_DAY, cities=())
    token = _token(authorisation.grant_for(Call.QUERY, everywhere))
    authorisation.check_request(token, statements.QUERY, _request(everywhere), "cascadia")


def _coarser(*generalisations: str) -> Query:
    fields = [d.field for d in BY_DAY.group_by]
    dims = tuple(Dimension(f, g) for f, g in zip(fields, generalisations, strict=True))
    return dataclasses.replace(BY_DAY, group_by=dims)


@pytest.mark.parametrize(
    ("sent", "allowed"),
    [
        (_coarser("month", "band5"), True),
        (_coarser("year", "band10"), True),
        (_coarser("day", "band5"), True),  # unchanged, with `asked` signed beside it
        (_coarser("", "band5"), False),  # finer
        (_coarser("month", ""), False),  # finer
        (dataclasses.replace(BY_DAY, group_by=(Dimension("trip_date", "month"),)), False),
        (dataclasses.replace(_coarser("month", "band5"), cities=("aurora",)), False),
        (
            dataclasses.replace(
                _coarser("month", "band5"), filters=(Filter("mode", FilterOp.EQUALS, ("bus",)),)
            ),
            False,
        ),
        (
            dataclasses.replace(
                _coarser("month", "band5"), measures=(Measure(MeasureKind.COUNT_RESIDENTS),)
            ),
            False,
        ),
        (dataclasses.replace(_coarser("month", "band5"), purpose="marketing"), False),
    ],
)
def test_at_a_node_a_negotiated_query_is_a_coarsening(sent: Query, allowed: bool) -> None:
    negotiating = _token(authorisation.grant_for(Call.QUERY, BY_DAY, negotiate=True))
    request = _request(sent, asked=BY_DAY)
    if allowed:
        authorisation.check_request(negotiating, statements.QUERY, request, "aurora")
    else:
        with pytest.raises(PermissionDenied) as e:
            authorisation.check_request(negotiating, statements.QUERY, request, "aurora")
        assert _reason(e) == "TOKEN_QUERY_MISMATCH"
    # Without the partner's leave, only the exact query.
    plain = _token(authorisation.grant_for(Call.QUERY, BY_DAY))
    if sent != BY_DAY:
        with pytest.raises(PermissionDenied):
            authorisation.check_request(plain, statements.QUERY, request, "aurora")


def test_a_negotiated_query_must_name_the_partners_own_as_asked() -> None:
    token = _token(authorisation.grant_for(Call.QUERY, BY_DAY, negotiate=True))
    other = dataclasses.replace(BY_DAY, group_by=(Dimension("trip_date", "day"),))
    coarser = dataclasses.replace(other, group_by=(Dimension("trip_date", "year"),))
    for asked in (other, None):
        with pytest.raises(PermissionDenied) as e:
            authorisation.check_request(token, statements.QUERY, _request(coarser, asked), "aurora")
        assert _reason(e) == "TOKEN_QUERY_MISMATCH"


def test_a_negotiating_query_token_plans_its_own_query_only() -> None:
    token = _token(authorisation.grant_for(Call.QUERY, BY_DAY, negotiate=True))
    authorisation.check_request(token, statements.PLAN, _request(BY_DAY), "aurora")
    with pytest.raises(PermissionDenied) as e:
        authorisation.check_request(
            token, statements.PLAN, _request(_coarser("month", "band5"), BY_DAY), "aurora"
        )
    assert _reason(e) == "TOKEN_QUERY_MISMATCH"


def test_describe() -> None:
    token = _token(authorisation.grant_for(Call.DESCRIBE))
    authorisation.check_request(token, statements.DESCRIBE, _request(None), "aurora")
    with pytest.raises(PermissionDenied):
        authorisation.check_request(token, statements.QUERY, _request(BY_DAY), "aurora")


@pytest.mark.parametrize(
    ("offset_s", "reason"),
    [
        (CLOCK_SKEW_S + 1, "STATEMENT_FROM_FUTURE"),
        (-(MAX_LIFETIME_S + CLOCK_SKEW_S + 1), "STATEMENT_TOO_OLD"),
        (CLOCK_SKEW_S, None),
        (-(MAX_LIFETIME_S + CLOCK_SKEW_S), None),
    ],
)
def test_statement_freshness(offset_s: int, reason: str | None) -> None:
    now = timefmt.now()
    issued = now + timedelta(seconds=offset_s)
    if reason is None:
        freshness.check_issued_at(issued, now)
        return
    with pytest.raises(AuthenticationError) as e:
        freshness.check_issued_at(issued, now)
    assert e.value.reason == reason
    # A configured skew moves the bound.
    freshness.check_issued_at(issued, now, skew_s=abs(offset_s))


def test_a_payload_without_a_readable_time_is_left_to_the_signature_check() -> None:
    now = timefmt.now()
    for payload in (b"", b"[]", b'{"issued_at": 5}', b"[" * 100_000):
        freshness.check_payload(payload, now)
