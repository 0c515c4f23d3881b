"""Federated query throughput and latency, against bare gRPC fan-out measured in the same run.

    make bench                       # or: .venv/bin/python bench/federated_query.py
    .venv/bin/python bench/federated_query.py --quick            # a smoke run of about a minute
    .venv/bin/python bench/federated_query.py --concurrency 1,8,32 --duration 3

What runs: a sandbox federation in a temp dir (three cities with synthetic residents, consents and
agreements loaded through the nodes' operator APIs), then three `citybroker node serve` processes and
one `citybroker broker serve` on this machine. One load-generator process (this one, grpc.aio) keeps N
partner queries in flight (N = concurrency) for a fixed window per level; each query is a small
aggregate (count of records and of distinct residents by mode, across all three cities) carrying a
fresh single-use partner token, minted before the window. Then the same configs, addresses and TLS
serve the no-op topology (bench/noop_servers.py: the same fan-out, handlers that do no work) and the
same load runs again: that is the baseline.

Output: a table per concurrency, bench/results/<name>.json (the shared figure format, see
bench/common.py) and bench/results/<name>.png (throughput and latency against concurrency).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from common import (
    RESULTS_DIR,
    Children,
    Figure,
    environment,
    figures_table,
    fmt_number,
    machine_busy_cpu_s,
    process_cpu_s,
    status_kb,
    terminate_on_sigterm,
    write_figures,
)
from rich.console import Console
from rich.table import Table

from citybroker.broker.v1 import broker_pb2
from cli import demo, sandbox
from domain.authorisation import grant_for
from domain.query import Dimension, Measure, MeasureKind, Query
from edge.partner_client import PartnerClient
from edge.rpc import CHANNEL_OPTIONS, client_credentials
from edge.wire import query_to_pb
from keys import tokens
from keys.tokens import Call

NAME = "federated_query"
METHOD = "/citybroker.broker.v1.BrokerService/Query"
QUERY = Query(
    "mobility",
    demo.PURPOSE,
    (Measure(MeasureKind.COUNT_RECORDS), Measure(MeasureKind.COUNT_RESIDENTS)),
    group_by=(Dimension("mode"),),
)
# Every timed call asks QUERY, so every token authorises exactly that (domain.authorisation).
QUERY_GRANT = grant_for(Call.QUERY, QUERY)
QUERY_TEXT = "count_records, count_residents by mode; mobility; all three cities"
NOOP_SERVERS = Path(__file__).resolve().with_name("noop_servers.py")
CALL_TIMEOUT_S = 30.0
TOKEN_LIFETIME_S = 120
GOAL_RATIO = 0.35
# The idle node memory goal (issue 14): a node with the demo city, loaded, before any query.
IDLE_RSS_GOAL_MB = 150.0
# Cores busy with other processes (another test run, a build) above which a window is flagged.
OTHER_LOAD_WARN = 0.2
REAL, NOOP = "real", "noop_fanout"


# -- load generation ----------------------------------------------------------------------------


class TokenPool:
    """Single-use partner tokens minted ahead of a timed window, as ready-made call metadata.

    If the pool runs dry inside a window the generator mints on the spot and counts it (`short`),
    so a too-small estimate shows in the results instead of silently slowing the generator.
    """

    def __init__(self, fed: sandbox.LocalFederation) -> None:
        self._signer, self._partner, self._audience = (
            fed.partner_signer,
            fed.partner_id,
            fed.broker_id,
        )
        self._ready: list[tuple[tuple[str, str], ...]] = []
        self.short = 0
        self.mint_s_per_token = 0.0

    def _mint(self) -> tuple[tuple[str, str], ...]:
        token = tokens.issue(
            self._signer, self._partner, self._audience, QUERY_GRANT, TOKEN_LIFETIME_S
        )
        return (("authorization", f"Bearer {token}"),)

    def fill(self, n: int) -> None:
        started = time.perf_counter()
        self._ready = [self._mint() for _ in range(n)]
        self.short = 0
        if n:
            self.mint_s_per_token = (time.perf_counter() - started) / n

    def take(self) -> tuple[tuple[str, str], ...]:
        if self._ready:
            return self._ready.pop()
        self.short += 1
        return self._mint()


@dataclass
class Level:
    """One timed window at one concurrency."""

    topology: str
    concurrency: int
    duration_s: float
    completed: int
    errors: int
    latencies_ms: list[float] = field(repr=False)
    cpu_s: dict[str, float] = field(default_factory=dict)
    tokens_short: int = 0
    first_error: str = ""

    @property
    def throughput(self) -> float:
        return self.completed / self.duration_s

    def percentile(self, q: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        if len(self.latencies_ms) == 1:
            return self.latencies_ms[0]
        return statistics.quantiles(self.latencies_ms, n=1000, method="inclusive")[
            round(q * 1000) - 1
        ]

    @property
    def p50(self) -> float:
        return self.percentile(0.50)

    @property
    def p99(self) -> float:
        return self.percentile(0.99)

    def cpu_ms_per_query(self, role: str) -> float:
        return 1000 * self.cpu_s.get(role, 0.0) / self.completed if self.completed else 0.0

    @property
    def cpu_ms_per_query_total(self) -> float:
        return sum(self.cpu_ms_per_query(role) for role in ("broker", "nodes", "generator"))

    @property
    def other_load(self) -> float:
        """Cores busy with anything but this benchmark's processes during the window."""
        ours = sum(v for role, v in self.cpu_s.items() if role != "machine")
        return max(0.0, self.cpu_s.get("machine", 0.0) - ours) / self.duration_s


