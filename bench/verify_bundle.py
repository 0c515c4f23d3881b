"""Offline verification of a large audit bundle, against raw Ed25519 verification in the same run.

    make bench-verify                # or: .venv/bin/python bench/verify_bundle.py
    .venv/bin/python bench/verify_bundle.py --quick              # a smoke run of a few seconds
    .venv/bin/python bench/verify_bundle.py --entries 100000 --repeats 3

What runs: a synthetic but valid export bundle of a city's node log is written into a temp dir with
the project's own code (keys.trust for the signed trust bundle, domain.agreement for the signed
agreement, keys.dsse for every logged statement, audit.merkle + audit.note for a signed C2SP
checkpoint every --checkpoint-every entries, audit.bundle.line/b64 for the canonical lines). The
log holds what a node logs: the agreement it loaded, then repeating groups of 10 entries, namely 3
exchanges (the broker-signed query and the city-signed result, with cells, that the verifier checks
against the agreement) and 4 resident consent receipts; one exchange in 50 is a signed refusal
instead of a result. Every statement is freshly made and signed (distinct payloads, real partner
tokens in the queries). A prefix of it (--small entries, with its own manifest) is the small bundle.

Measured: `audit.verifier.verify_bundle` in a fresh child process per run (the time of that call
only, `summary.signatures_verified` / time = signatures/s), in two configurations:
- default: as `citybroker audit verify` runs it. For a bundle of PARALLEL_MIN_ENTRIES (20,000) or
  more entries the verifier checks entry signatures in worker processes, one per CPU, while the
  verifying process parses and checks everything else (2 on this 2-core machine);
- workers=1: everything in one process and one thread (the figures named single_process).
The baseline for both is the SAME single-thread figure: raw Ed25519 verification (`cryptography`
Ed25519PublicKey.verify, one thread, in this process) of exactly the same (key, signature,
message) triples the bundle holds (every entry's DSSE PAE and every checkpoint body; the same
count as the verifier reports), run just before each verifier run. The repeat with the median
ratio is reported, with its own baseline run. Memory: the verifying process's peak RSS (VmHWM)
and, in a separate untimed run, the tracemalloc peak of the verify_bundle call, for the small and
the large bundle, to show how memory grows with the bundle size.

Output: tables, bench/results/<name>.json (the shared figure format, see bench/common.py).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

NAME = "verify_bundle"
GOAL_RATIO = 0.70
CITY, BROKER, PARTNER = "aurora", "broker-1", "northwind-mobility"
ORIGIN = f"citybroker/node/{CITY}"
PURPOSE = "urban-mobility-planning"
GROUP = 10  # entries per repeating group: 3 exchanges (query + result) and 4 consent receipts
REFUSAL_EVERY = 50  # one exchange in this many is a refusal instead of a result
MODES = ("bike", "bus", "car", "ferry", "metro", "scooter", "train", "tram", "walk")


# -- the worker: one verification in a fresh process ------------------------------------------------


def worker(bundle: Path, authority_b64: str, trace: bool, workers: int | None) -> int:
    """Verify `bundle` once; print one JSON line with the time, counts and memory figures.

    `workers` None is the verifier's default (worker processes for large bundles), 1 is inline.
    """
    import gc
    import inspect
    import tracemalloc

    from audit.parallel import default_workers
    from audit.verifier import verify_bundle
    from keys.ed25519 import PublicKey

    parallel = "workers" in inspect.signature(verify_bundle).parameters
    kwargs: dict[str, Any] = {"workers": workers} if parallel and workers is not None else {}

    authority = PublicKey.from_b64(authority_b64)
    gc.collect()
    rss_before_kb = _current_rss_kb()
    if trace:
        tracemalloc.start()
    cpu0 = _cpu_s()
    started = time.perf_counter()
    summary = verify_bundle(bundle, authority, **kwargs)
    elapsed = time.perf_counter() - started
    cpu = _cpu_s() - cpu0
    if not parallel:
        processes = 1
    elif workers is not None:
        processes = workers
    else:
        processes = default_workers(summary.size)
    traced_peak = tracemalloc.get_traced_memory()[1] if trace else None
    if trace:
        tracemalloc.stop()
    print(
        json.dumps(
            {
                "elapsed_s": elapsed,
                "cpu_s": cpu,
                "entries": summary.size,
                "signatures_verified": summary.signatures_verified,
                "checkpoints_verified": summary.checkpoints_verified,
                "results": summary.result_count,
                "rss_before_kb": rss_before_kb,
                "maxrss_kb": _peak_rss_kb(),
                "tracemalloc_peak_bytes": traced_peak,
                "signature_processes": processes,
            }
        )
    )
    return 0


def _cpu_s() -> float:
    """CPU seconds (user + system) of this process and its reaped children (signature workers)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _peak_rss_kb() -> int:
    """Peak resident set size of this process image (VmHWM), in KiB.

    Not ru_maxrss: Linux carries that across fork and exec, so a child would report its parent's
    peak (the parent holds every signature of the bundle for the baseline).
    """
    for row in Path("/proc/self/status").read_text().splitlines():
        if row.startswith("VmHWM:"):
            return int(row.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _current_rss_kb() -> int:
    """Resident set size now (Linux /proc), in KiB."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") // 1024


def run_worker(
    bundle: Path, authority_b64: str, trace: bool = False, workers: int | None = None
) -> dict[str, Any]:
    argv = [sys.executable, str(Path(__file__).resolve()), "--worker", str(bundle)]
    argv += ["--authority", authority_b64] + (["--trace"] if trace else [])
    argv += [] if workers is None else ["--workers", str(workers)]
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"verification of {bundle} failed:\n{proc.stderr[-3000:]}")
    out: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


# -- the synthetic bundle -----------------------------------------------------------------------


@dataclass
class Generated:
    root: Path
    size: int
    authority_b64: str
    # (public key object, signature, message) of every signature the verifier counts, in order.
    triples: list[tuple[Any, bytes, bytes]]
    kinds: dict[str, int] = field(default_factory=dict)
    entry_bytes: int = 0
    checkpoint_sizes: list[int] = field(default_factory=list)
    generate_s: float = 0.0


def generate(root: Path, size: int, every: int) -> Generated:
    """Write a valid node-log bundle of `size` entries with a checkpoint every `every` entries."""
    from audit import bundle as layout
    from audit.merkle import CompactRange, leaf_hash
    from audit.note import checkpoint_body, sign_note
    from domain import agreement as agreement_doc
    from domain import statements
    from domain.agreement import Agreement, Appearance, FieldTerms
    from domain.authorisation import grant_for
    from domain.query import Dimension, Measure, MeasureKind, Query
    from keys import dsse, timefmt, tokens, trust
    from keys.ed25519 import Signer
    from keys.tokens import Call
    from keys.trust import KeyGrant, Party, Role, TrustBundle

    started = time.perf_counter()
    authority, city, broker, partner = (Signer.generate() for _ in range(4))
    now = timefmt.now()
    window = (now - timedelta(days=1), now + timedelta(days=365))
    tb = TrustBundle(
        "citybroker-bench",
        1,
        now - timedelta(days=1),
        {
            CITY: Party(CITY, Role.CITY, "Aurora", "EU-FI", "", (KeyGrant(city.public, *window),)),
            BROKER: Party(
                BROKER, Role.BROKER, "Broker", "EU", "", (KeyGrant(broker.public, *window),)
            ),
            PARTNER: Party(
                PARTNER, Role.PARTNER, "Northwind", "EU", "", (KeyGrant(partner.public, *window),)
            ),
        },
    )
    base = now - timedelta(hours=3)
    agreement = Agreement(
        agreement_id=f"{CITY}--{PARTNER}",
        version=1,
        provider=CITY,
        consumer=PARTNER,
        purposes=frozenset({PURPOSE}),
        datasets={
            "mobility": {
                "district": FieldTerms(Appearance.RAW),
                "mode": FieldTerms(Appearance.RAW),
                "trip_date": FieldTerms(Appearance.GENERALISED, frozenset({"month", "year"})),
                "distance_km": FieldTerms(Appearance.AGGREGATE_ONLY),
            }
        },
        min_cell_size=10,
        valid_from=base - timedelta(minutes=1),
        valid_until=base + timedelta(days=365),
        retention_days=90,
    )
    agreement_env = agreement_doc.sign(agreement, city, partner)
    asked = Query(
        "mobility",
        PURPOSE,
        (
            Measure(MeasureKind.COUNT_RECORDS),
            Measure(MeasureKind.COUNT_RESIDENTS),
            Measure(MeasureKind.AVG, "distance_km"),
        ),
        group_by=(Dimension("mode"),),
    )
    query, grant = asked.to_payload(), grant_for(Call.QUERY, asked)

    root.mkdir(parents=True)
    (root / layout.TRUST_DIR).mkdir()
    (root / layout.TRUST_DIR / "v1.json").write_bytes(trust.sign_bundle(tb, authority).to_json())
    (root / layout.AGREEMENTS_DIR).mkdir()
    (root / layout.AGREEMENTS_DIR / f"{agreement.agreement_id}-v1.json").write_bytes(
        agreement_env.to_json()
    )
    (root / layout.COSIGNATURES).write_bytes(b"")

    keys = {
        city.keyid: city.public.crypto_key(),
        broker.keyid: broker.public.crypto_key(),
        partner.keyid: partner.public.crypto_key(),
    }
    city_key = keys[city.keyid]
    out = Generated(root, size, authority.public.b64, [])
    entry_triples: list[tuple[Any, bytes, bytes]] = []
    tree = CompactRange()
    checkpoints = open(root / layout.CHECKPOINTS, "wb")  # noqa: SIM115 - closed below
    entries = open(root / layout.ENTRIES, "wb")  # noqa: SIM115 - closed below

    def checkpoint() -> None:
        body = checkpoint_body(ORIGIN, tree.size, tree.root())
        checkpoints.write(layout.line({"size": tree.size, "note": sign_note(body, ORIGIN, city)}))
        # Ed25519 signatures are deterministic: this is the signature inside the note.
        out.triples.append((city_key, city.sign(body.encode()), body.encode()))
        out.checkpoint_sizes.append(tree.size)

    def log(env: dsse.Envelope, kind: str) -> None:
        data = env.to_json()
        entries.write(layout.line({"index": tree.size, "kind": kind, "entry": layout.b64(data)}))
        tree.append(leaf_hash(data))
        message = dsse.pae(env.payload_type, env.payload)
        for s in env.signatures:
            entry_triples.append((keys[s.keyid], s.sig, message))
        out.kinds[env.payload_type] = out.kinds.get(env.payload_type, 0) + 1
        out.entry_bytes += len(data)
        if tree.size % every == 0 or tree.size == size:
            # Entry signatures first, then the checkpoint: the order the verifier meets them in
            # does not matter for the count, only that every one is there.
            checkpoint()

    def at(i: int) -> datetime:
        return base + timedelta(seconds=i // 20)

    try:
        checkpoint()  # the empty log's checkpoint, as a new MerkleLog publishes it
        log(agreement_env, "agreement")
        n = 0
        while tree.size < size:
            n += 1
            slot = n % GROUP
            when = timefmt.fmt(at(tree.size))
            if slot in (1, 4, 7) and tree.size + 2 <= size:
                request_id = f"req-{n:09d}"
                q = dsse.sign(
                    statements.QUERY,
                    {
                        "request_id": request_id,
                        "broker": BROKER,
                        "partner": PARTNER,
                        "token": tokens.issue(partner, PARTNER, BROKER, grant),
                        "issued_at": when,
                        "query": query,
                    },
                    broker,
                )
                common = {
                    "request_id": request_id,
                    "query_digest": statements.digest(q.payload),
                    "city": CITY,
                    "broker": BROKER,
                    "partner": PARTNER,
                    "issued_at": when,
                }
                exchange = (n // GROUP) * 3 + (slot - 1) // 3
                if exchange % REFUSAL_EVERY == REFUSAL_EVERY - 1:
                    answer = dsse.sign(
                        statements.REFUSAL,
                        {
                            **common,
                            "code": "PERMISSION_DENIED",
                            "reason": "FIELD_NOT_IN_AGREEMENT",
                            "message": "field income is not in the agreement",
                        },
                        city,
                    )
                    kind = "refusal"
                else:
                    cells = [
                        {
                            "key": {"mode": m},
                            "values": {
                                "count_records": 40 + (n * 7 + j * 13) % 900,
                                "count_residents": 12 + (n * 5 + j * 11) % 300,
                                "avg(distance_km)": round(1 + ((n + j) % 97) / 7, 6),
                            },
                            "records": 40 + (n * 7 + j * 13) % 900,
                        }
                        for j, m in enumerate(MODES[: 3 + n % 5])
                    ]
                    answer = dsse.sign(
                        statements.RESULT,
                        {
                            **common,
                            "purpose": PURPOSE,
                            "dataset": "mobility",
                            "agreement": {"id": agreement.agreement_id, "version": 1},
                            "min_cell_size": 10,
                            "cells": cells,
                            "withheld": [{"mode": MODES[-1]}] if n % 3 == 0 else [],
                        },
                        city,
                    )
                    kind = "exchange"
                # A node logs the query and its answer in one atomic append.
                log(q, kind)
                log(answer, kind)
            elif slot in (2, 5, 8):
                continue  # the second entry of the exchange above
            else:
                env = dsse.sign(
                    "consent-receipt",
                    {
                        "city": CITY,
                        "record_id": f"cr-{n:09d}",
                        "resident_id": f"res-{(n * 7919) % 1_000_003:07d}",
                        "purpose": PURPOSE,
                        "recipient": PARTNER,
                        "data_category": "mobility",
                        "valid_from": when,
                        "valid_until": None,
                        "event": "given" if n % 9 else "withdrawn",
                        "actor": "city-portal",
                        "at": when,
                    },
                    city,
                )
                log(env, "consent")
    finally:
        entries.close()
        checkpoints.close()
    (root / layout.MANIFEST).write_bytes(
        layout.line(
            {"format": layout.FORMAT, "origin": ORIGIN, "party": CITY, "role": "node", "size": size}
        )
    )
    # The verifier checks every checkpoint before the entries: count them in that order too.
    out.triples.extend(entry_triples)
    out.generate_s = time.perf_counter() - started
    return out


def prefix(src: Generated, dst: Path, size: int) -> Generated:
    """The first `size` entries of `src` as a bundle of their own (`size` must be checkpointed)."""
    from audit import bundle as layout

    if size not in src.checkpoint_sizes:
        raise ValueError(f"no checkpoint at size {size}")
    shutil.copytree(src.root, dst, ignore=shutil.ignore_patterns("*.jsonl", layout.MANIFEST))
    (dst / layout.COSIGNATURES).write_bytes(b"")
    with (src.root / layout.ENTRIES).open("rb") as f, (dst / layout.ENTRIES).open("wb") as g:
        for number, raw in enumerate(f):
            if number >= size:
                break
            g.write(raw)
    with (
        (src.root / layout.CHECKPOINTS).open("rb") as f,
        (dst / layout.CHECKPOINTS).open("wb") as g,
    ):
        for raw in f:
            if json.loads(raw)["size"] <= size:
                g.write(raw)
    manifest = json.loads((src.root / layout.MANIFEST).read_bytes())
    (dst / layout.MANIFEST).write_bytes(layout.line({**manifest, "size": size}))
    return Generated(dst, size, src.authority_b64, [])


# -- the baseline -------------------------------------------------------------------------------


def raw_verify(triples: list[tuple[Any, bytes, bytes]]) -> tuple[float, float]:
    """Wall and CPU seconds to verify every triple with cryptography's Ed25519, in one thread."""
    started, cpu = time.perf_counter(), time.thread_time()
    for key, sig, message in triples:
        key.verify(sig, message)
    return time.perf_counter() - started, time.thread_time() - cpu


# -- main ----------------------------------------------------------------------------------------


@dataclass
class Paired:
    """Verifier runs, each with the raw baseline run just before it (the same machine state)."""

    signatures: int
    raw_s: list[float] = field(default_factory=list)
    raw_cpu_s: list[float] = field(default_factory=list)
    runs: list[dict[str, Any]] = field(default_factory=list)

    def add_raw(self, wall_cpu: tuple[float, float]) -> None:
        self.raw_s.append(wall_cpu[0])
        self.raw_cpu_s.append(wall_cpu[1])

    def rate(self, i: int) -> float:
        return float(self.runs[i]["signatures_verified"] / self.runs[i]["elapsed_s"])

    def raw_rate(self, i: int) -> float:
        return self.signatures / self.raw_s[i]

    def cpu_ratio(self, i: int) -> float:
        """Signatures per CPU second (all processes) against raw signatures per CPU second:
        what share of the verifier's CPU time goes to the signature checks, whatever else runs
        on the machine."""
        per_cpu = self.runs[i]["signatures_verified"] / self.runs[i]["cpu_s"]
        return float(per_cpu / (self.signatures / self.raw_cpu_s[i]))

    @property
    def median(self) -> int:
        """The repeat whose ratio is the median one: its rate and its baseline are reported."""
        order = sorted(range(len(self.runs)), key=lambda i: self.rate(i) / self.raw_rate(i))
        return order[(len(order) - 1) // 2]

    @property
    def ratios(self) -> list[float]:
        return [round(self.rate(i) / self.raw_rate(i), 4) for i in range(len(self.runs))]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--entries", type=int, default=100_000, help="entries in the large bundle")
    p.add_argument("--small", type=int, default=10_000, help="entries in the small bundle")
    p.add_argument("--checkpoint-every", type=int, default=1000, help="entries per checkpoint")
    p.add_argument("--repeats", type=int, default=3, help="timed runs of each (median reported)")
    p.add_argument("--no-trace", action="store_true", help="skip the tracemalloc runs")
    p.add_argument(
        "--quick", action="store_true", help="smoke run: 10,000 and 2,000 entries, 1 repeat"
    )
    p.add_argument("--name", default=NAME, help="result file name under --results")
    p.add_argument("--results", type=Path, help="where results go (default bench/results)")
    p.add_argument("--dir", type=Path, help="empty directory for the bundles (default: temp)")
    p.add_argument("--keep", action="store_true", help="keep the bundles")
    p.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--authority", help=argparse.SUPPRESS)
    p.add_argument("--trace", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--workers", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.entries, args.small, args.repeats = 10_000, 2_000, 1
    if args.worker is None:
        if not 0 < args.small < args.entries or args.checkpoint_every < 1:
            p.error("need 0 < --small < --entries and --checkpoint-every >= 1")
        if args.small % args.checkpoint_every or args.repeats < 1:
            p.error("--small must be a multiple of --checkpoint-every; --repeats at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker is not None:
        return worker(args.worker, args.authority, args.trace, args.workers)

    from common import (
        RESULTS_DIR,
        Figure,
        environment,
        figures_table,
        fmt_number,
        measured_source,
        write_figures,
    )
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 160)
    results_dir = args.results or RESULTS_DIR
    made = args.dir is None
    work = args.dir or Path(tempfile.mkdtemp(prefix="citybroker-bench-verify-"))
    if not made and work.exists() and any(work.iterdir()):
        raise SystemExit(f"{work} is not empty; the benchmark needs a fresh directory")
    started = time.monotonic()
    load_before = os.getloadavg()
    try:
        with console.status(f"writing a {args.entries:,}-entry bundle"):
            big = generate(work / f"bundle-{args.entries}", args.entries, args.checkpoint_every)
            small = prefix(big, work / f"bundle-{args.small}", args.small)
            # So that a kept bundle can be checked by hand: citybroker audit verify --authority-key
            (work / "authority.pub").write_text(big.authority_b64 + "\n")
        console.print(
            f"Bundle of {big.size:,} entries ({big.entry_bytes / big.size:.0f} bytes per entry on "
            f"average, {len(big.checkpoint_sizes)} checkpoints, {len(big.triples):,} signatures) "
            f"written in {big.generate_s:.1f} s under [bold]{work}[/]."
        )
        n = len(big.triples)
        # The verifier as the CLI runs it (its default: worker processes for a large bundle),
        # and everything in one process; each run right after its own raw baseline run.
        default, single = Paired(n), Paired(n)
        for r in range(args.repeats):
            for label, paired, workers in (("default", default, None), ("one process", single, 1)):
                with console.status(f"run {r + 1}/{args.repeats}: raw Ed25519 verification"):
                    paired.add_raw(raw_verify(big.triples))
                with console.status(f"run {r + 1}/{args.repeats}: verify_bundle ({label})"):
                    paired.runs.append(run_worker(big.root, big.authority_b64, workers=workers))
                run, i = paired.runs[-1], len(paired.runs) - 1
                if run["signatures_verified"] != n:
                    raise RuntimeError(
                        f"the verifier counted {run['signatures_verified']} signatures, "
                        f"the bundle holds {n}"
                    )
                console.print(
                    f"  run {r + 1}, {label} ({run['signature_processes']} signature "
                    f"process{'es' if run['signature_processes'] > 1 else ''}): raw "
                    f"{paired.raw_rate(i):,.0f} sig/s; verify_bundle {paired.rate(i):,.0f} sig/s "
                    f"({run['elapsed_s']:.2f} s, ratio {paired.rate(i) / paired.raw_rate(i):.3f}, "
                    f"CPU-time ratio {paired.cpu_ratio(i):.3f}, peak RSS "
                    f"{run['maxrss_kb'] / 1024:.1f} MiB)"
                )
        with console.status(f"verify_bundle, {small.size:,} entries"):
            small_runs = [
                run_worker(small.root, small.authority_b64, workers=1) for _ in range(args.repeats)
            ]
        traced: dict[int, dict[str, Any]] = {}
        if not args.no_trace:
            for g in (small, big):
                with console.status(f"tracemalloc run, {g.size:,} entries (untimed)"):
                    traced[g.size] = run_worker(g.root, g.authority_b64, trace=True, workers=1)
    finally:
        if made and not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    d, s1 = default.median, single.median
    rate, raw_rate = default.rate(d), default.raw_rate(d)
    ratio = rate / raw_rate
    processes = default.runs[d]["signature_processes"]
    single_rate, single_raw = single.rate(s1), single.raw_rate(s1)
    small_s = statistics.median(r["elapsed_s"] for r in small_runs)
    small_sigs = small_runs[0]["signatures_verified"]
    small_rate = small_sigs / small_s
    # Memory compared in the same mode (one process) for both sizes: worker processes add
    # their own fixed buffers in the parent.
    big_rss = max(r["maxrss_kb"] for r in single.runs) / 1024
    small_rss = max(r["maxrss_kb"] for r in small_runs) / 1024
    params: dict[str, Any] = {
        "benchmark": NAME,
        "bundle": (
            f"node log of {CITY}: 1 agreement, then groups of 10 entries (3 exchanges of a "
            "broker-signed query + a city-signed result checked against the agreement, 4 consent "
            f"receipts); 1 exchange in {REFUSAL_EVERY} is a refusal"
        ),
        "entries": big.size,
        "signatures": n,
        "statement_types": big.kinds,
        "mean_entry_bytes": round(big.entry_bytes / big.size, 1),
        "checkpoint_every": args.checkpoint_every,
        "checkpoints": len(big.checkpoint_sizes),
        "results_in_bundle": default.runs[0]["results"],
        "generate_s": round(big.generate_s, 2),
        "repeats": args.repeats,
        "statistic": "the repeat with the median ratio (its rate and its own baseline run)",
        "verifier": "audit.verifier.verify_bundle, one call in a fresh child process, timed alone",
        "signature_processes": processes,
        "cpus": len(os.sched_getaffinity(0)),
        "baseline": (
            "cryptography Ed25519PublicKey.verify over the same (key, signature, message) triples, "
            "same count, ONE thread in one process, keys loaded before timing; run just before "
            "each verifier run"
        ),
        "raw_s": [round(x, 4) for x in default.raw_s],
        "verify_s": [round(r["elapsed_s"], 4) for r in default.runs],
        "ratios": default.ratios,
        "cpu_time_ratio": round(default.cpu_ratio(d), 4),
        "cpu_time_ratio_what": "signatures per CPU second of the verifier (all its processes) "
        "over raw signatures per CPU second: below 1 by the parsing, checks and IPC",
        "goal_ratio": GOAL_RATIO,
        "measured": measured_source(
            "audit/verifier.py", "audit/checks.py", "audit/parallel.py", "audit/bundle_reader.py"
        ),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        **environment(),
    }
    single_params = {
        **params,
        "signature_processes": 1,
        "verifier": "audit.verifier.verify_bundle(workers=1): parsing, checks and signatures all "
        "in one process, one thread",
        "raw_s": [round(x, 4) for x in single.raw_s],
        "verify_s": [round(r["elapsed_s"], 4) for r in single.runs],
        "ratios": single.ratios,
        "cpu_time_ratio": round(single.cpu_ratio(s1), 4),
    }
    raw_name = f"{NAME}.raw_ed25519_one_thread.rate"
    figs = [
        Figure(
            f"{NAME}.signature_rate.{big.size}",
            rate,
            "signatures/s",
            True,
            raw_rate,
            raw_name,
            params,
        ),
        Figure(
            f"{NAME}.rate_ratio.{big.size}",
            ratio,
            "ratio",
            True,
            1.0,
            f"{raw_name}_ratio (the baseline against itself)",
            params,
        ),
        Figure(
            f"{NAME}.single_process.signature_rate.{big.size}",
            single_rate,
            "signatures/s",
            True,
            single_raw,
            raw_name,
            single_params,
        ),
        Figure(
            f"{NAME}.single_process.rate_ratio.{big.size}",
            single_rate / single_raw,
            "ratio",
            True,
            1.0,
            f"{raw_name}_ratio (the baseline against itself)",
            single_params,
        ),
        Figure(
            f"{NAME}.single_process.cpu_time_ratio.{big.size}",
            single.cpu_ratio(s1),
            "ratio",
            True,
            1.0,
            f"{NAME}.raw_ed25519_one_thread.cpu_time_ratio (the baseline against itself)",
            {
                **single_params,
                "what": "(signatures / CPU seconds of verify_bundle, workers=1) / (signatures / "
                "CPU seconds of the raw loop's thread): the share of the verifier's CPU time "
                "spent in Ed25519; robust to other load on the machine, unlike wall time",
            },
        ),
        Figure(
            f"{NAME}.entry_rate.{big.size}",
            big.size / default.runs[d]["elapsed_s"],
            "entries/s",
            True,
            raw_rate * big.size / n,
            f"{NAME}.raw_ed25519_one_thread.entry_rate (raw signatures/s scaled to entries)",
            params,
        ),
        Figure(
            f"{NAME}.signature_rate.{small.size}",
            small_rate,
            "signatures/s",
            True,
            raw_rate,
            raw_name,
            {
                **params,
                "entries": small.size,
                "signatures": small_sigs,
                "signature_processes": small_runs[0]["signature_processes"],
                "verify_s": [round(r["elapsed_s"], 4) for r in small_runs],
                "statistic": "median time of the repeats, against the large bundle's baseline",
            },
        ),
        Figure(
            f"{NAME}.peak_rss.{big.size}",
            big_rss,
            "MiB",
            False,
            small_rss,
            f"{NAME}.peak_rss.{small.size}",
            {
                **params,
                "what": "peak RSS (VmHWM) of the verifying process, workers=1 for both bundles "
                "(interpreter and imports included); the baseline is the same for the small "
                "bundle",
                "default_mode_peak_rss_mib": round(
                    max(r["maxrss_kb"] for r in default.runs) / 1024, 1
                ),
                "rss_before_verify_mib": round(default.runs[0]["rss_before_kb"] / 1024, 1),
                "baseline_entries": small.size,
            },
        ),
    ]
    if traced:
        tb, ts = traced[big.size], traced[small.size]
        figs.append(
            Figure(
                f"{NAME}.tracemalloc_peak.{big.size}",
                tb["tracemalloc_peak_bytes"] / 2**20,
                "MiB",
                False,
                ts["tracemalloc_peak_bytes"] / 2**20,
                f"{NAME}.tracemalloc_peak.{small.size}",
                {
                    **params,
                    "what": "tracemalloc peak of Python allocations during verify_bundle "
                    "(workers=1), separate untimed run",
                    "baseline_entries": small.size,
                    "growth_bytes_per_entry": round(
                        (tb["tracemalloc_peak_bytes"] - ts["tracemalloc_peak_bytes"])
                        / (big.size - small.size),
                        1,
                    ),
                    "results_in_bundle": tb["results"],
                    "results_in_baseline_bundle": ts["results"],
                    "growth_bytes_per_result": round(
                        (tb["tracemalloc_peak_bytes"] - ts["tracemalloc_peak_bytes"])
                        / max(1, tb["results"] - ts["results"]),
                        1,
                    ),
                    "note": "results, receipts and checkpoints kept for reconciliation go to "
                    "the verifier's on-disk ledger (audit/ledger.py), not Python memory",
                },
            )
        )

    t = Table(title="Bundle verification against raw one-thread Ed25519 verification (same run)")
    for col in (
        "bundle",
        "signatures",
        "signature\nprocesses",
        "verify s",
        "verify sig/s",
        "raw sig/s\n(1 thread)",
        "ratio",
        "peak RSS MiB",
        "tracemalloc\npeak MiB",
    ):
        t.add_column(col, justify="right")
    rows = [
        (
            f"{small.size:,} entries",
            small_runs[0],
            small_s,
            small_rate,
            raw_rate,
            traced.get(small.size),
        ),
        (
            f"{big.size:,} entries",
            default.runs[d],
            default.runs[d]["elapsed_s"],
            rate,
            raw_rate,
            traced.get(big.size),
        ),
        (
            f"{big.size:,} entries, workers=1",
            single.runs[s1],
            single.runs[s1]["elapsed_s"],
            single_rate,
            single_raw,
            None,
        ),
    ]
    for label, run, secs, r_rate, base, tr in rows:
        t.add_row(
            label,
            f"{run['signatures_verified']:,}",
            str(run["signature_processes"]),
            fmt_number(secs, 2),
            fmt_number(r_rate, 0),
            fmt_number(base, 0),
            fmt_number(r_rate / base, 3),
            fmt_number(run["maxrss_kb"] / 1024),
            fmt_number(tr["tracemalloc_peak_bytes"] / 2**20, 2) if tr else "-",
        )
    console.print(t)
    console.print(figures_table("Figures", figs))
    verdict = "[green]meets[/]" if ratio >= GOAL_RATIO else "[red]misses[/]"
    console.print(
        f"verify_bundle on {big.size:,} entries: [bold]{rate:,.0f}[/] signatures/s with "
        f"{processes} signature process{'es' if processes > 1 else ''} (the default on this "
        f"machine), against raw Ed25519 in ONE thread [bold]{raw_rate:,.0f}[/]/s: ratio "
        f"[bold]{ratio:.3f}[/], {verdict} the goal of {GOAL_RATIO}. All in one process "
        f"(workers=1): {single_rate:,.0f}/s, ratio [bold]{single_rate / single_raw:.3f}[/] "
        f"(by CPU time: {single.cpu_ratio(s1):.3f})."
    )
    growth = ""
    if traced:
        tb, ts = traced[big.size], traced[small.size]
        peak_b, peak_s = tb["tracemalloc_peak_bytes"], ts["tracemalloc_peak_bytes"]
        per_result = (peak_b - peak_s) / max(1, tb["results"] - ts["results"])
        growth = (
            f"; Python heap peak {peak_s / 2**20:.1f} MiB vs {peak_b / 2**20:.1f} MiB, about "
            f"{per_result:.0f} bytes more per released result"
        )
    console.print(
        f"Memory (one process), {small.size:,} vs {big.size:,} entries: peak RSS "
        f"{small_rss:.1f} MiB vs "
        f"{big_rss:.1f} MiB{growth}."
    )
    if load_before[0] > 1.0:
        # Only the load before the run says something: the benchmark itself keeps cores busy.
        console.print(
            f"[yellow]Note: load average {load_before[0]:.2f} when the run started: other work "
            "on this machine may have disturbed the figures.[/]"
        )
    out = write_figures(results_dir / f"{args.name}.json", figs)
    console.print(f"Wrote {out} in {time.monotonic() - started:.0f} s.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
