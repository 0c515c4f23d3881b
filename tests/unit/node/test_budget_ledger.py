"""The differential-privacy budget ledger: quoted while answering, booked in the transaction that
releases the answer, never overspent, never booked for an answer that was not released."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
import sqlalchemy as sa

from domain.agreement import Agreement, DpTerms
from domain.errors import BudgetExhausted, Conflict
from infra import storage
from keys import timefmt
from node.privacy import BudgetLedger
from node.schema import dp_budgets, dp_ledger


def agreement(per_query: float = 0.5, total: float = 1.0) -> Agreement:
    now = timefmt.now()
    return Agreement(
        agreement_id="aurora--northwind-mobility",
        version=1,
        provider="aurora",
        consumer="northwind-mobility",
        purposes=frozenset({"urban-mobility-planning"}),
        datasets={},
        min_cell_size=10,
        valid_from=now,
        valid_until=now + timedelta(days=1),
        retention_days=0,
        dp=DpTerms(per_query, total, {}),
    )


@pytest.fixture
def engine(node_database_url: str) -> Iterator[sa.Engine]:
    e = storage.create_engine(node_database_url)
    storage.upgrade(e)
    yield e
    e.dispose()


def spent(engine: sa.Engine) -> tuple[float | None, int]:
    with engine.connect() as conn:
        total = conn.execute(sa.select(dp_budgets.c.spent_epsilon)).scalar()
        rows = conn.execute(sa.select(sa.func.count()).select_from(dp_ledger)).scalar_one()
    return total, rows


def test_a_quote_books_nothing_until_written_and_committed(engine: sa.Engine) -> None:
    ledger = BudgetLedger(engine)
    charge = ledger.quote(agreement(), "q1")
    assert (charge.spend().epsilon, charge.spend().budget_left) == (0.5, 0.5)
    assert spent(engine) == (None, 0)
    # The release's transaction fails after booking: nothing is spent.
    with pytest.raises(RuntimeError), engine.begin() as conn:
        charge.write(conn)
        raise RuntimeError("the log commit failed")
    assert spent(engine) == (None, 0)
    with engine.begin() as conn:
        charge.write(conn)
    assert spent(engine) == (0.5, 1)


def test_a_stale_quote_is_a_conflict_not_an_overspend(engine: sa.Engine) -> None:
    ledger = BudgetLedger(engine)
    first, second = ledger.quote(agreement(), "q1"), ledger.quote(agreement(), "q2")
    with engine.begin() as conn:
        first.write(conn)
    with pytest.raises(Conflict) as info, engine.begin() as conn:
        second.write(conn)
    assert info.value.reason == "BUDGET_CHANGED"
    assert spent(engine) == (0.5, 1)
    again = ledger.quote(agreement(), "q2")
    assert again.spend().budget_left == 0.0
    with engine.begin() as conn:
        again.write(conn)
    with pytest.raises(BudgetExhausted):
        ledger.quote(agreement(), "q3")
    assert spent(engine) == (1.0, 2)