class Load:
    """Keeps `concurrency` calls in flight on one grpc.aio channel. Signatures are not verified
    (a sample is, outside the windows); with `cities` set, an answer counts only if that many
    cities answered (a broker answer whose cities timed out or failed is counted as an error)."""

    def __init__(self, address: str, ca_cert: bytes, request: bytes, pool: TokenPool) -> None:
        self._address, self._ca, self._request, self._pool = address, ca_cert, request, pool
        self.cities = 0

    @contextmanager
    def _loop(self) -> Iterator[asyncio.AbstractEventLoop]:
        loop = asyncio.new_event_loop()
        try:
            yield loop
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    def run(
        self,
        topology: str,
        concurrency: int,
        warmup_s: float,
        duration_s: float,
        pids: dict[str, list[int]],
    ) -> Level:
        with self._loop() as loop:
            return loop.run_until_complete(
                self._run(topology, concurrency, warmup_s, duration_s, pids)
            )

    async def _run(
        self,
        topology: str,
        concurrency: int,
        warmup_s: float,
        duration_s: float,
        pids: dict[str, list[int]],
    ) -> Level:
        creds = client_credentials(self._ca)
        async with grpc.aio.secure_channel(self._address, creds, options=CHANNEL_OPTIONS) as ch:
            # No serializers: the request goes as pre-serialised bytes, the reply stays bytes.
            call = ch.unary_unary(METHOD)
            await ch.channel_ready()
            started = time.perf_counter()
            window = (started + warmup_s, started + warmup_s + duration_s)
            ends: list[float] = []
            latencies: list[float] = []
            errors: list[str] = []
            pool, request, cities = self._pool, self._request, self.cities

            async def worker() -> None:
                while True:
                    t0 = time.perf_counter()
                    if t0 >= window[1]:
                        return
                    metadata = pool.take()
                    try:
                        raw = await call(request, metadata=metadata, timeout=CALL_TIMEOUT_S)
                    except grpc.aio.AioRpcError as e:
                        errors.append(f"{e.code().name}: {e.details()}")
                        continue
                    t1 = time.perf_counter()
                    if cities and (missing := unanswered(raw, cities)):
                        errors.append(f"cities did not answer: {missing}")
                        continue
                    ends.append(t1)
                    latencies.append(t1 - t0)

            async def cpu_meter() -> tuple[dict[str, float], dict[str, float]]:
                await asyncio.sleep(max(0.0, window[0] - time.perf_counter()))
                before = cpu_snapshot(pids)
                await asyncio.sleep(max(0.0, window[1] - time.perf_counter()))
                return before, cpu_snapshot(pids)

            meter = asyncio.ensure_future(cpu_meter())
            await asyncio.gather(*(worker() for _ in range(concurrency)))
            before, after = await meter
        in_window = [
            lat * 1000
            for end, lat in zip(ends, latencies, strict=True)
            if window[0] <= end <= window[1]
        ]
        return Level(
            topology,
            concurrency,
            duration_s,
            len(in_window),
            len(errors),
            in_window,
            {role: after[role] - before[role] for role in after},
            pool.short,
            errors[0] if errors else "",
        )


