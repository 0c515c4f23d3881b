"""`citybroker demo`: a whole federation on this machine, from nothing, as separate processes.

Three fictional cities with synthetic residents, consents, a mobility dataset and agreements with one
partner; a broker; example queries, the last a burst beyond the partner's limit; every returned
signature verified.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import date
from pathlib import Path

from rich.console import Console
from rich.table import Table

from cli import demo_limits, demo_regimes, sandbox
from domain import agreement as agreement_doc
from domain.errors import ConfigError
from domain.query import Dimension, Measure, MeasureKind, Query
from edge.health import wait_serving
from edge.operator_client import OperatorClient, consent_record
from edge.partner_client import Answer, PartnerClient
from edge.rpc import ChannelCredentials, client_credentials
from infra import storage
from node import synthetic

PURPOSE = "urban-mobility-planning"
CONSENT_SHARE = 0.7


class Processes:
    """Child processes of the demo, stopped together (SIGTERM, then SIGKILL after a grace period)."""

    def __init__(self, logs: Path, prefixes: Mapping[str, Sequence[str]] | None = None) -> None:
        self.logs = logs
        self.children: list[tuple[str, subprocess.Popen[bytes]]] = []
        # A command a child runs under, by name (the fault tests: `ip netns exec NS`).
        self.prefixes = dict(prefixes or {})

    def start(self, name: str, *args: str) -> None:
        """Start `citybroker ARGS` as a child, its stdout and stderr appended to LOGS/NAME.log."""
        self.logs.mkdir(parents=True, exist_ok=True)
        out = (self.logs / f"{name}.log").open("ab")
        proc = subprocess.Popen(
            [*self.prefixes.get(name, ()), sys.executable, "-m", "cli.main", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        self.children.append((name, proc))

    def check(self) -> None:
        """ConfigError, with its exit status and log tail, if any child has exited."""
        for name, proc in self.children:
            if proc.poll() is not None:
                tail = (self.logs / f"{name}.log").read_text(errors="replace")[-2000:]
                raise ConfigError(f"{name} exited with status {proc.returncode}:\n{tail}")

    def stop(self, grace_s: float = 10.0) -> None:
        """Stop in reverse start order: the broker finishes (and witnesses) before the nodes go."""
        for _, proc in reversed(self.children):
            if proc.poll() is None:
                proc.terminate()
            try:
                proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def wait_healthy(address: str, creds: ChannelCredentials, procs: Processes) -> None:
    """Wait until the process at `address` serves; fail at once if any demo process has died."""
    wait_serving(address, creds, procs.check)


def _load_city_data(
    fed: sandbox.LocalFederation, residents_per_city: int
) -> dict[str, list[synthetic.Resident]]:
    """Each city's datasets go into its DuckDB data file, before its node opens it read-only."""
    people = {}
    for i, (city, layout) in enumerate(fed.cities.items()):
        engine = storage.create_engine(f"duckdb:///{layout.data}")
        people[city] = synthetic.residents(city, layout.plan.districts, residents_per_city, seed=i)
        synthetic.load_traffic(
            engine, synthetic.traffic_rows(layout.plan.districts, 2, date(2026, 8, 1), 92, i)
        )
        synthetic.load_residents(engine, people[city])
        synthetic.load_trips(
            engine,
            synthetic.trip_rows(
                people[city], trips_each=4, start=date(2026, 8, 1), days=92, seed=i
            ),
        )
        engine.dispose()
    return people


