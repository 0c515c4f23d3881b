"""The demo's rate-limited partner: a small per-partner limit in the broker's config, and a burst of
queries beyond it, refused with RATE_LIMITED and the delay after which the partner may try again."""

from __future__ import annotations

import tomllib
from concurrent.futures import ThreadPoolExecutor

from rich.console import Console
from rich.table import Table

from cli import sandbox
from domain.errors import CallFailed
from domain.query import Measure, MeasureKind, Query
from edge.partner_client import Answer, PartnerClient
from edge.status import RETRY_AFTER_KEY

# The partner may have this many queries at the broker at once; the examples ask one at a time.
DEMO_MAX_CONCURRENT = 3
BURST = 10


def limit_partner(fed: sandbox.LocalFederation) -> None:
    """Give the demo's partner a small concurrency limit in broker.toml (before the broker starts)."""
    config = tomllib.loads(fed.broker_config.read_text())
    limits = {"partners": {fed.partner_id: {"max_concurrent": DEMO_MAX_CONCURRENT}}}
    sandbox.write_toml(fed.broker_config, {**config, "limits": limits})


def burst_example(client: PartnerClient, console: Console) -> int:
    """Example 5: BURST queries at once from a partner allowed DEMO_MAX_CONCURRENT; prints each
    outcome. Returns how many signatures were verified."""
    query = Query("traffic", "urban-mobility-planning", (Measure(MeasureKind.SUM, "vehicles"),))

    def ask(_: int) -> Answer | CallFailed:
        try:
            return client.query(query)
        except CallFailed as e:
            return e

    with ThreadPoolExecutor(max_workers=BURST) as pool:
        outcomes = list(pool.map(ask, range(BURST)))
    t = Table(
        title=f"5. {BURST} queries at once from a partner the broker allows "
        f"{DEMO_MAX_CONCURRENT} at a time"
    )
    for col in ("#", "outcome", "code", "reason", "retry after"):
        t.add_column(col)
    for i, o in enumerate(outcomes, 1):
        if isinstance(o, Answer):
            t.add_row(str(i), "answered", "", "", "")
        else:
            retry = o.error.metadata.get(RETRY_AFTER_KEY, "")
            t.add_row(str(i), "refused", o.error.code, o.error.reason, retry and f"{retry} s")
    console.print(t)
    return sum(o.signatures_verified for o in outcomes if isinstance(o, Answer))