def unanswered(raw: bytes, cities: int) -> str:
    """'' if `cities` cities answered, else their statuses (cheap: no signature is checked)."""
    response = broker_pb2.QueryResponse.FromString(raw)
    answered = [c for c in response.cities if c.status == broker_pb2.CITY_STATUS_ANSWERED]
    if len(answered) == cities:
        return ""
    return (
        ", ".join(f"{c.city_id} {broker_pb2.CityStatus.Name(c.status)}" for c in response.cities)
        or "no city outcomes"
    )


def wait_idle(pids: dict[str, list[int]], timeout_s: float = 60.0, cores: float = 0.15) -> float:
    """Wait until the servers use less than `cores` (work left over from a window whose calls
    timed out would otherwise run into the next window). Returns the seconds waited."""
    started = time.monotonic()
    servers = [p for role, ps in pids.items() if role != "generator" for p in ps]
    before = sum(process_cpu_s(p) for p in servers)
    while time.monotonic() - started < timeout_s:
        time.sleep(0.5)
        now = sum(process_cpu_s(p) for p in servers)
        if (now - before) / 0.5 < cores:
            break
        before = now
    return time.monotonic() - started


def cpu_snapshot(pids: dict[str, list[int]]) -> dict[str, float]:
    snap = {role: sum(process_cpu_s(p) for p in ps) for role, ps in pids.items()}
    snap["machine"] = machine_busy_cpu_s()
    return snap


def token_estimate(rate: float, warmup_s: float, duration_s: float, concurrency: int) -> int:
    return int(rate * 1.5 * (warmup_s + duration_s)) + 4 * concurrency + 64


def measure(
    topology: str,
    load: Load,
    pool: TokenPool,
    levels: list[int],
    warmup_s: float,
    duration_s: float,
    pids: dict[str, list[int]],
    console: Console,
) -> list[Level]:
    """A warm-up at moderate concurrency (also the rate estimate that sizes token pools), then
    each level: tokens minted, a warm-up, the timed window."""
    probe_c = min(16, max(levels))
    pool.fill(0)
    with console.status(f"{topology}: warming up at concurrency {probe_c}"):
        probe = load.run(topology, probe_c, 0.5, max(1.0, warmup_s), pids)
        wait_idle(pids)
    if probe.errors:
        console.print(
            f"  [yellow]{topology}: {probe.errors} errors while warming up, e.g. "
            f"{probe.first_error[:100]}[/]"
        )
    peak = max(probe.throughput, 1.0)
    out = []
    for c in levels:
        # Twice the best rate so far: minting is cheap next to a window, running dry is not.
        n = token_estimate(2 * peak, warmup_s, duration_s, c)
        with console.status(f"{topology}: minting {n} tokens, then concurrency {c}"):
            pool.fill(n)
            level = load.run(topology, c, warmup_s, duration_s, pids)
        with console.status(f"{topology}: waiting for the servers to finish left-over work"):
            wait_idle(pids)
        peak = max(peak, level.throughput)
        out.append(level)
        note = (
            f" [red]{level.errors} errors, e.g. {level.first_error[:80]}[/]" if level.errors else ""
        )
        if level.tokens_short:
            note += f" [yellow]{level.tokens_short} tokens minted inside the window[/]"
        if level.other_load > OTHER_LOAD_WARN:
            note += f" [yellow]other load {level.other_load:.2f} cores[/]"
        console.print(
            f"  {topology:<11} c={c:<3} {level.throughput:8.1f} q/s   p50 {level.p50:7.1f} ms"
            f"   p99 {level.p99:7.1f} ms{note}"
        )
    return out


# -- the two topologies ---------------------------------------------------------------------------


