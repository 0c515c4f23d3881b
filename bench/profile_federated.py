"""Where the CPU of a federated query goes: the broker and one node profiled under load.

    .venv/bin/pip install py-spy          # once; perf comes from the linux-perf package
    .venv/bin/python bench/profile_federated.py [--concurrency 16] [--duration 10]

Runs the same real topology as bench/federated_query.py (three node processes, a broker, synthetic
data, agreements and consents) under the same load at one concurrency, and samples the broker and
the first node with two profilers at once:

- `perf record` (CPU-clock samples of every thread, kernel included): which native code the CPU ran:
  Ed25519 in cryptography's Rust/OpenSSL, the SQLite engine, gRPC core (HTTP/2, TLS), upb protobuf,
  the Python interpreter, and in the kernel which system call (fdatasync, futex, socket I/O).
- `py-spy record --gil` (the thread holding the GIL): what the Python interpreter's share was
  spent on (PyJWT, SQLAlchemy, canonical JSON, the Merkle log, gRPC's Python layer ...).

The interpreter's share from perf is split in the proportions py-spy found, and each process's
breakdown is weighted by its measured CPU per query (broker + 3 x node) into one per-query
breakdown. Output: tables, and bench/results/profile/<name>.json with the raw collapsed stacks
beside it (py-spy's, for flame-graph tools). Without perf the script still reports py-spy's view.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import federated_query as fq
from common import RESULTS_DIR, environment, terminate_on_sigterm
from rich.console import Console
from rich.table import Table

from citybroker.broker.v1 import broker_pb2
from edge.wire import query_to_pb

NAME = "federated_query_profile"

# Categories of the final breakdown, in display order.
ED25519 = "Ed25519 sign/verify (cryptography)"
JWT = "JWT (PyJWT, Python)"
SQL = "SQL: SQLite engine + SQLAlchemy"
COMMIT = "SQLite commit: fdatasync/pwrite (kernel)"
MERKLE = "Merkle log append (Python: hand-off, tree, SQL rows, checkpoint)"
TRANSPARENCY = "residents' transparency record (Python: SQL rows)"
JSON = "JSON: canonical form (RFC 8785) and parsing"
PROTOBUF = "protobuf (upb + conversions)"
GRPC = "gRPC: core, TLS, socket I/O, Python layer"
THREADS = "threads: GIL, locks, wake-ups (futex)"
HASHING = "SHA-256 (hashlib)"
PYTHON = "Python: application logic, interpreter, GC"
KERNEL = "kernel: other (scheduler, interrupts, faults)"
CATEGORIES = [
    ED25519,
    JWT,
    SQL,
    COMMIT,
    MERKLE,
    TRANSPARENCY,
    JSON,
    PROTOBUF,
    GRPC,
    THREADS,
    HASHING,
    PYTHON,
    KERNEL,
]

# The interpreter's share, before py-spy splits it.
INTERPRETER = "interpreter"

NET_SYSCALLS = (
    "sendmsg",
    "recvmsg",
    "sendto",
    "recvfrom",
    "epoll",
    "poll",
    "readv",
    "writev",
    "_read",
    "_write",
    "accept",
    "connect",
    "getsockopt",
    "setsockopt",
    "shutdown",
)


# -- perf -----------------------------------------------------------------------------------------


def _frame(line: str) -> tuple[str, str]:
    """'  addr sym+0x1f (dso)' -> (sym, dso)."""
    text = line.strip()
    dso = ""
    if text.endswith(")") and " (" in text:
        text, dso = text[:-1].rsplit(" (", 1)
    parts = text.split(" ", 1)
    sym = parts[1] if len(parts) > 1 else ""
    return sym.split("+0x", 1)[0], dso


def classify_native(thread: str, frames: list[tuple[str, str]]) -> str:
    """One perf sample (leaf first) -> a category, or INTERPRETER for Python's own code."""
    if not frames:
        return KERNEL
    sym, dso = frames[0]
    if dso == "[kernel.kallsyms]":
        calls = [s for s, d in frames if d == "[kernel.kallsyms]"]
        syscall = next((s for s in calls if s.startswith(("__x64_sys_", "__do_sys_"))), "")
        if "fdatasync" in syscall or "fsync" in syscall or "pwrite" in syscall:
            return COMMIT
        if "pread" in syscall:
            return SQL
        if "futex" in syscall:
            return THREADS
        if any(n in syscall for n in NET_SYSCALLS) or any(
            "net_rx" in s or "tcp_" in s for s in calls
        ):
            return GRPC
        return KERNEL
    if thread == "event_engine":  # gRPC core's own threads
        return GRPC
    for _, d in frames:  # the innermost library that names the work
        if "_rust.abi3" in d or "/cryptography/" in d:
            return ED25519
        if "libsqlite3" in d or "_sqlite3" in d:
            return SQL
        if "cygrpc" in d:
            return GRPC
        if "_message.abi3" in d or "/_upb/" in d or "protobuf" in d:
            return PROTOBUF
        if "libcrypto" in d or "_hashlib" in d:
            return HASHING
        if "_json." in d:
            return JSON
        if "libpython" in d or "cpython-3" in d:
            return INTERPRETER
    return INTERPRETER  # libc (malloc, memcpy) or unknown: mostly on the interpreter's behalf


