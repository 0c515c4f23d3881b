"""A city's own limits on each partner: the terms of its agreements, else the node's defaults.

A city does not rely on the broker to protect it: every call a broker makes for a partner (query,
plan, describe) is admitted under that partner's limits (infra.limits) once the broker's signature
and the partner's token are verified, so the partner named is the one who asked.

A refusal here is neither signed nor logged. It comes before any work and before any decision
under an agreement, like a refused token; logging it would let a flood cost the city one durable
log write per call, the very cost the limit bounds. The broker's signed receipt still records the
city's outcome for that exchange (refused, RATE_LIMITED).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from datetime import datetime

from domain.agreement import Agreement
from infra.limits import Allowance, LimitsConfig, PartnerLimiter
from keys import timefmt


def allowance(in_force: Iterable[Agreement], defaults: Allowance) -> Allowance:
    """The partner's allowance: the most generous of its agreements in force (one without limits
    counts as the node's defaults), or the defaults when it has none. Limits are kept per partner,
    so the strictest agreement would throttle what the others allow."""
    terms = [
        Allowance(a.limits.queries_per_minute, a.limits.max_concurrent) if a.limits else defaults
        for a in in_force
    ]
    if not terms:
        return defaults
    return Allowance(
        max(t.queries_per_minute for t in terms),
        max(t.max_concurrent for t in terms),
        0 if any(t.burst == 0 for t in terms) else max(t.burst for t in terms),
    )


class PartnerGate:
    """Admits a partner's calls under the limits its agreements in force set."""

    def __init__(
        self, config: LimitsConfig, in_force: Callable[[str, datetime], Iterable[Agreement]]
    ) -> None:
        self._defaults = config.defaults
        self._in_force = in_force
        self._limiter = PartnerLimiter(config.max_in_flight)

    def admit(self, partner: str) -> AbstractContextManager[None]:
        """A place for one call of `partner` while the body runs; RateLimited if over a limit."""
        terms = allowance(self._in_force(partner, timefmt.now()), self._defaults)
        return self._limiter.admit(partner, terms)
