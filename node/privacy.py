"""Differential privacy where an agreement asks for it: OpenDP mechanisms and the budget ledger.

The unit of privacy is one resident (one record for observational data, which has no resident).
The query keeps at most the agreement's `records_per_resident` (L) of each resident's records, in
SQL (node.aggregate), so one resident changes any answer by at most: L in total over the record
counts of all cells (each record is in one cell), L over the distinct-resident counts (a resident
is in at most L cells), L times the larger sum bound over the sums. Each cell's noise is scaled to
that L1 sensitivity, and the per-query epsilon is split evenly over the measures (sequential
composition). Counts get discrete Laplace noise; sums are clamped to the agreement's declared
bounds in SQL and get Laplace noise. Averages, minima and maxima have no mechanism here and are
refused under a DP agreement.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from domain.agreement import Agreement, DpTerms
from domain.errors import BudgetExhausted, Conflict, InvalidArgument
from domain.query import MeasureKind, Query
from keys import timefmt
from node.schema import dp_budgets, dp_ledger


@functools.cache
def _opendp() -> Any:
    """OpenDP, imported with the first noisy answer: it adds about 20 MB to a process, which a
    node with no differential-privacy agreement never needs."""
    import opendp.prelude as dp

    dp.enable_features("contrib")
    return dp


SUPPORTED = frozenset({MeasureKind.COUNT_RECORDS, MeasureKind.COUNT_RESIDENTS, MeasureKind.SUM})


@dataclass(frozen=True)
class Spend:
    epsilon: float
    budget_left: float

    def statement(self, records_per_resident: int | None) -> dict[str, Any]:
        """What the signed result says about the noise it carries (`records_per_resident`:
        the contribution bound; None for observational data, whose unit is the record)."""
        unit: dict[str, Any] = {"unit": "record"}
        if records_per_resident is not None:
            unit = {"unit": "resident", "records_per_resident": records_per_resident}
        return {
            "mechanism": "opendp discrete_laplace (counts), laplace (bounded sums)",
            **unit,
            "epsilon": self.epsilon,
            "budget_left": self.budget_left,
        }


def check_query(query: Query, terms: DpTerms) -> None:
    """Fail closed: only measures with a mechanism, and sums only over fields with bounds."""
    for m in query.measures:
        if m.kind not in SUPPORTED:
            raise InvalidArgument(
                f"{m.kind.value} has no differentially private mechanism here",
                reason="DP_MEASURE_NOT_SUPPORTED",
                measure=m.name,
            )
        if m.kind is MeasureKind.SUM and m.field not in terms.bounds:
            raise InvalidArgument(
                f"the agreement declares no bounds for {m.field}",
                reason="DP_BOUNDS_MISSING",
                field=m.field,
            )


def sensitivity(terms: DpTerms, resident_linked: bool) -> int:
    """How many records one protected unit may add to an answer (see the module docstring)."""
    return terms.records_per_resident if resident_linked else 1


def noisy(
    value: float | int,
    kind: MeasureKind,
    field: str,
    terms: DpTerms,
    epsilon: float,
    records: int = 1,
) -> float | int:
    """`value` with noise for a unit that contributes at most `records` records."""
    dp = _opendp()
    if kind is MeasureKind.SUM:
        lo, hi = terms.bounds[field]
        scale = records * max(abs(lo), abs(hi)) / epsilon
        m = dp.m.make_laplace(
            dp.atom_domain(T=float, nan=False), dp.absolute_distance(T=float), scale=scale
        )
        return round(float(m(float(value))), 6)
    counts = dp.m.make_laplace(
        dp.atom_domain(T=int), dp.absolute_distance(T=int), scale=records / epsilon
    )
    return max(0, int(counts(int(value))))


@dataclass(frozen=True)
class Charge:
    """One answer's spend, quoted against the ledger as it stood; `write` books it in the
    transaction that releases the answer, and only if the ledger still stands there."""

    agreement_id: str
    version: int
    total_epsilon: float
    epsilon: float
    spent_before: float
    request_id: str

    def spend(self) -> Spend:
        """What this answer spends, and the budget left once it is booked."""
        return Spend(self.epsilon, round(self.total_epsilon - self.spent_before - self.epsilon, 9))

    def write(self, conn: sa.Connection) -> None:
        """Book the spend; raise Conflict if another answer was charged since the quote (the
        signed result states the budget left, so it must not go out with a stale figure)."""
        key = (dp_budgets.c.agreement_id == self.agreement_id, dp_budgets.c.version == self.version)
        insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
        conn.execute(  # the budget's row, unless an earlier answer created it
            insert(dp_budgets)
            .values(
                agreement_id=self.agreement_id,
                version=self.version,
                total_epsilon=self.total_epsilon,
                spent_epsilon=0.0,
            )
            .on_conflict_do_nothing()
        )
        charged = conn.execute(
            dp_budgets.update()
            .where(*key, dp_budgets.c.spent_epsilon == self.spent_before)
            .values(spent_epsilon=dp_budgets.c.spent_epsilon + self.epsilon)
        )
        if charged.rowcount != 1:
            raise Conflict(
                f"the privacy budget of agreement {self.agreement_id} changed while answering",
                reason="BUDGET_CHANGED",
            )
        conn.execute(
            dp_ledger.insert().values(
                request_id=self.request_id,
                agreement_id=self.agreement_id,
                version=self.version,
                epsilon=self.epsilon,
                charged_at=timefmt.to_db(timefmt.now()),
            )
        )


class BudgetLedger:
    def __init__(self, engine: sa.Engine) -> None:
        self._engine = engine

    def quote(self, agreement: Agreement, request_id: str) -> Charge:
        """What this answer will cost, or BUDGET_EXHAUSTED if the budget cannot pay for it."""
        terms = agreement.dp
        assert terms is not None
        with self._engine.connect() as conn:
            spent = conn.execute(
                sa.select(dp_budgets.c.spent_epsilon).where(
                    dp_budgets.c.agreement_id == agreement.agreement_id,
                    dp_budgets.c.version == agreement.version,
                )
            ).scalar()
        spent = 0.0 if spent is None else float(spent)
        if spent + terms.epsilon_per_query > terms.total_epsilon + 1e-9:
            raise BudgetExhausted(
                f"the privacy budget of agreement {agreement.agreement_id} is spent",
                agreement=agreement.agreement_id,
            )
        return Charge(
            agreement.agreement_id,
            agreement.version,
            terms.total_epsilon,
            terms.epsilon_per_query,
            spent,
            request_id,
        )

    def budgets(self) -> list[tuple[str, int, float, float]]:
        """Every budget charged so far: (agreement id, version, epsilon spent, epsilon in all)."""
        with self._engine.connect() as conn:
            rows = conn.execute(
                sa.select(
                    dp_budgets.c.agreement_id,
                    dp_budgets.c.version,
                    dp_budgets.c.spent_epsilon,
                    dp_budgets.c.total_epsilon,
                )
            ).all()
        return [(r[0], int(r[1]), float(r[2]), float(r[3])) for r in rows]