def perf_breakdown(data: Path) -> tuple[Counter[str], Counter[str]]:
    """Categories and the hottest native symbols of one `perf record -g` file."""
    out = subprocess.run(
        ["perf", "script", "-i", str(data), "-F", "comm,tid,period,ip,sym,dso"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    cats: Counter[str] = Counter()
    syms: Counter[str] = Counter()
    thread, frames = "", []

    def flush() -> None:
        if thread:
            cats[classify_native(thread, frames)] += 1
            if frames:
                sym, dso = frames[0]
                syms[f"{sym or '?'} ({Path(dso).name})"] += 1

    for line in out.splitlines():
        if not line.strip():
            continue
        if line[0] not in " \t":
            flush()
            head = line.split()
            thread, frames = " ".join(head[:-2]), []
        else:
            frames.append(_frame(line))
    flush()
    return cats, syms


# -- py-spy ----------------------------------------------------------------------------------------

# (path fragment, function name or "" for any) -> category; the innermost matching frame decides.
PY_RULES: list[tuple[str, str, str]] = [
    ("keys/ed25519.py", "", ED25519),
    ("jwt/", "", JWT),
    ("rfc8785/", "", JSON),
    ("json/", "", JSON),
    ("keys/dsse.py", "canonical", JSON),
    ("keys/dsse.py", "_plain", JSON),
    ("keys/dsse.py", "to_json", JSON),
    ("keys/dsse.py", "from_json", JSON),
    ("sqlalchemy/", "", SQL),
    ("sqlite3/", "", SQL),
    ("google/protobuf", "", PROTOBUF),
    ("_pb2", "", PROTOBUF),
    ("edge/wire.py", "", PROTOBUF),
    ("grpc/", "", GRPC),
    ("grpc_status/", "", GRPC),
    ("grpc_health/", "", GRPC),
    ("threading.py", "", THREADS),
    ("queue.py", "", THREADS),
    ("concurrent/futures", "", THREADS),
    ("hashlib", "", HASHING),
]
# Project modules whose Python time is one activity whatever they call (SQLAlchemy, threading).
WHOLE_ACTIVITIES = [("audit/log.py", MERKLE), ("node/transparency.py", TRANSPARENCY)]
# The project's own packages, as py-spy shows their paths (relative, or absolute when installed).
PROJECT_PACKAGES = (
    "domain/",
    "keys/",
    "audit/",
    "infra/",
    "node/",
    "broker/",
    "edge/",
    "cli/",
    "citybroker/",
)
# Leaves that are calls into native code perf already counts (py-spy sees the GIL held there).
NATIVE_LEAVES = {
    ("keys/ed25519.py", "PublicKey.verify"),
    ("keys/ed25519.py", "Signer.sign"),
    ("jwt/algorithms.py", "OKPAlgorithm.verify"),
    ("jwt/algorithms.py", "OKPAlgorithm.sign"),
}


def _py_frame(text: str) -> tuple[str, str]:
    """'Answerer.run_query (node/answering.py:71)' -> (function, path)."""
    if text.endswith(")") and " (" in text:
        fn, where = text[:-1].rsplit(" (", 1)
        return fn, where.rsplit(":", 1)[0]
    return text, ""


def classify_python(stack: list[str]) -> str | None:
    """A py-spy stack (root first) -> category; None for a native leaf perf already counts."""
    frames = [_py_frame(f) for f in reversed(stack)]
    if frames:
        fn, path = frames[0]
        if any(path.endswith(p) and fn == f for p, f in NATIVE_LEAVES):
            return None
    # Whole activities, whichever libraries they call: by the project module they run under.
    for fragment, cat in WHOLE_ACTIVITIES:
        if any(fragment in path for _, path in frames):
            return cat
    # The innermost frame that is either a known library or the project's own code decides;
    # stdlib helpers in between (contextlib, enum, re, datetime ...) count for their caller.
    for fn, path in frames:
        for fragment, function, cat in PY_RULES:
            if fragment in path and (not function or fn.endswith(function)):
                return cat
        if path.startswith(PROJECT_PACKAGES) or any(f"/{p}" in path for p in PROJECT_PACKAGES):
            return PYTHON
    return PYTHON


def project_module(stack: list[str]) -> str:
    """The innermost frame of the project's own code: which of our functions the time is under."""
    for text in reversed(stack):
        fn, path = _py_frame(text)
        for p in PROJECT_PACKAGES:
            at = path.find(p)
            if at == 0 or (at > 0 and path[at - 1] == "/"):
                return f"{path[at:]}: {fn.split('.<locals>')[0]}"
    return "(outside the project: gRPC threads, stdlib)"


def pyspy_breakdown(raw: Path) -> tuple[Counter[str], Counter[str], Counter[str], int]:
    cats: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    modules: Counter[str] = Counter()
    native = 0
    for line in raw.read_text().splitlines():
        stack_text, _, count_text = line.rpartition(" ")
        if not stack_text:
            continue
        n = int(count_text)
        stack = stack_text.split(";")
        cat = classify_python(stack)
        if cat is None:
            native += n
            continue
        cats[cat] += n
        leaves[stack[-1]] += n
        modules[project_module(stack)] += n
    return cats, leaves, modules, native


# -- running ---------------------------------------------------------------------------------------


@dataclass
class Profiled:
    role: str
    pid: int
    perf_cats: Counter[str] = field(default_factory=Counter)
    perf_syms: Counter[str] = field(default_factory=Counter)
    py_cats: Counter[str] = field(default_factory=Counter)
    py_leaves: Counter[str] = field(default_factory=Counter)
    py_modules: Counter[str] = field(default_factory=Counter)
    py_native: int = 0

    def combined(self) -> dict[str, float]:
        """Share of this process's CPU per category (sums to 1)."""
        out = dict.fromkeys(CATEGORIES, 0.0)
        total_perf = sum(self.perf_cats.values())
        total_py = sum(self.py_cats.values())
        if total_perf:
            interp = self.perf_cats.get(INTERPRETER, 0) / total_perf
            for cat, n in self.perf_cats.items():
                if cat != INTERPRETER:
                    out[cat] += n / total_perf
            for cat, n in self.py_cats.items():
                out[cat] += interp * n / total_py if total_py else 0.0
            if not total_py:
                out[PYTHON] += interp
        elif total_py:  # no perf: py-spy's view of Python time only
            for cat, n in self.py_cats.items():
                out[cat] += n / total_py
        return out


def run_profilers(
    targets: list[Profiled],
    out_dir: Path,
    delay_s: float,
    duration_s: float,
    rate: int,
    perf_freq: int,
    use_perf: bool,
    pyspy: str,
) -> list[str]:
    """Start both profilers on every target after `delay_s`, for `duration_s`; wait for them."""
    time.sleep(delay_s)
    procs: list[subprocess.Popen[bytes]] = []
    log = (out_dir / "profilers.log").open("ab")
    for t in targets:
        procs.append(
            subprocess.Popen(
                [
                    pyspy,
                    "record",
                    "--pid",
                    str(t.pid),
                    "--gil",
                    "--nonblocking",
                    "--rate",
                    str(rate),
                    "--duration",
                    str(int(duration_s)),
                    "--format",
                    "raw",
                    "-o",
                    str(out_dir / f"{t.role}.pyspy.txt"),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
        if use_perf:
            procs.append(
                subprocess.Popen(
                    [
                        "perf",
                        "record",
                        "-F",
                        str(perf_freq),
                        "-g",
                        "-p",
                        str(t.pid),
                        "-o",
                        str(out_dir / f"{t.role}.perf.data"),
                        "--",
                        "sleep",
                        str(duration_s),
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
    errors = []
    for p in procs:
        try:
            if p.wait(duration_s + 60) != 0:
                errors.append(f"{p.args[0]} exited with {p.returncode}")  # type: ignore[index]
        except subprocess.TimeoutExpired:
            p.kill()
            errors.append(f"{p.args[0]} did not finish")  # type: ignore[index]
    log.close()
    return errors


def breakdown_table(title: str, columns: dict[str, dict[str, float]]) -> Table:
    t = Table(title=title)
    t.add_column("activity")
    for name in columns:
        t.add_column(name, justify="right")
    for cat in CATEGORIES:
        t.add_row(cat, *(f"{100 * col.get(cat, 0.0):.1f} %" for col in columns.values()))
    return t


def top_table(title: str, counter: Counter[str], n: int = 15) -> Table:
    t = Table(title=title)
    t.add_column("share", justify="right")
    t.add_column("where")
    total = sum(counter.values()) or 1
    for what, count in counter.most_common(n):
        t.add_row(f"{100 * count / total:.1f} %", what[:110])
    return t


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--duration", type=float, default=10.0, help="seconds sampled")
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--residents", type=int, default=300)
    p.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    p.add_argument("--perf-freq", type=int, default=499, help="perf samples per second")
    p.add_argument("--no-perf", action="store_true", help="py-spy only")
    p.add_argument("--out", type=Path, default=RESULTS_DIR / "profile")
    p.add_argument("--dir", type=Path, help="empty directory for the federation (default: temp)")
    args = p.parse_args(argv)
    console = Console(width=None if sys.stdout.isatty() else 160)
    pyspy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if pyspy is None:
        console.print("py-spy is not installed: .venv/bin/pip install py-spy")
        return 2
    use_perf = not args.no_perf and shutil.which("perf") is not None
    if not use_perf and not args.no_perf:
        console.print("[yellow]perf not found (apt-get install linux-perf): py-spy's view only[/]")
    terminate_on_sigterm()
    args.out.mkdir(parents=True, exist_ok=True)
    fed, root, made = fq.prepare(args.dir)
    request = broker_pb2.QueryRequest(query=query_to_pb(fq.QUERY)).SerializeToString()
    pool = fq.TokenPool(fed)
    load = fq.Load(fed.broker_address, fed.ca_cert.read_bytes(), request, pool)
    errors: list[str] = []
    try:
        with fq.real_topology(fed, args.residents, console) as pids:
            fq.verify_sample(fed, request)
            pool.fill(0)
            probe = load.run(fq.REAL, args.concurrency, 0.5, 2.0, pids)
            window = args.warmup + args.duration + 1.0
            pool.fill(fq.token_estimate(2 * probe.throughput, 0.0, window, args.concurrency))
            targets = [Profiled("broker", pids["broker"][0]), Profiled("node", pids["nodes"][0])]
            sampler = threading.Thread(
                target=lambda: errors.extend(
                    run_profilers(
                        targets,
                        args.out,
                        args.warmup,
                        args.duration,
                        args.rate,
                        args.perf_freq,
                        use_perf,
                        pyspy,
                    )
                ),
            )
            sampler.start()
            with console.status(f"profiling broker and node at concurrency {args.concurrency}"):
                level = load.run(fq.REAL, args.concurrency, 0.0, window, pids)
                sampler.join()
    finally:
        if made:
            shutil.rmtree(root, ignore_errors=True)
    if errors:
        console.print(f"[red]profiler problems: {errors}; see {args.out / 'profilers.log'}[/]")
    for t in targets:
        raw = args.out / f"{t.role}.pyspy.txt"
        if raw.exists():
            t.py_cats, t.py_leaves, t.py_modules, t.py_native = pyspy_breakdown(raw)
        data = args.out / f"{t.role}.perf.data"
        if use_perf and data.exists():
            t.perf_cats, t.perf_syms = perf_breakdown(data)
            data.unlink()  # large and machine-specific; the summary below keeps what matters
    cpu = {"broker": level.cpu_ms_per_query("broker"), "node": level.cpu_ms_per_query("nodes") / 3}
    per_process = {t.role: t.combined() for t in targets}
    total_ms = cpu["broker"] + 3 * cpu["node"]
    per_query = {
        cat: (
            cpu["broker"] * per_process["broker"][cat] + 3 * cpu["node"] * per_process["node"][cat]
        )
        / total_ms
        for cat in CATEGORIES
    }
    console.print(
        f"Load: {level.throughput:.1f} queries/s at concurrency {args.concurrency}; CPU per query "
        f"broker {cpu['broker']:.2f} ms, each node {cpu['node']:.2f} ms, "
        f"load generator {level.cpu_ms_per_query('generator'):.2f} ms; "
        f"other load {level.other_load:.2f} cores."
    )
    console.print(
        breakdown_table(
            "Where the CPU goes"
            + (" (perf + py-spy)" if use_perf else " (py-spy: Python time only)"),
            {
                "broker": per_process["broker"],
                "one node": per_process["node"],
                f"per query (broker + 3 nodes, {total_ms:.1f} ms)": per_query,
            },
        )
    )
    for t in targets:
        if t.perf_syms:
            console.print(top_table(f"{t.role}: hottest native symbols (perf)", t.perf_syms))
        console.print(top_table(f"{t.role}: hottest Python leaves (py-spy, GIL held)", t.py_leaves))
        console.print(
            top_table(f"{t.role}: Python time by project function (innermost)", t.py_modules)
        )
    summary = {
        "name": NAME,
        "concurrency": args.concurrency,
        "duration_s": args.duration,
        "throughput_qps": level.throughput,
        "cpu_ms_per_query": {**cpu, "generator": level.cpu_ms_per_query("generator")},
        "other_load_cores": level.other_load,
        "method": "perf record -g (all threads, CPU clock) for native code and kernel; py-spy "
        "--gil to split the interpreter's share; weighted by CPU per query (broker + 3 nodes)",
        "breakdown_per_process": per_process,
        "breakdown_per_query": per_query,
        "perf_categories": {t.role: dict(t.perf_cats) for t in targets},
        "pyspy_categories": {t.role: dict(t.py_cats) for t in targets},
        "pyspy_native_leaf_samples": {t.role: t.py_native for t in targets},
        "top_native_symbols": {t.role: t.perf_syms.most_common(25) for t in targets},
        "top_python_leaves": {t.role: t.py_leaves.most_common(25) for t in targets},
        "python_by_project_function": {t.role: t.py_modules.most_common(25) for t in targets},
        "parameters": {
            "residents_per_city": args.residents,
            "query": fq.QUERY_TEXT,
            "pyspy_rate": args.rate,
            "perf_freq": args.perf_freq,
            **environment(),
        },
    }
    path = args.out / f"{NAME}.json"
    path.write_text(json.dumps(summary, indent=2) + "\n")
    console.print(f"Wrote {path} (py-spy collapsed stacks beside it: *.pyspy.txt).")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted; every process this run started has been stopped", file=sys.stderr)
        sys.exit(130)