@contextmanager
def running_federation(
    fed: sandbox.LocalFederation,
    residents_per_city: int,
    console: Console,
    prefixes: Mapping[str, Sequence[str]] | None = None,
) -> Iterator[tuple[Processes, dict[str, OperatorClient], dict[str, list[synthetic.Resident]]]]:
    """Load the cities' data, start nodes and broker, load agreements and consents; stop on exit.
    `prefixes`: a command each process (node-CITY, broker) runs under, if any.

    Yields the processes, an operator client per city, and the residents who consented per city.
    """
    with console.status("creating synthetic city data"):
        people = _load_city_data(fed, residents_per_city)
    procs = Processes(fed.root / "logs", prefixes)
    operators: dict[str, OperatorClient] = {}
    consenting: dict[str, list[synthetic.Resident]] = {}
    try:
        with console.status("starting three nodes and a broker"):
            for city, layout in fed.cities.items():
                procs.start(f"node-{city}", "node", "serve", "--config", str(layout.config))
            procs.start("broker", "broker", "serve", "--config", str(fed.broker_config))
            ca = fed.ca_cert.read_bytes()
            for layout in fed.cities.values():
                creds = client_credentials(
                    ca, layout.operator_cert.read_bytes(), layout.operator_key.read_bytes()
                )
                wait_healthy(layout.address, creds, procs)
            wait_healthy(fed.broker_address, client_credentials(ca), procs)
        with console.status("loading agreements and residents' consents through the nodes' APIs"):
            for city, layout in fed.cities.items():
                op = OperatorClient(
                    layout.address, fed.ca_cert, layout.operator_cert, layout.operator_key
                )
                operators[city] = op
                signed = agreement_doc.sign(fed.agreement(city), layout.signer, fed.partner_signer)
                op.activate_agreement(signed)
                rng = random.Random(f"consent:{city}")
                consenting[city] = [r for r in people[city] if rng.random() < CONSENT_SHARE]
                op.give_consents(
                    [
                        consent_record(
                            f"{r.resident_id}-c1",
                            r.resident_id,
                            PURPOSE,
                            fed.partner_id,
                            "mobility",
                        )
                        for r in consenting[city]
                    ]
                )
        yield procs, operators, consenting
    finally:
        for op in operators.values():
            op.close()
        procs.stop()


def _answer_table(title: str, answer: Answer, dims: list[str], measures: list[str]) -> Table:
    t = Table(title=title)
    for d in dims:
        t.add_column(d)
    for m in measures:
        t.add_column(m, justify="right")
    t.add_column("cities")
    for c in answer.cells:
        values = [
            "withheld" if c.withheld else f"{c.values[m]:,.1f}".removesuffix(".0") for m in measures
        ]
        cities = ", ".join(c.contributing)
        if c.withholding:
            cities += f" (withheld by {', '.join(c.withholding)})"
        t.add_row(*(c.key.get(d, "") for d in dims), *values, cities)
    return t


def _outcomes_table(title: str, answer: Answer) -> Table:
    t = Table(title=title)
    for col in ("city", "status", "code", "reason", "message"):
        t.add_column(col)
    for c in answer.cities:
        t.add_row(c.city, c.status, c.code, c.reason, c.message)
    return t


def _withdrawal_example(
    client: PartnerClient,
    fed: sandbox.LocalFederation,
    operators: dict[str, OperatorClient],
    consenting: dict[str, list[synthetic.Resident]],
    console: Console,
) -> int:
    """Example 3: one city's trips by district, before and after residents withdraw consent.
    Returns how many signatures were verified."""
    city = next(iter(fed.cities))
    district = fed.cities[city].plan.districts[0]
    by_district = Query(
        "mobility",
        PURPOSE,
        (Measure(MeasureKind.COUNT_RECORDS), Measure(MeasureKind.COUNT_RESIDENTS)),
        group_by=(Dimension("district"),),
        cities=(city,),
    )
    before = client.query(by_district)
    # All but a handful withdraw, so the district falls under k and its cell is withheld.
    withdrawing = [r for r in consenting[city] if r.district == district][:-6]
    for r in withdrawing:
        operators[city].withdraw(f"{r.resident_id}-c1")
    after = client.query(by_district)
    dims, measures = ["district"], ["count_records", "count_residents"]
    console.print(_answer_table(f"3a. Trips by district in {city}, before", before, dims, measures))
    console.print(
        _answer_table(
            f"3b. ... after {len(withdrawing)} residents of {district} withdrew consent "
            "(one more district is withheld too, so the city total cannot reveal it)",
            after,
            dims,
            measures,
        )
    )
    return before.signatures_verified + after.signatures_verified


