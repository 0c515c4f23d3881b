"""A city's limits on a partner come from its agreements in force, else from the node's defaults."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest

from domain.agreement import Agreement, PartnerLimits
from domain.errors import RateLimited
from infra.limits import Allowance, LimitsConfig
from node.partner_limits import PartnerGate, allowance

NOW = datetime(2026, 9, 1, tzinfo=UTC)
DEFAULTS = Allowance(queries_per_minute=600, max_concurrent=8)


def _agreement(limits: PartnerLimits | None) -> Agreement:
    return Agreement(
        agreement_id="aurora--northwind",
        version=1,
        provider="aurora",
        consumer="northwind",
        purposes=frozenset({"planning"}),
        datasets={},
        min_cell_size=10,
        valid_from=NOW - timedelta(days=1),
        valid_until=NOW + timedelta(days=1),
        retention_days=0,
        limits=limits,
    )


def test_no_agreement_means_the_node_defaults() -> None:
    assert allowance([], DEFAULTS) == DEFAULTS


def test_the_agreement_terms_replace_the_defaults() -> None:
    terms = PartnerLimits(queries_per_minute=30, max_concurrent=2)
    assert allowance([_agreement(terms)], DEFAULTS) == Allowance(30, 2)


def test_with_several_agreements_the_most_generous_terms_hold() -> None:
    tight = _agreement(PartnerLimits(queries_per_minute=30, max_concurrent=2))
    wide = dataclasses.replace(tight, limits=PartnerLimits(10, 20))
    assert allowance([tight, wide], DEFAULTS) == Allowance(30, 20)
    assert allowance([tight, _agreement(None)], DEFAULTS) == DEFAULTS


def test_the_gate_refuses_beyond_the_agreement_terms() -> None:
    terms = _agreement(PartnerLimits(queries_per_minute=100, max_concurrent=1))
    gate = PartnerGate(LimitsConfig(DEFAULTS), lambda partner, at: [terms])
    with gate.admit("northwind"), pytest.raises(RateLimited), gate.admit("northwind"):
        pass
