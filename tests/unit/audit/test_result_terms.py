"""The verifier's check that a released result kept to its agreement's privacy terms."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from audit.checks import BundleError, check_result
from domain.agreement import DpTerms
from keys import timefmt
from tests.unit.domain.test_agreement import NOW, agreement

DP = agreement(dp=DpTerms(0.5, 1.0, {}, records_per_resident=3))
AGREEMENTS = {(DP.agreement_id, DP.version): DP}


def result(**privacy: Any) -> dict[str, Any]:
    return {
        "agreement": {"id": DP.agreement_id, "version": DP.version},
        "issued_at": timefmt.fmt(NOW),
        "city": "aurora",
        "partner": "northwind",
        "purpose": "urban-mobility-planning",
        "dataset": "mobility",
        "min_cell_size": 7,
        "cells": [{"key": {"mode": "bus"}, "values": {"count_records": 12}}],
        "withheld": [],
        "privacy": {"epsilon": 0.5, **privacy},
    }


def check(r: dict[str, Any], spent: dict[tuple[str, int], float] | None = None) -> None:
    check_result(r, AGREEMENTS, Path("node.entries"), 7, {} if spent is None else spent)


def test_the_agreements_bound_and_epsilon_pass() -> None:
    check(result(unit="resident", records_per_resident=3))
    check(result(unit="record"))  # observational data: no residents to bound


def test_noise_for_another_contribution_bound_fails() -> None:
    with pytest.raises(BundleError) as e:
        check(result(unit="resident", records_per_resident=1))
    assert e.value.reason == "RESULT_BREAKS_AGREEMENT"
    assert "3" in str(e.value) and "node.entries" in str(e.value)


def test_spending_beyond_the_budget_fails() -> None:
    spent: dict[tuple[str, int], float] = {}
    check(result(unit="resident", records_per_resident=3), spent)
    check(result(unit="resident", records_per_resident=3), spent)
    with pytest.raises(BundleError):
        check(result(unit="resident", records_per_resident=3), spent)
