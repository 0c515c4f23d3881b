"""Merging city results: how each measure combines, and that withheld cells stay withheld."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from broker import merge

Cell = tuple[dict[str, str], dict[str, float], int]


def result(cells: list[Cell], withheld: Sequence[dict[str, str]] = ()) -> dict[str, Any]:
    """A verified result payload as a city signs it: released cells plus withheld keys."""
    return {
        "cells": [{"key": k, "values": v, "records": n} for k, v, n in cells],
        "withheld": list(withheld),
    }


def by_key(cells: list[merge.MergedCell]) -> dict[tuple[tuple[str, str], ...], merge.MergedCell]:
    return {tuple(sorted(c.key.items())): c for c in cells}


BUS = {"mode": "bus"}
TRAM = {"mode": "tram"}


def test_counts_and_sums_add() -> None:
    merged = merge.merge(
        [
            (
                "aurora",
                result([(BUS, {"count_records": 10, "count_residents": 4, "sum(d)": 2.5}, 10)]),
            ),
            (
                "borealis",
                result([(BUS, {"count_records": 7, "count_residents": 3, "sum(d)": 1.25}, 7)]),
            ),
        ]
    )
    [cell] = merged
    assert cell.values == {"count_records": 17, "count_residents": 7, "sum(d)": 3.75}
    assert cell.records == 17
    assert cell.contributing == ["aurora", "borealis"]
    assert cell.withholding == [] and not cell.withheld


def test_min_and_max_combine() -> None:
    merged = merge.merge(
        [
            ("aurora", result([(BUS, {"min(d)": 2.0, "max(d)": 9.0}, 5)])),
            ("borealis", result([(BUS, {"min(d)": 1.0, "max(d)": 20.0}, 5)])),
            ("cascadia", result([(BUS, {"min(d)": 3.0, "max(d)": 4.0}, 5)])),
        ]
    )
    assert merged[0].values == {"min(d)": 1.0, "max(d)": 20.0}


def test_avg_is_weighted_by_records() -> None:
    merged = merge.merge(
        [
            ("aurora", result([(BUS, {"avg(d)": 10.0}, 30)])),
            ("borealis", result([(BUS, {"avg(d)": 20.0}, 10)])),
            ("cascadia", result([(BUS, {"avg(d)": 2.0}, 10)])),
        ]
    )
    # (10*30 + 20*10 + 2*10) / 50, not the plain mean of the three averages.
    assert merged[0].values["avg(d)"] == pytest.approx(10.4)
    assert merged[0].records == 50


def test_cells_only_one_city_has_keep_that_citys_values() -> None:
    merged = by_key(
        merge.merge(
            [
                ("aurora", result([(BUS, {"count_records": 10}, 10)])),
                ("borealis", result([(TRAM, {"count_records": 6}, 6)])),
            ]
        )
    )
    assert merged[(("mode", "bus"),)].values == {"count_records": 10}
    assert merged[(("mode", "tram"),)].contributing == ["borealis"]


def test_withheld_cell_names_the_city_and_takes_no_value_from_it() -> None:
    merged = by_key(
        merge.merge(
            [
                (
                    "aurora",
                    result([(BUS, {"count_records": 10, "avg(d)": 4.0}, 10)], withheld=[TRAM]),
                ),
                (
                    "borealis",
                    result([(TRAM, {"count_records": 12, "avg(d)": 8.0}, 12)], withheld=[BUS]),
                ),
                ("cascadia", result([], withheld=[TRAM])),
            ]
        )
    )
    bus, tram = merged[(("mode", "bus"),)], merged[(("mode", "tram"),)]
    assert bus.contributing == ["aurora"] and bus.withholding == ["borealis"]
    assert bus.values == {"count_records": 10, "avg(d)": 4.0} and bus.records == 10
    assert tram.contributing == ["borealis"] and tram.withholding == ["aurora", "cascadia"]
    assert tram.values == {"count_records": 12, "avg(d)": 8.0} and tram.records == 12


def test_cell_withheld_everywhere_has_no_values() -> None:
    [cell] = merge.merge(
        [("aurora", result([], withheld=[BUS])), ("borealis", result([], withheld=[BUS]))]
    )
    assert cell.withheld
    assert cell.values == {} and cell.records == 0
    assert cell.withholding == ["aurora", "borealis"]
    [payload] = merge.to_payload([cell])
    assert payload == {
        "key": BUS,
        "values": {},
        "contributing": [],
        "withholding": ["aurora", "borealis"],
    }


def test_withheld_before_contributed_does_not_matter() -> None:
    first = merge.merge(
        [("aurora", result([], withheld=[BUS])), ("borealis", result([(BUS, {"sum(d)": 5.0}, 3)]))]
    )
    second = merge.merge(
        [("borealis", result([(BUS, {"sum(d)": 5.0}, 3)])), ("aurora", result([], withheld=[BUS]))]
    )
    for merged in (first, second):
        [cell] = merged
        assert cell.values == {"sum(d)": 5.0}
        assert cell.withholding == ["aurora"] and cell.contributing == ["borealis"]


def test_multi_dimension_keys_match_regardless_of_order() -> None:
    merged = merge.merge(
        [
            ("aurora", result([({"mode": "bus", "district": "N"}, {"count_records": 5}, 5)])),
            ("borealis", result([({"district": "N", "mode": "bus"}, {"count_records": 6}, 6)])),
        ]
    )
    assert len(merged) == 1 and merged[0].values == {"count_records": 11}


def test_ungrouped_results_merge_into_one_cell() -> None:
    [cell] = merge.merge(
        [
            ("aurora", result([({}, {"count_records": 3}, 3)])),
            ("borealis", result([], withheld=[{}])),
        ]
    )
    assert (
        cell.key == {} and cell.values == {"count_records": 3} and cell.withholding == ["borealis"]
    )


def test_output_is_sorted_by_key() -> None:
    merged = merge.merge(
        [
            (
                "aurora",
                result(
                    [(TRAM, {"count_records": 1}, 1), (BUS, {"count_records": 1}, 1)],
                    withheld=[{"mode": "car"}],
                ),
            )
        ]
    )
    assert [c.key["mode"] for c in merged] == ["bus", "car", "tram"]
