"""Whether a broker's signed request is fresh enough to act on.

A request carries a partner token that lives at most keys.tokens.MAX_LIFETIME_S, so a request older
than that (plus the clock skew allowed) cannot be a live exchange: it is a replay or a broker's
clock gone wrong. One issued more than the skew in the future is refused too, or a broker could
sign requests to be spent later. Pure; the caller gives the time.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta

from domain.errors import AuthenticationError
from keys import timefmt
from keys.tokens import CLOCK_SKEW_S, MAX_LIFETIME_S


def check_issued_at(issued_at: datetime, now: datetime, skew_s: float = CLOCK_SKEW_S) -> None:
    """Refuse a statement issued more than `skew_s` after `now` (STATEMENT_FROM_FUTURE) or
    earlier than a token can live plus `skew_s` before it (STATEMENT_TOO_OLD)."""
    skew = timedelta(seconds=skew_s)
    if issued_at > now + skew:
        raise AuthenticationError(
            f"the request was issued at {issued_at.isoformat()}, in the future "
            f"(more than {skew_s:g} s after {now.isoformat()})",
            reason="STATEMENT_FROM_FUTURE",
        )
    if issued_at < now - timedelta(seconds=MAX_LIFETIME_S) - skew:
        raise AuthenticationError(
            f"the request was issued at {issued_at.isoformat()}, longer ago than a partner "
            f"token can live ({MAX_LIFETIME_S} s + {skew_s:g} s)",
            reason="STATEMENT_TOO_OLD",
        )


def check_payload(payload: bytes, now: datetime, skew_s: float = CLOCK_SKEW_S) -> None:
    """`check_issued_at` on a statement payload's `issued_at`, read before its signature is
    checked: a refusal is all a forged time can earn, and a statement out of range is refused with
    that reason rather than as signed by a key not valid at that time. A payload without a
    readable `issued_at` is left to the signature verification to refuse."""
    try:
        issued_at = timefmt.parse(json.loads(payload)["issued_at"])
    except (ValueError, KeyError, TypeError, RecursionError):
        return
    check_issued_at(issued_at, now, skew_s)
