"""The verifier's check that a released result states its agreement's disclosure regime, keeps
to the regime's smallest cell, and releases extremes only where the agreement allows them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from audit.checks import BundleError, check_result
from domain.agreement import Agreement, CellKeyTerms, DisclosureTerms, Regime
from keys import timefmt
from tests.unit.domain.test_agreement import NOW, agreement

LEGACY = agreement()  # names no regime: exact
CELL_KEY = agreement(
    agreement_id="ck", disclosure=DisclosureTerms(Regime.CELL_KEY, CellKeyTerms(2, 4))
)


def result(a: Agreement, **changes: Any) -> dict[str, Any]:
    r = {
        "agreement": {"id": a.agreement_id, "version": a.version},
        "issued_at": timefmt.fmt(NOW),
        "city": "aurora",
        "partner": "northwind",
        "purpose": "urban-mobility-planning",
        "dataset": "mobility",
        "min_cell_size": 7,
        "cells": [{"key": {"mode": "bus"}, "values": {"count_records": 12}}],
        "withheld": [],
        "privacy": None,
        "disclosure": a.disclosure_terms.to_payload(),
    }
    r.update(changes)
    return r


def check(a: Agreement, r: dict[str, Any]) -> None:
    check_result(r, {(a.agreement_id, a.version): a}, Path("node.entries"), 3, {})


def failure(a: Agreement, r: dict[str, Any]) -> str:
    with pytest.raises(BundleError) as e:
        check(a, r)
    assert e.value.reason == "RESULT_BREAKS_AGREEMENT"
    return str(e.value)


def test_the_stated_regime_passes() -> None:
    check(LEGACY, result(LEGACY))
    check(CELL_KEY, result(CELL_KEY, min_cell_size=4))


def test_a_result_from_before_regimes_passes_only_under_an_agreement_naming_none() -> None:
    check(LEGACY, {k: v for k, v in result(LEGACY).items() if k != "disclosure"})
    bare = {k: v for k, v in result(CELL_KEY).items() if k != "disclosure"}
    assert "cell_key" in failure(CELL_KEY, bare)


def test_another_regime_or_other_parameters_fail() -> None:
    assert "exact" in failure(
        CELL_KEY, result(CELL_KEY, disclosure=LEGACY.disclosure_terms.to_payload())
    )
    other = DisclosureTerms(Regime.CELL_KEY, CellKeyTerms(3, 4)).to_payload()
    failure(CELL_KEY, result(CELL_KEY, disclosure=other))


def test_cells_under_the_regimes_smallest_fail() -> None:
    assert "below" in failure(CELL_KEY, result(CELL_KEY, min_cell_size=3))
    assert "below" in failure(LEGACY, result(LEGACY, min_cell_size=6))


def test_extremes_only_where_allowed() -> None:
    cells = [{"key": {"mode": "bus"}, "values": {"max(distance_km)": 41.0}}]
    assert "extreme" in failure(LEGACY, result(LEGACY, cells=cells))