def verify_sample(fed: sandbox.LocalFederation, load_request: bytes, n: int = 3) -> int:
    """Send `n` queries exactly as the generator does and verify every answer with the partner
    client (every signature, every link). Returns the signatures verified."""
    client = PartnerClient.connect(
        fed.broker_address,
        fed.broker_id,
        fed.partner_id,
        fed.partner_signer,
        fed.ca_cert,
        fed.trust_bundle,
        fed.authority_key,
    )
    pool = TokenPool(fed)
    verified = 0
    with (
        client,
        grpc.secure_channel(
            fed.broker_address,
            client_credentials(fed.ca_cert.read_bytes()),
            options=CHANNEL_OPTIONS,
        ) as channel,
    ):
        call = channel.unary_unary(METHOD)
        for _ in range(n):
            raw = call(load_request, metadata=pool.take(), timeout=CALL_TIMEOUT_S)
            answer = client.verify(QUERY, broker_pb2.QueryResponse.FromString(raw))
            statuses = [c.status for c in answer.cities]
            if statuses != ["answered"] * len(fed.cities) or not answer.cells:
                raise RuntimeError(f"the federation did not answer fully: {statuses}")
            verified += answer.signatures_verified
    return verified


def idle_rss_mb(pids: dict[str, list[int]]) -> float:
    """The largest node process's resident memory once the federation has settled."""
    wait_idle(pids)
    return max(status_kb(pid, "VmRSS") for pid in pids["nodes"]) / 1024


def city_pids(children: list[tuple[str, Any]]) -> dict[str, list[int]]:
    return {
        "broker": [p.pid for n, p in children if n == "broker"],
        "nodes": [p.pid for n, p in children if n.startswith("node-")],
        "generator": [os.getpid()],
    }


@contextmanager
def real_topology(
    fed: sandbox.LocalFederation, residents: int, console: Console
) -> Iterator[dict[str, list[int]]]:
    """The real nodes and broker, with data, agreements and consents loaded; stopped on exit."""
    with demo.running_federation(fed, residents, console) as (procs, _operators, _consenting):
        yield city_pids(procs.children)
        procs.check()


@contextmanager
def noop_topology(fed: sandbox.LocalFederation) -> Iterator[dict[str, list[int]]]:
    """The no-op nodes and broker on the same addresses, configs and TLS; stopped on exit."""
    with Children(fed.root / "logs-noop") as children:
        for city, layout in fed.cities.items():
            children.start(
                f"node-{city}",
                [sys.executable, str(NOOP_SERVERS), "node", "--config", str(layout.config)],
            )
        children.start(
            "broker",
            [sys.executable, str(NOOP_SERVERS), "broker", "--config", str(fed.broker_config)],
        )
        ca = fed.ca_cert.read_bytes()
        for layout in fed.cities.values():
            creds = client_credentials(
                ca, layout.operator_cert.read_bytes(), layout.operator_key.read_bytes()
            )
            demo.wait_healthy(layout.address, creds, children)
        demo.wait_healthy(fed.broker_address, client_credentials(ca), children)
        yield city_pids(children.procs)
        children.check()


# -- reporting -----------------------------------------------------------------------------------


ROLES = ("broker", "nodes", "generator")


def levels_table(real: list[Level], noop: list[Level]) -> Table:
    t = Table(title="Federated query: real topology against bare gRPC fan-out (same run)")
    for col in (
        "concurrency",
        "real q/s",
        "no-op q/s",
        "ratio",
        "real p50 ms",
        "real p99 ms",
        "no-op p50 ms",
        "no-op p99 ms",
        "other load\nreal | no-op",
    ):
        t.add_column(col, justify="right")
    for r, n in zip(real, noop, strict=True):
        t.add_row(
            str(r.concurrency),
            fmt_number(r.throughput),
            fmt_number(n.throughput),
            fmt_number(r.throughput / n.throughput if n.throughput else None, 3),
            fmt_number(r.p50),
            fmt_number(r.p99),
            fmt_number(n.p50, 2),
            fmt_number(n.p99, 2),
            f"{r.other_load:.2f} | {n.other_load:.2f}",
        )
    t.caption = "other load: cores kept busy by processes outside the benchmark during the window"
    return t


