"""node.cell_key: the perturbation table and how a cell's measures are perturbed."""

from __future__ import annotations

from fractions import Fraction

import pytest

from domain.agreement import CellKeyTerms
from domain.query import Measure, MeasureKind
from node import cell_key
from node.cell_key import KEY_RANGE, CellFacts, perturbation, perturbed

TERMS = CellKeyTerms(max_perturbation=2, small_cell_threshold=3)
COUNT = Measure(MeasureKind.COUNT_RECORDS)
RESIDENTS = Measure(MeasureKind.COUNT_RESIDENTS)
SUM = Measure(MeasureKind.SUM, "distance_km")
AVG = Measure(MeasureKind.AVG, "distance_km")
MAX = Measure(MeasureKind.MAX, "distance_km")


def _distribution(value: int, terms: CellKeyTerms = TERMS) -> dict[int, Fraction]:
    """The exact distribution of the perturbation of `value` over every key (sampled evenly)."""
    step = KEY_RANGE // 4096
    counts: dict[int, int] = {}
    for key in range(0, KEY_RANGE, step):
        p = perturbation(value, key, terms)
        counts[p] = counts.get(p, 0) + 1
    total = sum(counts.values())
    return {p: Fraction(n, total) for p, n in counts.items()}


def test_cell_key_is_the_sum_of_record_keys_modulo_the_range() -> None:
    assert cell_key.cell_key(5) == 5
    assert cell_key.cell_key(KEY_RANGE + 7) == 7
    assert cell_key.cell_key(3 * KEY_RANGE) == 0


@pytest.mark.parametrize("value", [3, 4, 5, 10, 1000])
def test_perturbation_is_bounded_mean_zero_and_keeps_the_threshold(value: int) -> None:
    dist = _distribution(value)
    assert all(abs(p) <= TERMS.max_perturbation for p in dist)
    assert all(value + p >= TERMS.small_cell_threshold for p in dist)
    mean = sum(p * w for p, w in dist.items())
    assert abs(mean) < Fraction(1, 500)  # zero up to the quantiles' rounding
    width = min(TERMS.max_perturbation, value - TERMS.small_cell_threshold)
    assert set(dist) == set(range(-width, width + 1))


def test_perturbation_is_triangular() -> None:
    dist = _distribution(100, CellKeyTerms(max_perturbation=3, small_cell_threshold=1))
    # weights 1 2 3 4 3 2 1 over 16
    for p, w in {-3: 1, -2: 2, -1: 3, 0: 4, 1: 3, 2: 2, 3: 1}.items():
        assert abs(dist[p] - Fraction(w, 16)) < Fraction(1, 1000)


def test_the_threshold_itself_is_not_perturbed_below() -> None:
    assert {perturbation(3, k, TERMS) for k in range(0, KEY_RANGE, 997)} == {0}


def test_same_cell_same_answer_other_key_other_answer() -> None:
    facts = CellFacts({"count_records": 40}, 40, 12345, {})
    assert perturbed(facts, (COUNT,), TERMS) == perturbed(facts, (COUNT,), TERMS)
    answers = {
        perturbed(CellFacts({"count_records": 40}, 40, k, {}), (COUNT,), TERMS)[0]["count_records"]
        for k in range(0, KEY_RANGE, KEY_RANGE // 64)
    }
    assert answers == {38, 39, 40, 41, 42}


def test_sums_move_by_at_most_the_top_contribution_and_averages_with_them() -> None:
    values = {"count_records": 20, "sum(distance_km)": 100.0, "avg(distance_km)": 5.0}
    for key in range(0, KEY_RANGE, KEY_RANGE // 97):
        out, records = perturbed(
            CellFacts(values, 20, key, {"distance_km": 12.0}), (COUNT, SUM, AVG), TERMS
        )
        shift = float(out["sum(distance_km)"]) - 100.0
        assert abs(shift) <= 12.0
        assert float(out["avg(distance_km)"]) == pytest.approx(5.0 + shift / 20, abs=1e-5)
        assert abs(records - 20) <= TERMS.max_perturbation


def test_extremes_are_released_as_they_are() -> None:
    out, _ = perturbed(CellFacts({"max(distance_km)": 17.5}, 9, 999, {}), (MAX,), TERMS)
    assert out == {"max(distance_km)": 17.5}


def test_residents_and_records_share_the_cell_key() -> None:
    facts = CellFacts({"count_records": 50, "count_residents": 50}, 50, 777, {})
    out, records = perturbed(facts, (COUNT, RESIDENTS), TERMS)
    assert out["count_records"] == out["count_residents"] == records


def test_content_key_is_keyed_and_deterministic() -> None:
    a = cell_key.content_key(b"s" * 32, 12, {"sum(vehicles)": 300})
    assert a == cell_key.content_key(b"s" * 32, 12, {"sum(vehicles)": 300})
    assert 0 <= a < KEY_RANGE
    assert a != cell_key.content_key(b"t" * 32, 12, {"sum(vehicles)": 300})
