"""Differential privacy where an agreement asks for it: OpenDP mechanisms and the budget ledger.

The unit of privacy is one record: each record falls in exactly one cell, so the cells of an answer
compose in parallel and the per-query epsilon is split evenly over the measures (sequential
composition). Counts get discrete Laplace noise (sensitivity 1); sums are clamped to the agreement's
declared bounds in SQL and get Laplace noise scaled to the larger bound. Averages, minima and maxima
have no mechanism here and are refused under a DP agreement.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import opendp.prelude as dp
import sqlalchemy as sa

from federation.agreement import Agreement, DpTerms
from federation.errors import BudgetExhausted, InvalidArgument
from federation.query import MeasureKind, Query
from keys import timefmt
from node.schema import dp_budgets, dp_ledger

dp.enable_features("contrib")
SUPPORTED = frozenset({MeasureKind.COUNT_RECORDS, MeasureKind.COUNT_RESIDENTS, MeasureKind.SUM})


@dataclass(frozen=True)
class Spend:
    epsilon: float
    budget_left: float

    def statement(self) -> dict[str, Any]:
        """What the signed result says about the noise it carries."""
        return {
            "mechanism": "opendp discrete_laplace (counts), laplace (bounded sums)",
            "unit": "record",
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


def noisy(
    value: float | int, kind: MeasureKind, field: str, terms: DpTerms, epsilon: float
) -> float | int:
    if kind is MeasureKind.SUM:
        lo, hi = terms.bounds[field]
        scale = max(abs(lo), abs(hi)) / epsilon
        m = dp.m.make_laplace(
            dp.atom_domain(T=float, nan=False), dp.absolute_distance(T=float), scale=scale
        )
        return round(float(m(float(value))), 6)
    counts = dp.m.make_laplace(
        dp.atom_domain(T=int), dp.absolute_distance(T=int), scale=1.0 / epsilon
    )
    return max(0, int(counts(int(value))))


class BudgetLedger:
    def __init__(self, engine: sa.Engine) -> None:
        self._engine = engine

    def charge(self, agreement: Agreement, request_id: str) -> Spend:
        """Spend the agreement's per-query epsilon for this answer, or refuse BUDGET_EXHAUSTED.

        The conditional UPDATE is the check: concurrent answers cannot overspend, on SQLite (one
        writer) or PostgreSQL (row lock)."""
        terms = agreement.dp
        assert terms is not None
        key = (
            dp_budgets.c.agreement_id == agreement.agreement_id,
            dp_budgets.c.version == agreement.version,
        )
        with self._engine.begin() as conn:
            if conn.execute(sa.select(dp_budgets.c.version).where(*key)).first() is None:
                try:
                    with conn.begin_nested():
                        conn.execute(
                            dp_budgets.insert().values(
                                agreement_id=agreement.agreement_id,
                                version=agreement.version,
                                total_epsilon=terms.total_epsilon,
                                spent_epsilon=0.0,
                            )
                        )
                except sa.exc.IntegrityError:
                    pass  # another answer created it first
            charged = conn.execute(
                dp_budgets.update()
                .where(
                    *key,
                    dp_budgets.c.spent_epsilon + terms.epsilon_per_query
                    <= dp_budgets.c.total_epsilon + 1e-9,
                )
                .values(spent_epsilon=dp_budgets.c.spent_epsilon + terms.epsilon_per_query)
            )
            if charged.rowcount != 1:
                raise BudgetExhausted(
                    f"the privacy budget of agreement {agreement.agreement_id} is spent",
                    agreement=agreement.agreement_id,
                )
            conn.execute(
                dp_ledger.insert().values(
                    request_id=request_id,
                    agreement_id=agreement.agreement_id,
                    version=agreement.version,
                    epsilon=terms.epsilon_per_query,
                    charged_at=timefmt.to_db(timefmt.now()),
                )
            )
            spent = conn.execute(sa.select(dp_budgets.c.spent_epsilon).where(*key)).scalar_one()
        return Spend(terms.epsilon_per_query, round(terms.total_epsilon - float(spent), 9))