def cpu_table(real: list[Level], noop: list[Level]) -> Table:
    t = Table(title="CPU per query, ms (user + system, all threads of each process)")
    t.add_column("concurrency", justify="right")
    for who in ("real", "no-op"):
        for role in (*ROLES, "total"):
            t.add_column(f"{who}\n{role}", justify="right")
    t.add_column("no-op total /\nreal total", justify="right")
    for r, n in zip(real, noop, strict=True):
        t.add_row(
            str(r.concurrency),
            *(f"{r.cpu_ms_per_query(role):.2f}" for role in ROLES),
            f"{r.cpu_ms_per_query_total:.2f}",
            *(f"{n.cpu_ms_per_query(role):.2f}" for role in ROLES),
            f"{n.cpu_ms_per_query_total:.2f}",
            fmt_number(cpu_ratio(r, n), 3),
        )
    t.caption = (
        "no-op total / real total is the throughput ratio a CPU-bound machine allows, and does "
        "not depend on what else ran"
    )
    return t


def cpu_ratio(real: Level, noop: Level) -> float | None:
    total = real.cpu_ms_per_query_total
    return noop.cpu_ms_per_query_total / total if total else None


def figures(real: list[Level], noop: list[Level], params: dict[str, Any]) -> list[Figure]:
    out: list[Figure] = []
    for r, n in zip(real, noop, strict=True):
        p = {
            **params,
            "concurrency": r.concurrency,
            "completed": r.completed,
            "baseline_completed": n.completed,
            "errors": r.errors,
            "baseline_errors": n.errors,
            "tokens_minted_in_window": r.tokens_short,
            "other_load_cores": round(r.other_load, 3),
            "baseline_other_load_cores": round(n.other_load, 3),
        }
        out.append(
            Figure(
                f"{NAME}.throughput.c{r.concurrency}",
                r.throughput,
                "queries/s",
                True,
                n.throughput,
                f"{NAME}.{NOOP}.throughput.c{n.concurrency}",
                p,
            )
        )
        for q, attr in (("p50", "p50"), ("p99", "p99")):
            out.append(
                Figure(
                    f"{NAME}.latency_{q}.c{r.concurrency}",
                    getattr(r, attr),
                    "ms",
                    False,
                    getattr(n, attr),
                    f"{NAME}.{NOOP}.latency_{q}.c{n.concurrency}",
                    p,
                )
            )
    best_r = max(real, key=lambda lv: lv.throughput)
    best_n = max(noop, key=lambda lv: lv.throughput)
    same_c = next(n for n in noop if n.concurrency == best_r.concurrency)
    ratio = best_r.throughput / best_n.throughput if best_n.throughput else 0.0
    p = {
        **params,
        "concurrency": best_r.concurrency,
        "baseline_concurrency": best_n.concurrency,
        "ratio_at_same_concurrency": best_r.throughput / same_c.throughput
        if same_c.throughput
        else None,
        "goal_ratio": GOAL_RATIO,
    }
    out.append(
        Figure(
            f"{NAME}.throughput.best",
            best_r.throughput,
            "queries/s",
            True,
            best_n.throughput,
            f"{NAME}.{NOOP}.throughput.best",
            p,
        )
    )
    out.append(
        Figure(
            f"{NAME}.throughput_ratio.best",
            ratio,
            "ratio",
            True,
            1.0,
            f"{NAME}.{NOOP}.throughput_ratio.best (the baseline against itself)",
            p,
        )
    )
    for role in (*ROLES, "total"):
        real_ms = (
            best_r.cpu_ms_per_query_total if role == "total" else best_r.cpu_ms_per_query(role)
        )
        noop_ms = (
            same_c.cpu_ms_per_query_total if role == "total" else same_c.cpu_ms_per_query(role)
        )
        what = "broker, nodes and load generator" if role == "total" else f"the {role}"
        out.append(
            Figure(
                f"{NAME}.cpu_per_query.{role}.c{best_r.concurrency}",
                real_ms,
                "ms",
                False,
                noop_ms,
                f"{NAME}.{NOOP}.cpu_per_query.{role}.c{same_c.concurrency}",
                {
                    **params,
                    "concurrency": best_r.concurrency,
                    "what": f"CPU time (user+system, all threads) of {what} per completed query",
                },
            )
        )
    # Throughput ratio a CPU-bound machine allows (no-op CPU per query / real CPU per query): what
    # the throughput ratio tends to when nothing else competes for the cores.
    out.append(
        Figure(
            f"{NAME}.cpu_ratio.c{best_r.concurrency}",
            cpu_ratio(best_r, same_c) or 0.0,
            "ratio",
            True,
            1.0,
            f"{NAME}.{NOOP}.cpu_ratio.c{same_c.concurrency} (the baseline against itself)",
            {
                **params,
                "concurrency": best_r.concurrency,
                "what": "no-op CPU per query / real CPU per query (broker + nodes + generator)",
                "goal_ratio": GOAL_RATIO,
            },
        )
    )
    return out


