"""Soak: the federated query load at half the measured peak for ten minutes (make soak).

    make soak                                   # or: .venv/bin/python bench/soak.py
    .venv/bin/python bench/soak.py --duration 60 --warmup 30     # a short run

What runs: the federated query benchmark's federation (bench/federated_query.py: three
`citybroker node serve` processes and one `citybroker broker serve`, loopback mTLS, synthetic
cities). First the peak is measured with its closed-loop generator (a few seconds per concurrency);
then queries are sent open-loop at half that rate, each with a fresh single-use token: first for
the warm-up (five minutes), then for the ten measured minutes. Every answer must come from all
three cities; any failed call or missing city is an error, warm-up included. Each server's
resident memory (VmRSS) is sampled every few seconds.

Why five minutes of warm-up: a node's native caches (DuckDB's buffer manager and its bookkeeping,
SQLite's page caches) grow with the first few thousand queries. Measured with glibc's counters
sampled in each node at 13 queries/s: from 54 to 78 MB in the first five minutes, under 10 MB
more until they level off at about minute 16, then flat to minute 38 (infra.native_heap says
what kept the free heap from growing).

Pass: no errors, and no process's resident memory grows by more than 10 % from the end of the
warm-up to the end of the run (medians of three samples at each end, so one sample's noise does not
decide). Output: the figures, and bench/results/soak.json (the shared figure format).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from common import RESULTS_DIR, Figure, environment, figures_table, status_kb, write_figures
from federated_query import (
    CALL_TIMEOUT_S,
    METHOD,
    QUERY,
    QUERY_TEXT,
    Load,
    TokenPool,
    prepare,
    real_topology,
    unanswered,
    wait_idle,
)
from rich.console import Console

from citybroker.broker.v1 import broker_pb2
from edge.rpc import CHANNEL_OPTIONS, client_credentials
from edge.wire import query_to_pb

NAME = "soak"
GROWTH_LIMIT = 0.10
PEAK_LEVELS = (4, 16)


@dataclass
class Run:
    """What the paced load did, and the memory samples taken meanwhile."""

    rate: float
    duration_s: float
    completed: int = 0
    errors: list[str] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)
    # (seconds since the start, {process: VmRSS in kB})
    samples: list[tuple[float, dict[str, int]]] = field(default_factory=list)


async def _paced(
    address: str, ca: bytes, request: bytes, pool: TokenPool, run: Run, cities: int
) -> None:
    """Start one call every 1/rate seconds (open loop) until the duration is over."""
    creds = client_credentials(ca)
    async with grpc.aio.secure_channel(address, creds, options=CHANNEL_OPTIONS) as channel:
        call = channel.unary_unary(METHOD)
        await channel.channel_ready()
        in_flight: set[asyncio.Task[None]] = set()

        async def one() -> None:
            t0 = time.perf_counter()
            try:
                raw = await call(request, metadata=pool.take(), timeout=CALL_TIMEOUT_S)
            except grpc.aio.AioRpcError as e:
                run.errors.append(f"{e.code().name}: {e.details()}")
                return
            if missing := unanswered(raw, cities):
                run.errors.append(f"cities did not answer: {missing}")
                return
            run.completed += 1
            run.latencies_ms.append((time.perf_counter() - t0) * 1000)

        started = time.perf_counter()
        n = 0
        while (now := time.perf_counter()) - started < run.duration_s:
            due = started + n / run.rate
            if due > now:
                await asyncio.sleep(due - now)
            task = asyncio.ensure_future(one())
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
            n += 1
        if in_flight:
            await asyncio.wait(in_flight)


async def _sample(pids: dict[str, int], run: Run, every_s: float) -> None:
    started = time.monotonic()
    while True:
        run.samples.append(
            (
                time.monotonic() - started,
                {name: status_kb(pid, "VmRSS") for name, pid in pids.items()},
            )
        )
        await asyncio.sleep(every_s)


async def _soak(
    address: str, ca: bytes, request: bytes, pool: TokenPool, run: Run, pids: dict[str, int]
) -> None:
    sampler = asyncio.ensure_future(_sample(pids, run, every_s=5.0))
    try:
        await _paced(address, ca, request, pool, run, cities=3)
    finally:
        sampler.cancel()
    run.samples.append(
        (run.duration_s, {name: status_kb(pid, "VmRSS") for name, pid in pids.items()})
    )


def growth(run: Run, warmup_s: float) -> dict[str, tuple[float, float, float]]:
    """Per process: (MB at the end of the warm-up, MB at the end, growth as a fraction), each end
    the median of three samples."""
    after = [s for t, s in run.samples if t >= warmup_s]
    if len(after) < 2:
        raise SystemExit("too few memory samples after the warm-up: run longer")
    head, tail = after[:3], after[-3:]
    out = {}
    for name in after[0]:
        start = statistics.median(s[name] for s in head) / 1024
        end = statistics.median(s[name] for s in tail) / 1024
        out[name] = (start, end, end / start - 1 if start else float("nan"))
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--duration", type=float, default=600.0, help="seconds of paced load after the warm-up"
    )
    p.add_argument(
        "--warmup",
        type=float,
        default=300.0,
        help="seconds of the same load before memory counts (the native caches fill in about 4 minutes)",
    )
    p.add_argument("--peak-window", type=float, default=5.0, help="seconds per peak level")
    p.add_argument("--residents", type=int, default=500, help="residents per city")
    p.add_argument("--results", type=Path, default=RESULTS_DIR)
    args = p.parse_args(argv)
    if args.warmup < 0 or args.duration <= 0:
        p.error("--duration must be positive and --warmup not negative")
    return args


def _figures(run: Run, peak: float, mem: dict[str, Any], params: dict[str, Any]) -> list[Figure]:
    p50 = statistics.median(run.latencies_ms) if run.latencies_ms else float("nan")
    figs = [
        Figure(
            f"{NAME}.throughput",
            run.completed / run.duration_s,
            "queries/s",
            True,
            peak / 2,
            f"{NAME}.target_rate",
            params,
        ),
        Figure(
            f"{NAME}.errors",
            len(run.errors),
            "calls",
            False,
            0,
            f"{NAME}.allowed_errors",
            {**params, "first_error": run.errors[0] if run.errors else ""},
        ),
        Figure(f"{NAME}.latency_p50", p50, "ms", False, float("nan"), "", params),
    ]
    for name, (start, end, frac) in mem.items():
        figs.append(
            Figure(
                f"{NAME}.rss_growth.{name}",
                100 * frac,
                "%",
                False,
                100 * GROWTH_LIMIT,
                f"{NAME}.rss_growth_limit",
                {**params, "rss_mb_after_warmup": round(start, 1), "rss_mb_at_end": round(end, 1)},
            )
        )
    return figs


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console(width=None if sys.stdout.isatty() else 140)
    fed, root, _ = prepare(None)
    request = broker_pb2.QueryRequest(query=query_to_pb(QUERY)).SerializeToString()
    ca = fed.ca_cert.read_bytes()
    pool = TokenPool(fed)
    try:
        with real_topology(fed, args.residents, console) as pids:
            load = Load(fed.broker_address, ca, request, pool)
            load.cities = len(fed.cities)
            peak = 0.0
            for c in PEAK_LEVELS:
                pool.fill(0)
                level = load.run("peak", c, 1.0, args.peak_window, pids)
                wait_idle(pids)
                peak = max(peak, level.throughput)
                console.print(
                    f"  peak probe c={c}: {level.throughput:.1f} q/s, {level.errors} errors"
                )
            run = Run(rate=peak / 2, duration_s=args.warmup + args.duration)
            servers = {"broker": pids["broker"][0]}
            for name, pid in zip(sorted(fed.cities), pids["nodes"], strict=True):
                servers[f"node-{name}"] = pid
            console.print(
                f"Soak: {run.rate:.1f} q/s (half of {peak:.1f}) for {args.warmup:g} s of "
                f"warm-up, then {args.duration:g} s with memory counted"
            )
            pool.fill(0)  # minted on the spot: a token per call costs well under a millisecond
            asyncio.run(_soak(fed.broker_address, ca, request, pool, run, servers))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    mem = growth(run, args.warmup)
    params = {
        "benchmark": NAME,
        "query": QUERY_TEXT,
        "peak_qps": round(peak, 1),
        "target_qps": round(run.rate, 1),
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "residents_per_city": args.residents,
        **environment(),
    }
    figs = _figures(run, peak, mem, params)
    console.print(figures_table("Soak", figs))
    out = write_figures(args.results / f"{NAME}.json", figs)
    worst = max(frac for _, _, frac in mem.values())
    ok = not run.errors and worst <= GROWTH_LIMIT
    console.print(
        f"{run.completed} answered, {len(run.errors)} errors"
        + (f" (first: {run.errors[0][:120]})" if run.errors else "")
        + f"; largest memory growth after warm-up {100 * worst:+.1f} % "
        f"(limit {100 * GROWTH_LIMIT:.0f} %): "
        + ("[green]pass[/]" if ok else "[red]FAIL[/]")
        + f". Wrote {out}."
    )
    return 0 if ok else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted; every process this run started has been stopped", file=sys.stderr)
        sys.exit(130)
