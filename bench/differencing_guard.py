"""The differencing guard's cost (issue 12): with 10,000 earlier released cells at a 1,000,000-
resident city, per query, against the query without the guard.

    .venv/bin/python bench/differencing_guard.py            # about 3 minutes
    .venv/bin/python bench/differencing_guard.py --quick    # smaller, under a minute

Two parts, in one run:

1. The guard step at city scale, on synthetic bitmaps. A node database (SQLite, migrated) holds a
   release history of `--cells` earlier cells of one partner, agreement and dataset, over
   `--city` resident numbers (60 % consenting): sizes log-uniform from k to the consenting
   population, members uniformly random (slices of random permutations). Each measured query
   is an answer of `--answer-cells` cells drawn the same way, two of them an earlier cell less
   three residents (a differencing attempt, withheld). Timed, the guard step: reading the history
   through the size pre-filter (node.release_history.ReleaseHistory.earlier: the rows added
   since, bisection by size, the candidates' bitmaps) and the comparisons
   (node.differencing.guard); cold: a new ReleaseHistory per query (no cache, as after a
   restart), warm: one for all queries. Timed apart, the record step: serialising the released
   cells and the side write the log's transaction runs (check of what was added meanwhile,
   insert), rolled back so that every query sees the same history.
2. End to end on SQLite at `--residents` residents (data beside the consents, as the demo): the
   aggregate alone (node.aggregate.QueryCompiler.run: trips and residents by district and mode,
   k = 10), the aggregate plus the transparency record's contributors statement (what a node ran
   before the guard: node.transparency's words statement), and the aggregate plus the guard
   (node.release_guard: per-cell sets, history, comparisons, record), whose per-cell sets also
   give the transparency bitmap, so that statement no longer runs. Medians of `--runs`,
   alternating.

Writes bench/results/differencing_guard.json (bench/common.py's format) and prints a table.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from array import array
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa
from pyroaring import BitMap

from domain.agreement import Agreement, Appearance, FieldTerms
from domain.query import Dimension, Measure, MeasureKind, Query
from infra import storage
from infra.config import Section
from keys import timefmt
from node import aggregate, differencing, synthetic, transparency
from node.catalogue import Catalogue
from node.differencing import CellSet
from node.release_guard import Asked, ReleaseGuard
from node.release_history import HistoryKey, ReleaseHistory
from node.schema import consent_records, consent_scopes, resident_numbers

NAME = "differencing_guard"
GOAL_MS = 20.0
K = 10
PARTNER, PURPOSE = "northwind-mobility", "urban-mobility-planning"
KEY = HistoryKey(PARTNER, "aurora--northwind-mobility", "mobility")
DATASET = Catalogue.from_config(
    Section({"mobility": synthetic.MOBILITY_CATALOGUE}, Path("node.toml"))
).datasets["mobility"]
QUERY = Query(
    "mobility",
    PURPOSE,
    (Measure(MeasureKind.COUNT_RECORDS), Measure(MeasureKind.COUNT_RESIDENTS)),
    (Dimension("district"), Dimension("mode")),
)
DISTRICTS = tuple(f"District {i:02d}" for i in range(20))


def _agreement() -> Agreement:
    now = timefmt.now()
    return Agreement(
        agreement_id=KEY.agreement_id,
        version=1,
        provider="aurora",
        consumer=PARTNER,
        purposes=frozenset({PURPOSE}),
        datasets={"mobility": {"district": FieldTerms(Appearance.RAW)}},
        min_cell_size=K,
        valid_from=now - timedelta(days=1),
        valid_until=now + timedelta(days=365),
        retention_days=90,
    )


class Cells:
    """Random cells over `population` consenting numbers (a random subset of `city`): sizes
    log-uniform from k to the population; members every `stride`-th consenting number from a
    random start, with a random stride (as dense, container by container, as a random subset of
    that size, and cheap to make sorted)."""

    def __init__(self, city: int, population: int, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.consenting = np.sort(self.rng.choice(city, population, replace=False)).astype(
            np.uint32
        )
        self.population = population

    def one(self) -> CellSet:
        size = int(np.exp(self.rng.uniform(np.log(K), np.log(self.population))))
        stride = int(self.rng.integers(1, self.population // size + 1))
        start = int(self.rng.integers(0, self.population - (size - 1) * stride))
        chosen = self.consenting[start : start + (size - 1) * stride + 1 : stride]
        members = BitMap(array("I", chosen.tobytes()))
        return CellSet(members, size * 3, int(self.rng.integers(1 << 40)))


def _history(engine: sa.Engine, cells: Cells, n: int) -> list[CellSet]:
    history = ReleaseHistory(engine)
    made: list[CellSet] = []
    until = timefmt.now() + timedelta(days=365)
    for start in range(0, n, 500):
        batch = [cells.one() for _ in range(min(500, n - start))]
        history.record(KEY, until, f"earlier-{start}", batch)
        made += batch
    return made


def _answer(cells: Cells, earlier: list[CellSet], n: int) -> list[CellSet]:
    """`n` new cells, two of them an earlier cell less three members (withheld)."""
    out = [cells.one() for _ in range(n - 2)]
    for _ in range(2):
        old = earlier[int(cells.rng.integers(len(earlier)))]
        members = BitMap(old.members)
        for _ in range(3):
            members.remove(members.min())
        out.append(CellSet(members, old.records - 3, old.signature))
    return out


def _guard_step(
    history: ReleaseHistory, answer: list[CellSet], engine: sa.Engine
) -> tuple[float, float]:
    """The check (history read, comparisons) and the record (side write), in ms."""
    t = time.perf_counter()
    snapshot = history.earlier(KEY, [c.size for c in answer], K)
    withheld = differencing.guard(answer, snapshot.earlier, K)
    checked = time.perf_counter()
    assert len(withheld) >= 2, withheld
    released = [c for i, c in enumerate(answer) if i not in withheld]
    with engine.connect() as conn:
        tx = conn.begin()
        history.side_write(KEY, _agreement().valid_until, "new", released, snapshot, K)(conn, 0)
        tx.rollback()  # measured, not kept: every query sees the same history
    return (checked - t) * 1000, (time.perf_counter() - checked) * 1000


def guard_at_scale(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    engine = storage.create_engine(f"sqlite:///{work / 'history.db'}")
    storage.upgrade(engine)
    population = int(args.city * 0.6)
    cells = Cells(args.city, population, seed=12)
    t = time.perf_counter()
    earlier = _history(engine, cells, args.cells)
    built = time.perf_counter() - t
    answers = [_answer(cells, earlier, args.answer_cells) for _ in range(args.queries)]
    cold = [_guard_step(ReleaseHistory(engine), a, engine)[0] for a in answers]
    warm_history = ReleaseHistory(engine)
    for a in answers:  # once, to fill its cache
        warm_history.earlier(KEY, [c.size for c in a], K)
    warm = [_guard_step(warm_history, a, engine) for a in answers]
    compared = []
    for a in answers:
        snapshot = warm_history.earlier(KEY, [c.size for c in a], K)
        compared.append(sum(len(snapshot.earlier.near(c.size, K)) for c in a))
    engine.dispose()
    return {
        "cold_ms": statistics.median(cold),
        "warm_ms": statistics.median(w[0] for w in warm),
        "record_ms": statistics.median(w[1] for w in warm),
        "cold_p90_ms": float(np.percentile(cold, 90)),
        "compared_per_query": statistics.mean(compared),
        "history_built_s": built,
    }


def _load_city(engine: sa.Engine, residents: int) -> None:
    people = synthetic.residents("aurora", DISTRICTS, residents, 1)
    synthetic.load_trips(engine, synthetic.trip_rows(people, 3, date(2026, 8, 1), 92, 1))
    since = timefmt.to_db(timefmt.now() - timedelta(days=2))
    rng = np.random.default_rng(3)
    consenting = [p.resident_id for p in people if rng.random() < 0.6]
    with engine.begin() as conn:
        for start in range(0, len(consenting), 10_000):
            chunk = consenting[start : start + 10_000]
            conn.execute(
                consent_records.insert(),
                [
                    {"record_id": f"{r}-c", "resident_id": r, "valid_from": since, "state": "given"}
                    for r in chunk
                ],
            )
            conn.execute(
                consent_scopes.insert(),
                [
                    {
                        "record_id": f"{r}-c",
                        "purpose": PURPOSE,
                        "recipient": PARTNER,
                        "data_category": "mobility",
                        "resident_id": r,
                        "state": "given",
                        "valid_from": since,
                    }
                    for r in chunk
                ],
            )
        conn.execute(sa.text("ANALYZE"))


def _timed(engine: sa.Engine, how: str, compiler: aggregate.QueryCompiler, n: int) -> float:
    scan = aggregate.Scan(QUERY, DATASET, (PARTNER,), timefmt.now())
    t = time.perf_counter()
    guarded = None
    with engine.connect() as conn:
        answer = compiler.run(conn, scan, K)
        if how == "contributors":
            found = compiler.contributors_statement(scan, "sqlite", answer.withheld)
            assert found is not None
            words = transparency.words_statement(found[0], resident_numbers)
            conn.execute(words, found[1]).all()
        elif how == "guard":
            asked = Asked(PARTNER, _agreement(), f"q{n}", scan, K)
            answer, guarded = ReleaseGuard(engine).apply(asked, conn, answer, resident_numbers)
    if guarded is not None:
        with engine.begin() as w:
            guarded.side_write()(w, 0)
    return (time.perf_counter() - t) * 1000


def end_to_end(args: argparse.Namespace, work: Path) -> dict[str, float]:
    engine = storage.create_engine(f"sqlite:///{work / 'city.db'}")
    storage.upgrade(engine)
    _load_city(engine, args.residents)
    compiler = aggregate.QueryCompiler()
    times: dict[str, list[float]] = {"aggregate": [], "contributors": [], "guard": []}
    for how in times:  # warm-up: compiled statements, numbers given
        _timed(engine, how, compiler, -1)
    for n in range(args.runs):
        order = list(times) if n % 2 == 0 else list(reversed(times))
        for how in order:
            times[how].append(_timed(engine, how, compiler, n))
    engine.dispose()
    return {how: statistics.median(v) for how, v in times.items()}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--city", type=int, default=1_000_000, help="resident numbers (guard step)")
    p.add_argument("--cells", type=int, default=10_000, help="earlier released cells")
    p.add_argument("--answer-cells", type=int, default=100, help="cells of each new answer")
    p.add_argument("--queries", type=int, default=30, help="answers measured (guard step)")
    p.add_argument("--residents", type=int, default=200_000, help="residents (end to end)")
    p.add_argument("--runs", type=int, default=7, help="runs of each end-to-end variant")
    p.add_argument("--quick", action="store_true", help="100,000 numbers, 2,000 cells")
    p.add_argument("--results", type=Path, help="directory for the JSON (default bench/results)")
    args = p.parse_args(argv)
    if args.quick:
        args.city, args.cells, args.residents, args.runs = 100_000, 2_000, 50_000, 3
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from common import RESULTS_DIR, Figure, environment, figures_table, write_figures
    from rich.console import Console

    console = Console(width=None if sys.stdout.isatty() else 160)
    with tempfile.TemporaryDirectory(prefix="citybroker-bench-guard-") as tmp:
        scale = guard_at_scale(args, Path(tmp))
        e2e = end_to_end(args, Path(tmp))
    params = {
        **environment(),
        "city_numbers": args.city,
        "earlier_cells": args.cells,
        "answer_cells": args.answer_cells,
        "queries": args.queries,
        "k": K,
        "compared_per_query": round(scale["compared_per_query"], 1),
        "history_built_s": round(scale["history_built_s"], 1),
        "engine": "sqlite",
    }
    e2e_params = {**environment(), "residents": args.residents, "runs": args.runs, "k": K}
    figs = [
        Figure(f"{NAME}.guard_step.warm", scale["warm_ms"], "ms", False, GOAL_MS, "goal", params),
        Figure(f"{NAME}.guard_step.cold", scale["cold_ms"], "ms", False, GOAL_MS, "goal", params),
        Figure(
            f"{NAME}.guard_step.cold_p90",
            scale["cold_p90_ms"],
            "ms",
            False,
            GOAL_MS,
            "goal",
            params,
        ),
        Figure(
            f"{NAME}.record_step.warm", scale["record_ms"], "ms", False, GOAL_MS, "goal", params
        ),
        Figure(
            f"{NAME}.end_to_end.guarded",
            e2e["guard"],
            "ms",
            False,
            e2e["aggregate"],
            f"{NAME}.end_to_end.unguarded",
            e2e_params,
        ),
        Figure(
            f"{NAME}.end_to_end.guarded_vs_transparency_scan",
            e2e["guard"],
            "ms",
            False,
            e2e["contributors"],
            f"{NAME}.end_to_end.unguarded_with_contributors_scan",
            e2e_params,
        ),
    ]
    console.print(figures_table("Differencing guard (per query)", figs))
    console.print(
        f"Guard step: {args.cells:,} earlier cells over {args.city:,} resident numbers, answers "
        f"of {args.answer_cells} cells; {scale['compared_per_query']:.1f} earlier cells compared "
        f"per answer after the size pre-filter. End to end: SQLite, {args.residents:,} residents."
    )
    out = write_figures((args.results or RESULTS_DIR) / f"{NAME}.json", figs)
    console.print(f"Wrote {out}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
