"""What a partner's token authorises, and whether a call or a broker's signed request is within it.

A token is bound to one call (keys.tokens.Grant): the digest of the query as the partner asked it,
the cities asked, and whether the broker may negotiate. The broker checks each call against the token
it came with; each node checks the broker-signed request again, itself, because the broker is not
trusted with the partner's authority:

- a describe request needs a describe token;
- a plan request needs a plan token, or a query token that allows negotiation (the broker plans
  before it negotiates), for exactly the query the token names;
- a query request needs a query token, and the signed query must be the query the token names, or,
  if the token allows negotiation, a coarsening of it (`domain.plan.is_coarsening`: same dataset,
  purpose, kind, subject, measures, filters and cities; the same group-by fields in the same order,
  each at the same or a coarser generalisation on one scale) where the broker also signed the
  partner's own query as `asked` and that is the query the token names;
- a token naming cities is spent only at those cities.

Pure; no I/O. Refusals are PermissionDenied: the token is genuine but does not cover this.
"""

from __future__ import annotations

from domain import statements
from domain.errors import PermissionDenied
from domain.plan import is_coarsening
from domain.query import Query, query_digest
from keys.tokens import Call, Grant, VerifiedToken

# The signed statement each call sends the cities.
_STATEMENT_OF_CALL = {
    Call.QUERY: statements.QUERY,
    Call.PLAN: statements.PLAN,
    Call.DESCRIBE: statements.DESCRIBE,
}


def grant_for(call: Call, query: Query | None = None, negotiate: bool = False) -> Grant:
    """The grant a partner puts in its token for `call` (with `query`, unless describing)."""
    if call is Call.DESCRIBE or query is None:
        if call is not Call.DESCRIBE:
            raise ValueError(f"a {call.value} token names its query")
        return Grant(Call.DESCRIBE)
    return Grant(call, query_digest(query), query.cities, negotiate and call is Call.QUERY)


def _refuse(message: str, reason: str) -> PermissionDenied:
    return PermissionDenied(message, reason=reason)


def check_call(
    token: VerifiedToken, call: Call, query: Query | None = None, negotiate: bool = False
) -> None:
    """At the broker: the partner's `call` (with `query` and its negotiate flag) is the one its
    token authorises; PermissionDenied naming what differs otherwise."""
    grant = token.grant
    if grant.call is not call:
        raise _refuse(
            f"the token authorises a {grant.call.value} call, not a {call.value} call",
            "TOKEN_CALL_MISMATCH",
        )
    if query is None:
        return
    if grant.query_digest != query_digest(query):
        raise _refuse("the token authorises another query", "TOKEN_QUERY_MISMATCH")
    if grant.cities != query.cities:
        raise _refuse("the token names other cities than the query", "TOKEN_CITY_MISMATCH")
    if negotiate and not grant.negotiate:
        raise _refuse(
            "the token does not allow negotiating the query's shape",
            "TOKEN_NEGOTIATION_NOT_ALLOWED",
        )


def check_request(
    token: VerifiedToken, thing: str, request: statements.BrokerRequest, city: str
) -> None:
    """At a node: the broker-signed `thing` (query, plan or describe) is within what the partner's
    token authorises at `city` (see the module docstring); PermissionDenied otherwise."""
    grant = token.grant
    plans_to_negotiate = thing == statements.PLAN and grant.call is Call.QUERY and grant.negotiate
    if _STATEMENT_OF_CALL[grant.call] != thing and not plans_to_negotiate:
        raise _refuse(
            f"the partner's token authorises a {grant.call.value} call, not a {thing}",
            "TOKEN_CALL_MISMATCH",
        )
    if request.query is not None and not _authorised_query(grant, thing, request):
        raise _refuse(
            "the broker signed a query the partner's token does not authorise",
            "TOKEN_QUERY_MISMATCH",
        )
    if grant.cities and city not in grant.cities:
        raise _refuse(
            f"the partner's token does not authorise asking {city}", "TOKEN_CITY_MISMATCH"
        )


def _authorised_query(grant: Grant, thing: str, request: statements.BrokerRequest) -> bool:
    """The signed query is the one the grant names, or a negotiated coarsening of it."""
    assert request.query is not None
    if query_digest(request.query) == grant.query_digest:
        return True
    return (
        thing == statements.QUERY
        and grant.negotiate
        and request.asked is not None
        and query_digest(request.asked) == grant.query_digest
        and is_coarsening(request.asked, request.query)
    )