def plot(path: Path, real: list[Level], noop: list[Level], ratio: float) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cs = [lv.concurrency for lv in real]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.8))
    ax1.plot(cs, [lv.throughput for lv in noop], "o--", color="C0", label="baseline: no-op fan-out")
    ax1.plot(cs, [lv.throughput for lv in real], "o-", color="C1", label="real federated query")
    ax1.set_xscale("log", base=2)
    ax1.set_xticks(cs, [str(c) for c in cs])
    ax1.set_xlabel("concurrent partner queries")
    ax1.set_ylabel("queries / s")
    ax1.set_ylim(bottom=0)
    ax1.set_title(f"Throughput (best real / best baseline = {ratio:.2f})")
    ax1.grid(True, alpha=0.3)
    ax1.legend()
    for lv, style, color, who in ((noop, "--", "C0", "no-op"), (real, "-", "C1", "real")):
        ax2.plot(cs, [x.p50 for x in lv], "o" + style, color=color, label=f"{who} p50")
        ax2.plot(cs, [x.p99 for x in lv], "^" + style, color=color, alpha=0.6, label=f"{who} p99")
    ax2.set_xscale("log", base=2)
    ax2.set_yscale("log")
    ax2.set_xticks(cs, [str(c) for c in cs])
    ax2.set_xlabel("concurrent partner queries")
    ax2.set_ylabel("latency, ms")
    ax2.set_title("Latency")
    ax2.grid(True, alpha=0.3, which="both")
    ax2.legend()
    fig.suptitle("citybroker: three nodes and a broker as processes on this machine", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# -- main ----------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--concurrency",
        default="1,2,4,8,16,32,64",
        help="comma-separated levels of concurrent queries (default 1,2,4,8,16,32,64)",
    )
    p.add_argument("--duration", type=float, default=4.0, help="timed seconds per level")
    p.add_argument("--warmup", type=float, default=1.0, help="untimed seconds before each level")
    p.add_argument("--residents", type=int, default=300, help="synthetic residents per city")
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: concurrency 1,4,16, 1.5 s per level, 100 residents",
    )
    p.add_argument("--name", default=NAME, help="result file name under --results")
    p.add_argument("--results", type=Path, default=RESULTS_DIR, help="where results go")
    p.add_argument("--dir", type=Path, help="empty directory for the federation (default: temp)")
    p.add_argument("--keep", action="store_true", help="keep the federation directory")
    args = p.parse_args(argv)
    if args.quick:
        args.concurrency, args.duration, args.warmup, args.residents = "1,4,16", 1.5, 0.5, 100
    args.levels = sorted({int(c) for c in args.concurrency.split(",") if c.strip()})
    if not args.levels or min(args.levels) < 1:
        p.error("--concurrency needs positive integers")
    return args