def _by_mode_example(client: PartnerClient, console: Console) -> int:
    """Example 1: trips by mode across the cities. Returns how many signatures were verified."""
    by_mode = Query(
        "mobility",
        PURPOSE,
        (
            Measure(MeasureKind.COUNT_RECORDS),
            Measure(MeasureKind.COUNT_RESIDENTS),
            Measure(MeasureKind.AVG, "distance_km"),
        ),
        group_by=(Dimension("mode"),),
    )
    answer = client.query(by_mode)
    console.print(
        _answer_table(
            "1. Trips by mode across three cities (purpose: urban-mobility-planning)",
            answer,
            ["mode"],
            ["count_records", "count_residents", "avg(distance_km)"],
        )
    )
    return answer.signatures_verified


def _marketing_example(client: PartnerClient, console: Console) -> int:
    """Example 2: the same question for a purpose no agreement allows, refused by every city.
    Returns how many signatures were verified."""
    marketing = Query(
        "mobility",
        "direct-marketing",
        (Measure(MeasureKind.COUNT_RECORDS),),
        group_by=(Dimension("mode"),),
    )
    answer = client.query(marketing)
    console.print(
        _outcomes_table("2. The same question for direct marketing: refused by every city", answer)
    )
    return answer.signatures_verified


def _traffic_example(client: PartnerClient, console: Console) -> int:
    """Example 4: traffic-camera counts by month across the cities. Returns how many signatures
    were verified."""
    # Observational data from public space: no residents, so no consent filter; the
    # agreement and minimisation still apply (k counts camera-hours).
    traffic = Query(
        "traffic",
        PURPOSE,
        (Measure(MeasureKind.SUM, "vehicles"), Measure(MeasureKind.SUM, "cyclists")),
        group_by=(Dimension("observed_on", "month"),),
    )
    answer = client.query(traffic)
    console.print(
        _answer_table(
            "4. Traffic-camera counts by month across three cities (sensor data)",
            answer,
            ["observed_on"],
            ["sum(vehicles)", "sum(cyclists)"],
        )
    )
    return answer.signatures_verified


def run_examples(
    fed: sandbox.LocalFederation,
    operators: dict[str, OperatorClient],
    consenting: dict[str, list[synthetic.Resident]],
    console: Console,
) -> int:
    """The example exchanges, as the partner, printed in order. Returns how many signatures
    were verified."""
    client = PartnerClient.connect(
        fed.broker_address,
        fed.broker_id,
        fed.partner_id,
        fed.partner_signer,
        fed.ca_cert,
        fed.trust_bundle,
        fed.authority_key,
    )
    demo_regimes.use_cell_key(fed, operators)
    with client:
        verified = _by_mode_example(client, console)
        verified += _marketing_example(client, console)
        verified += _withdrawal_example(client, fed, operators, consenting, console)
        verified += _traffic_example(client, console)
        verified += demo_limits.burst_example(client, console)
        verified += demo_regimes.differencing_example(client, fed, console)
    console.print(
        f"[bold green]Verified {verified} signatures[/] in the returned bundles "
        "(broker queries, city results, broker receipts)."
    )
    return verified


def run(directory: Path | None, serve: bool, residents_per_city: int, console: Console) -> int:
    """Create a federation in `directory` (a new temporary one if None), run the examples and, with
    `serve`, keep it running until Ctrl-C; every process is stopped on return. Returns 0;
    ConfigError if `directory` is not empty or a process dies."""
    root = directory or Path(tempfile.mkdtemp(prefix="citybroker-demo-"))
    if root.exists() and any(root.iterdir()):
        raise ConfigError(f"{root} is not empty; the demo needs a fresh directory")
    with console.status("creating the federation: authority, CA, keys, trust bundle"):
        fed = sandbox.create(root)
        demo_limits.limit_partner(fed)
    console.print(f"Federation created in [bold]{root}[/]")
    with running_federation(fed, residents_per_city, console) as (procs, operators, consenting):
        run_examples(fed, operators, consenting, console)
        if serve:
            info = root / "demo.json"
            info.write_text(json.dumps(fed.demo_json(), indent=2) + "\n")
            console.print(
                f"Federation running; connection details in [bold]{info}[/]. Ctrl-C stops it."
            )
            try:
                while True:
                    procs.check()
                    time.sleep(1)
            except KeyboardInterrupt:
                console.print("stopping")
    console.print("All processes stopped.")
    return 0
