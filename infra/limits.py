"""Per-partner limits, shared by the broker's edge and every node: a rate, a concurrency cap, and a
fair share of the server's work, so that one partner cannot starve another.

How a call is admitted (`PartnerLimiter.admit`), all under one lock so that checks and counts agree:

1. **Concurrency**: a partner has at most `max_concurrent` calls in flight.
2. **Fair share**: all partners together have a budget of `max_in_flight` calls (set well below
   the server's thread pool, 64 workers, and its 256 concurrent RPCs). While the budget is used
   up, a partner is admitted only below its fair share, `max_in_flight // active partners`; so a
   partner that asks little always gets in, whatever the others do, and the budget can be
   overrun at most by the partners below their share (never by more than `max_in_flight` again,
   which the thread pool still has room for).
3. **Rate**: at most `queries_per_minute` calls in any minute and, with `burst`, at most `burst`
   in any second: the `limits` library's moving window, in this process's memory. A refused call
   does not count, so a partner that floods is served again as soon as its window has room.

Whatever is over a limit is refused at once with `RateLimited` (RESOURCE_EXHAUSTED, reason
RATE_LIMITED, a retry delay), not queued: gRPC's synchronous server gives each waiting call a
worker thread, so a queue here would hold the very threads the other partners need, while a refusal
costs microseconds. Fairness comes from (1) and (2): each partner's cap is well below the workers,
and the global budget is shared out evenly when it is scarce.

Limits are per process: several broker replicas each apply them (a partner may get up to
replicas × its limits), and a node applies its own whatever the broker did.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

from limits import RateLimitItem, RateLimitItemPerMinute, RateLimitItemPerSecond
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

from domain.errors import ConfigError, RateLimited
from infra.config import Section

# A refusal for concurrency cannot know when a call ends; this is the delay it suggests.
CONCURRENCY_RETRY_S = 1.0
MAX_RATE = 1_000_000
MAX_CONCURRENT = 1000


@dataclass(frozen=True)
class Allowance:
    """What one partner may ask: queries per minute, queries in any one second (`burst`; 0: no
    per-second limit beyond the minute's), and calls at once."""

    # Calls a partner may make in any minute (1 to 1,000,000).
    queries_per_minute: int = 600
    # Calls a partner may have in flight at once (1 to 1000).
    max_concurrent: int = 8
    # Calls a partner may make in any one second; 0: no limit beyond the minute's.
    burst: int = 0

    @classmethod
    def from_config(cls, section: Section, defaults: Allowance) -> Allowance:
        """An allowance from a config table, each absent key from `defaults`; ConfigError unless
        1 <= queries_per_minute <= 1000000, 1 <= max_concurrent <= 1000, 0 <= burst <= that rate."""
        allowance = cls(
            section.int("queries_per_minute", defaults.queries_per_minute),
            section.int("max_concurrent", defaults.max_concurrent),
            section.int("burst", defaults.burst),
        )
        if not 1 <= allowance.queries_per_minute <= MAX_RATE:
            raise ConfigError(
                f"{section.path}: {section.prefix}queries_per_minute must be 1 to {MAX_RATE}"
            )
        if not 1 <= allowance.max_concurrent <= MAX_CONCURRENT:
            raise ConfigError(
                f"{section.path}: {section.prefix}max_concurrent must be 1 to {MAX_CONCURRENT}"
            )
        if not 0 <= allowance.burst <= allowance.queries_per_minute:
            raise ConfigError(
                f"{section.path}: {section.prefix}burst must be 0 to queries_per_minute"
            )
        return allowance


@dataclass(frozen=True)
class LimitsConfig:
    """A `[limits]` table: the allowance of every partner (`defaults`), the budget all partners
    share (`max_in_flight`), and, where a config allows them, per-partner overrides."""

    defaults: Allowance = Allowance()
    # Calls all partners together may have in flight; while it is used up, each gets a fair share.
    max_in_flight: int = 32
    # Per-partner allowances, by partner id (broker only: a city sets them in its agreements).
    partners: Mapping[str, Allowance] = field(default_factory=dict)

    def allowance(self, partner: str) -> Allowance:
        """The partner's own allowance if it has one, else the defaults."""
        return self.partners.get(partner, self.defaults)

    @classmethod
    def from_config(cls, section: Section, with_partners: bool) -> LimitsConfig:
        """Read `[limits]` (and `[limits.partners.ID]` tables when `with_partners`; a partner's
        absent keys come from the defaults); ConfigError for values out of range."""
        defaults = Allowance.from_config(section, Allowance())
        max_in_flight = section.int("max_in_flight", cls.max_in_flight)
        if not 1 <= max_in_flight <= MAX_CONCURRENT:
            raise ConfigError(
                f"{section.path}: {section.prefix}max_in_flight must be 1 to {MAX_CONCURRENT}"
            )
        partners: dict[str, Allowance] = {}
        if with_partners:
            table = section.section("partners", required=False)
            partners = {p: Allowance.from_config(table.section(p), defaults) for p in table}
        elif "partners" in section.data:
            raise ConfigError(
                f"{section.path}: {section.prefix}partners is not read here; a city sets "
                "per-partner limits in its agreements"
            )
        return cls(defaults, max_in_flight, partners)


class PartnerLimiter:
    """Admits calls per partner (see the module docstring); `admit` is a context manager."""

    def __init__(self, max_in_flight: int) -> None:
        self._max_in_flight = max_in_flight
        self._rates = MovingWindowRateLimiter(MemoryStorage())
        self._in_flight: dict[str, int] = {}
        self._lock = threading.Lock()

    @contextmanager
    def admit(self, partner: str, allowance: Allowance) -> Iterator[None]:
        """Hold one of the partner's places while the body runs; RateLimited, before the body,
        if the call is over the partner's concurrency, fair share or rate."""
        with self._lock:
            try:
                self._check_places(partner, allowance)
                self._take_rate(partner, allowance)
            except RateLimited as e:
                # Imported here: configs load this module, and `citybroker --help` with them.
                from infra.metrics import RATE_LIMITED

                RATE_LIMITED.labels(partner, e.metadata.get("limit", "")).inc()
                raise
            self._in_flight[partner] = self._in_flight.get(partner, 0) + 1
        try:
            yield
        finally:
            with self._lock:
                left = self._in_flight[partner] - 1
                if left:
                    self._in_flight[partner] = left
                else:
                    del self._in_flight[partner]

    def in_flight(self, partner: str) -> int:
        """How many calls of `partner` are admitted and not yet finished."""
        with self._lock:
            return self._in_flight.get(partner, 0)

    def _check_places(self, partner: str, allowance: Allowance) -> None:
        mine = self._in_flight.get(partner, 0)
        if mine >= allowance.max_concurrent:
            raise RateLimited(
                f"{partner} has {mine} calls in flight, its limit; try again when one finishes",
                CONCURRENCY_RETRY_S,
                limit="max_concurrent",
            )
        total = sum(self._in_flight.values())
        active = len(self._in_flight) + (0 if mine else 1)
        share = max(1, self._max_in_flight // active)
        if total >= self._max_in_flight and mine >= share:
            raise RateLimited(
                f"the server is busy and {partner} has its fair share ({share}) of it in flight",
                CONCURRENCY_RETRY_S,
                limit="fair_share",
            )

    def _take_rate(self, partner: str, allowance: Allowance) -> None:
        items: list[tuple[str, RateLimitItem]] = [
            ("queries_per_minute", RateLimitItemPerMinute(allowance.queries_per_minute))
        ]
        if allowance.burst:
            items.append(("burst", RateLimitItemPerSecond(allowance.burst)))
        for name, item in items:  # tested together first: a refusal consumes neither window
            if not self._rates.test(item, partner):
                reset = self._rates.get_window_stats(item, partner).reset_time
                raise RateLimited(
                    f"{partner} is over its {name} limit of {item.amount}",
                    max(0.001, math.ceil((reset - time.time()) * 1000) / 1000),
                    limit=name,
                )
        for _, item in items:
            self._rates.hit(item, partner)