def prepare(root: Path | None) -> tuple[sandbox.LocalFederation, Path, bool]:
    made = root is None
    root = root or Path(tempfile.mkdtemp(prefix="citybroker-bench-"))
    if not made and root.exists() and any(root.iterdir()):
        raise SystemExit(f"{root} is not empty; the benchmark needs a fresh directory")
    fed = sandbox.create(root)
    # Throughput is measured without per-partner limits: one partner keeps every level in flight.
    roomy = {"queries_per_minute": 1_000_000, "max_concurrent": 1000, "max_in_flight": 1000}
    for config in (fed.broker_config, *(c.config for c in fed.cities.values())):
        sandbox.write_toml(config, {**tomllib.loads(config.read_text()), "limits": roomy})
    return fed, root, made


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console(width=None if sys.stdout.isatty() else 160)
    terminate_on_sigterm()
    fed, root, made = prepare(args.dir)
    console.print(
        f"Federation in [bold]{root}[/]; levels {args.levels}, "
        f"{args.warmup:g} s warm-up + {args.duration:g} s timed each"
    )
    request = broker_pb2.QueryRequest(query=query_to_pb(QUERY)).SerializeToString()
    pool = TokenPool(fed)
    load = Load(fed.broker_address, fed.ca_cert.read_bytes(), request, pool)
    started = time.monotonic()
    try:
        with real_topology(fed, args.residents, console) as pids:
            idle_mb = idle_rss_mb(pids)
            n = verify_sample(fed, request)
            console.print(f"Real topology: sample answers verified ({n} signatures).")
            load.cities = len(fed.cities)
            real = measure(REAL, load, pool, args.levels, args.warmup, args.duration, pids, console)
            try:
                verify_sample(fed, request, 1)
            except (RuntimeError, grpc.RpcError) as e:
                console.print(f"[yellow]After the load the federation did not answer fully: {e}[/]")
        with noop_topology(fed) as pids:
            noop_idle_mb = idle_rss_mb(pids)
            load.cities = 0  # the no-op broker answers nothing, and fails the call if a city fails
            noop = measure(NOOP, load, pool, args.levels, args.warmup, args.duration, pids, console)
    finally:
        if made and not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    params = {
        "benchmark": NAME,
        "topology": "3 node processes + 1 broker process + 1 load-generator process, loopback mTLS",
        "baseline": "bench/noop_servers.py: same configs, ports, TLS and fan-out; no-op handlers",
        "query": QUERY_TEXT,
        "cities": len(fed.cities),
        "residents_per_city": args.residents,
        "consent_share": demo.CONSENT_SHARE,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "concurrency_levels": args.levels,
        "channels": 1,
        "token_mint_ms": round(pool.mint_s_per_token * 1000, 4),
        **environment(),
    }
    figs = figures(real, noop, params)
    figs.append(
        Figure(
            f"{NAME}.idle_node_rss",
            idle_mb,
            "MB",
            False,
            noop_idle_mb,
            f"{NAME}.{NOOP}.idle_node_rss",
            {
                **params,
                "what": "largest resident memory (VmRSS) of the node processes, loaded and idle, "
                "before any query",
                "goal_mb": IDLE_RSS_GOAL_MB,
            },
        )
    )
    console.print(levels_table(real, noop))
    console.print(cpu_table(real, noop))
    best = next(f for f in figs if f.name == f"{NAME}.throughput_ratio.best")
    console.print(
        figures_table(
            "Headline figures",
            [f for f in figs if ".best" in f.name or ".cpu_" in f.name],
        )
    )
    verdict = "[green]meets[/]" if best.value >= GOAL_RATIO else "[red]misses[/]"
    console.print(
        f"Best real throughput / best baseline throughput = [bold]{best.value:.3f}[/] "
        f"(real best at c={best.parameters['concurrency']}, baseline best at "
        f"c={best.parameters['baseline_concurrency']}); {verdict} the goal of {GOAL_RATIO}."
    )
    by_cpu = next(f for f in figs if f.name.startswith(f"{NAME}.cpu_ratio."))
    console.print(
        f"By CPU per query at c={by_cpu.parameters['concurrency']} (independent of other load): "
        f"no-op / real = [bold]{by_cpu.value:.3f}[/]."
    )
    busiest = max(real + noop, key=lambda lv: lv.other_load)
    if busiest.other_load > OTHER_LOAD_WARN:
        console.print(
            f"[yellow]Other processes kept up to {busiest.other_load:.2f} of "
            f"{os.cpu_count()} cores busy during the windows ({busiest.topology}, "
            f"c={busiest.concurrency}): the figures are noisier than on a quiet machine.[/]"
        )
    out = write_figures(args.results / f"{args.name}.json", figs)
    png = plot(args.results / f"{args.name}.png", real, noop, best.value)
    console.print(f"Wrote {out} and {png} in {time.monotonic() - started:.0f} s.")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted; every process this run started has been stopped", file=sys.stderr)
        sys.exit(130)
