"""A query naming a resident (an attribute check): the broker logs it as a salted commitment,
keeps the opening in its own database, and its receipt names the query and any result the city
committed only by salted commitments (broker.query_evidence, domain.receipt)."""

from __future__ import annotations

import json

import sqlalchemy as sa
from sqlalchemy import Engine

from audit.schema import exchange_openings
from broker.gateway import CityReply, SignedResult
from domain import commitment, statements
from domain.query import Filter, FilterOp, Query, QueryKind
from keys import dsse
from keys.tokens import VerifiedToken
from tests.unit.broker.test_exchange import PURPOSE, Setup, setup, signed_result

__all__ = ["setup"]  # the fixture, shared with test_exchange

SUBJECT = "aurora-r0042"
CHECK = Query(
    "residents",
    PURPOSE,
    (),
    filters=(Filter("age", FilterOp.AT_LEAST, ("18",)),),
    cities=("aurora",),
    kind=QueryKind.ATTRIBUTE_CHECK,
    subject=SUBJECT,
)
SALT = bytes(range(32))


def _committing(setup: Setup, salt: bytes = SALT) -> None:
    signer = setup.signer("aurora")

    def reply(city: str, request: statements.BrokerRequest) -> CityReply[SignedResult]:
        cells = [{"key": {}, "values": {"match": 1}, "records": 0}]
        return CityReply(
            city, value=SignedResult(signed_result(request, city, signer, cells), 9, salt)
        )

    setup.gateway.cities = {"aurora": reply}


def test_the_log_and_receipt_name_the_resident_nowhere(
    setup: Setup, caller: VerifiedToken, broker_db: Engine
) -> None:
    _committing(setup)
    exchange = setup.broker.query(caller, CHECK, deadline_s=None)
    entries = setup.log.entries(0, setup.log.size())
    assert len(entries) == 2
    for entry in entries:
        assert SUBJECT.encode() not in entry + dsse.Envelope.from_json(entry).payload
    claims = json.loads(dsse.Envelope.from_json(entries[0]).payload)
    body = exchange.signed_query.to_json()
    assert claims["commitment"] == commitment.digest(exchange.query_salt, body)
    assert (claims["broker"], claims["request_id"], claims["statement"]) == (
        setup.fed.broker_id,
        exchange.request_id,
        "query",
    )
    receipt = json.loads(exchange.receipt.payload)
    assert "query_digest" not in receipt
    assert receipt["query_commitment"] == claims["commitment"]
    (line,) = receipt["cities"]
    result = exchange.outcomes[0].signed_result
    assert result is not None
    assert line["result_digest"] is None
    assert line["result_commitment"] == commitment.digest(SALT, result.to_json())
    assert line["node_log_index"] == 9
    with broker_db.connect() as conn:
        (row,) = conn.execute(sa.select(exchange_openings)).mappings().all()
    assert (row["log_index"], row["resident_id"], bytes(row["statement"])) == (0, SUBJECT, body)
    assert (
        commitment.opening_problem(claims, commitment.Opening(0, body, bytes(row["salt"]))) is None
    )


def test_a_malformed_result_salt_leaves_the_result_unverified(
    setup: Setup, caller: VerifiedToken
) -> None:
    _committing(setup, salt=b"short")
    exchange = setup.broker.query(caller, CHECK, deadline_s=None)
    assert (exchange.outcomes[0].status, exchange.outcomes[0].reason) == (
        "unverified",
        "RESULT_COMMITMENT_MALFORMED",
    )
