"""Real audit bundles for tests: a small federation answers, refuses and loses a consent, the cities
cosign the broker's checkpoints, and every node and the broker are exported with the CLI
(`citybroker audit export`, run in-process), exactly as an operator would hand them to an auditor.

Not a test module: tests/integration/test_audit_export.py and tests/property/ import it.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, replace
from pathlib import Path

from typer.testing import CliRunner

from cli.main import app
from cli.sandbox import LocalFederation
from domain.query import Dimension, Measure, MeasureKind, Query
from keys.ed25519 import PublicKey
from keys.trust import load_authority_key
from tests.conftest import PURPOSE, start_federation, stop_federation

# Small on purpose: each verification of the whole set takes milliseconds.
RESIDENTS_PER_CITY = 40
BY_MODE = Query("mobility", PURPOSE, (Measure(MeasureKind.COUNT_RECORDS),), (Dimension("mode"),))
REFUSED = Query(
    "mobility", "direct-marketing", (Measure(MeasureKind.COUNT_RECORDS),), (Dimension("mode"),)
)
WITHDRAWING_CITY = "aurora"


@dataclass(frozen=True)
class Bundles:
    fed: LocalFederation
    authority: PublicKey
    nodes: dict[str, Path]
    broker: Path
    # WITHDRAWING_CITY's log exported before any query: a true but older view of the same log.
    early: Path
    consents_given: dict[str, int]
    answered_queries: int
    refused_queries: int
    cosigned_in_last_round: int

    @property
    def all(self) -> list[Path]:
        return [*self.nodes.values(), self.broker]

    def copy_to(self, dest: Path) -> Bundles:
        """The same bundles copied under `dest`, to tamper with."""
        dest.mkdir(parents=True, exist_ok=True)

        def cp(p: Path) -> Path:
            target = dest / p.name
            shutil.copytree(p, target)
            return target

        return replace(
            self,
            nodes={c: cp(p) for c, p in self.nodes.items()},
            broker=cp(self.broker),
            early=cp(self.early),
        )


def cli_export(config: Path, out: Path) -> None:
    result = CliRunner().invoke(
        app, ["audit", "export", "--config", str(config), "--out", str(out)]
    )
    assert result.exit_code == 0, (result.output, result.exception)


def build(root: Path) -> Bundles:
    rf = start_federation(root / "federation", residents_per_city=RESIDENTS_PER_CITY)
    out = root / "bundles"
    out.mkdir()
    try:
        fed = rf.fed
        early = out / f"{WITHDRAWING_CITY}-early"
        cli_export(fed.cities[WITHDRAWING_CITY].config, early)
        with rf.partner() as client:
            first = client.query(BY_MODE)
            refused = client.query(REFUSED)
        assert [c.status for c in first.cities] == ["answered"] * 3
        assert [c.status for c in refused.cities] == ["refused"] * 3
        leaving = rf.consenting[WITHDRAWING_CITY][0]
        rf.operators[WITHDRAWING_CITY].withdraw(f"{leaving.resident_id}-c1")
        with rf.partner() as client:
            again = client.query(BY_MODE)
        assert [c.status for c in again.cities] == ["answered"] * 3
        cosigned = rf.broker.witnessing.collect_once()
        nodes = {}
        for city, layout in fed.cities.items():
            nodes[city] = out / city
            cli_export(layout.config, nodes[city])
        broker = out / fed.broker_id
        cli_export(fed.broker_config, broker)
    finally:
        stop_federation(rf)
    return Bundles(
        fed=fed,
        authority=load_authority_key(fed.authority_key),
        nodes=nodes,
        broker=broker,
        early=early,
        consents_given={c: len(people) for c, people in rf.consenting.items()},
        answered_queries=2,
        refused_queries=1,
        cosigned_in_last_round=cosigned,
    )


def read_lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)
