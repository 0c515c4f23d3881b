"""Which state metrics each kind of server serves on its metrics_listen address (infra.metrics)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime

import sqlalchemy as sa

from audit.schema import log_checkpoints, log_entries
from broker.witnessing import WitnessCollector
from infra import metrics
from infra.metrics import MetricsEndpoint, Reader
from node import consent_counts
from node.privacy import BudgetLedger


def _log_readers(engine: sa.Engine, origin: str) -> tuple[Reader, Reader]:
    """Readers of a Merkle log's size and its latest checkpoint's age, straight from its tables."""

    def size() -> Iterable[tuple[tuple[str, ...], float]]:
        with engine.connect() as conn:
            last = conn.execute(sa.select(sa.func.max(log_entries.c.idx))).scalar()
        return [((origin,), 0.0 if last is None else float(last) + 1)]

    def checkpoint_age() -> Iterable[tuple[tuple[str, ...], float]]:
        with engine.connect() as conn:
            at = conn.execute(
                sa.select(log_checkpoints.c.created_at)
                .order_by(log_checkpoints.c.tree_size.desc())
                .limit(1)
            ).scalar()
        if at is None:
            return []
        at = at if at.tzinfo is not None else at.replace(tzinfo=UTC)  # SQLite keeps no zone
        return [((origin,), max(0.0, (datetime.now(UTC) - at).total_seconds()))]

    return size, checkpoint_age


def _with_log(address: str, engine: sa.Engine, origin: str) -> MetricsEndpoint:
    size, age = _log_readers(engine, origin)
    return (
        MetricsEndpoint(address)
        .watch(metrics.LOG_ENTRIES, size)
        .watch(metrics.LOG_CHECKPOINT_AGE, age)
    )


def node_metrics(address: str, engine: sa.Engine, origin: str) -> MetricsEndpoint | None:
    """A node's endpoint: its log, the privacy budget spent under each DP agreement, and the
    consent events its database counted (whichever process recorded them); None when `address`
    is "" (metrics off)."""
    if not address:
        return None
    ledger = BudgetLedger(engine)

    def spent() -> list[tuple[tuple[str, ...], float]]:
        return metrics.labelled((a, v, s) for a, v, s, _ in ledger.budgets())

    def total() -> list[tuple[tuple[str, ...], float]]:
        return metrics.labelled((a, v, t) for a, v, _, t in ledger.budgets())

    def consent_events() -> list[tuple[tuple[str, ...], float]]:
        return metrics.labelled(consent_counts.read(engine))

    return (
        _with_log(address, engine, origin)
        .watch(metrics.DP_BUDGET_SPENT, spent)
        .watch(metrics.DP_BUDGET_TOTAL, total)
        .watch(metrics.CONSENT_EVENTS, consent_events)
    )


def broker_metrics(
    address: str, engine: sa.Engine, origin: str, witnessing: WitnessCollector
) -> MetricsEndpoint | None:
    """A broker's endpoint: its log, and how far each city's cosignatures lag behind it; None
    when `address` is "" (metrics off)."""
    if not address:
        return None

    def lag() -> list[tuple[tuple[str, ...], float]]:
        return [((origin, city), float(n)) for city, n in witnessing.lag().items()]

    return _with_log(address, engine, origin).watch(metrics.WITNESSING_LAG, lag)
