"""node.cache.BoundedCache: bounded, and owned: two owners (two caches, two nodes' compilers)
never share an entry."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from domain.query import Measure, MeasureKind, Query
from infra.config import Section
from node import aggregate, synthetic
from node.cache import BoundedCache
from node.catalogue import Catalogue

PURPOSE = "urban-mobility-planning"
DATASET = Catalogue.from_config(
    Section({"mobility": synthetic.MOBILITY_CATALOGUE}, Path("node.toml"))
).datasets["mobility"]


def test_holds_at_most_its_limit() -> None:
    cache: BoundedCache[int, str] = BoundedCache(limit=3)
    for i in range(10):
        assert cache.put(i, str(i)) == str(i)
        assert len(cache) <= 3
        assert cache.get(i) == str(i)
    assert 9 in cache


def test_a_full_cache_starts_afresh_and_keeps_the_new_entry() -> None:
    cache: BoundedCache[str, int] = BoundedCache(limit=2)
    cache.put("a", 1)
    cache.put("b", 2)
    cache.put("c", 3)
    assert (cache.get("a"), cache.get("b"), cache.get("c")) == (None, None, 3)
    assert len(cache) == 1


def test_replacing_an_entry_in_a_full_cache_keeps_the_others() -> None:
    cache: BoundedCache[str, int] = BoundedCache(limit=2)
    cache.put("a", 1)
    cache.put("b", 2)
    cache.put("a", 3)
    assert (cache.get("a"), cache.get("b")) == (3, 2)


def test_two_owners_do_not_share_entries() -> None:
    first: BoundedCache[str, int] = BoundedCache()
    second: BoundedCache[str, int] = BoundedCache()
    first.put("shape", 1)
    assert "shape" in first and "shape" not in second
    assert second.get("shape") is None


def test_two_compilers_do_not_share_statements() -> None:
    """Each node's compiler compiles for itself; one compiler reuses its own statement."""
    query = Query("mobility", PURPOSE, (Measure(MeasureKind.COUNT_RECORDS),))
    scan = aggregate.Scan(query, DATASET, ("northwind",), datetime(2026, 8, 1, tzinfo=UTC))
    one, other = aggregate.QueryCompiler(), aggregate.QueryCompiler()
    first = one.contributors_statement(scan, "sqlite", [])
    again = one.contributors_statement(scan, "sqlite", [])
    elsewhere = other.contributors_statement(scan, "sqlite", [])
    assert first is not None and again is not None and elsewhere is not None
    assert again[0] is first[0]
    assert elsewhere[0] is not first[0]
