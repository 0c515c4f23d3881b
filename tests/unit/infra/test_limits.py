"""Per-partner limits: concurrency, fair share of the global budget, rate and burst; config."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

import pytest

from domain.errors import ConfigError, RateLimited
from infra.config import Section, load_toml
from infra.limits import Allowance, LimitsConfig, PartnerLimiter

ROOMY = Allowance(queries_per_minute=10_000, max_concurrent=100)


def test_a_partner_at_its_concurrency_cap_is_refused_and_admitted_again_after() -> None:
    limiter = PartnerLimiter(max_in_flight=100)
    cap = Allowance(queries_per_minute=10_000, max_concurrent=2)
    with limiter.admit("a", cap), limiter.admit("a", cap):
        with pytest.raises(RateLimited) as refused, limiter.admit("a", cap):
            pass
        assert refused.value.reason == "RATE_LIMITED"
        assert refused.value.metadata["limit"] == "max_concurrent"
        assert refused.value.retry_after_s > 0
        with limiter.admit("b", cap):  # another partner is not affected
            pass
    assert limiter.in_flight("a") == 0
    with limiter.admit("a", cap):
        pass


def test_a_refusal_in_the_body_still_releases_the_place() -> None:
    limiter = PartnerLimiter(max_in_flight=10)
    with pytest.raises(ValueError), limiter.admit("a", ROOMY):
        raise ValueError("work failed")
    assert limiter.in_flight("a") == 0


def test_when_the_budget_is_used_up_a_partner_below_its_fair_share_still_gets_in() -> None:
    limiter = PartnerLimiter(max_in_flight=4)
    with ExitStack() as held:
        for _ in range(4):  # "a" alone takes the whole budget: its cap allows it
            held.enter_context(limiter.admit("a", ROOMY))
        with pytest.raises(RateLimited) as refused, limiter.admit("a", ROOMY):
            pass
        assert refused.value.metadata["limit"] == "fair_share"
        # "b" asks while the budget is used up: below its share (4 // 2), admitted twice.
        held.enter_context(limiter.admit("b", ROOMY))
        held.enter_context(limiter.admit("b", ROOMY))
        with pytest.raises(RateLimited), limiter.admit("b", ROOMY):
            pass
        assert limiter.in_flight("a") == 4 and limiter.in_flight("b") == 2


def test_the_rate_refuses_beyond_the_minute_with_the_delay_until_a_slot_frees() -> None:
    limiter = PartnerLimiter(max_in_flight=10)
    rate = Allowance(queries_per_minute=3, max_concurrent=10)
    for _ in range(3):
        with limiter.admit("a", rate):
            pass
    with pytest.raises(RateLimited) as refused, limiter.admit("a", rate):
        pass
    assert refused.value.metadata["limit"] == "queries_per_minute"
    assert 55 < refused.value.retry_after_s <= 60
    with limiter.admit("b", rate):  # each partner has a window of its own
        pass


def test_a_burst_refuses_within_the_second_but_not_the_minute() -> None:
    limiter = PartnerLimiter(max_in_flight=10)
    burst = Allowance(queries_per_minute=100, max_concurrent=10, burst=2)
    for _ in range(2):
        with limiter.admit("a", burst):
            pass
    with pytest.raises(RateLimited) as refused, limiter.admit("a", burst):
        pass
    assert refused.value.metadata["limit"] == "burst"
    assert 0 < refused.value.retry_after_s <= 1


def test_refused_calls_do_not_use_up_the_rate() -> None:
    limiter = PartnerLimiter(max_in_flight=10)
    tight = Allowance(queries_per_minute=2, max_concurrent=1)
    with limiter.admit("a", tight):
        for _ in range(5):  # over the concurrency cap: refused, not counted
            with pytest.raises(RateLimited), limiter.admit("a", tight):
                pass
    with limiter.admit("a", tight):  # the second of the minute's two
        pass


def _section(tmp_path: Path, text: str) -> Section:
    path = tmp_path / "broker.toml"
    path.write_text(text)
    return Section(load_toml(path), path).section("limits", required=False)


def test_config_defaults_and_partner_overrides(tmp_path: Path) -> None:
    config = LimitsConfig.from_config(
        _section(
            tmp_path,
            """
[limits]
queries_per_minute = 120
burst = 10
max_in_flight = 16

[limits.partners.northwind]
max_concurrent = 2
""",
        ),
        with_partners=True,
    )
    assert config.max_in_flight == 16
    assert config.allowance("anyone") == Allowance(120, 8, 10)
    assert config.allowance("northwind") == Allowance(120, 2, 10)
    assert LimitsConfig.from_config(_section(tmp_path, ""), with_partners=True) == LimitsConfig()


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[limits]\nqueries_per_minute = 0", "limits.queries_per_minute"),
        ("[limits]\nmax_concurrent = 0", "limits.max_concurrent"),
        ("[limits]\nqueries_per_minute = 5\nburst = 6", "limits.burst"),
        ("[limits]\nmax_in_flight = 0", "limits.max_in_flight"),
        ("[limits]\nmax_concurrent = true", "limits.max_concurrent"),
        ("[limits.partners.x]\nmax_concurrent = 5000", "limits.partners.x.max_concurrent"),
    ],
)
def test_config_out_of_range_names_the_key(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        LimitsConfig.from_config(_section(tmp_path, text), with_partners=True)


def test_a_node_config_may_not_set_partner_overrides(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="agreements"):
        LimitsConfig.from_config(
            _section(tmp_path, "[limits.partners.x]\nmax_concurrent = 2"), with_partners=False
        )
