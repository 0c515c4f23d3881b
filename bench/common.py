"""What every benchmark shares: the result format, tables, the run's environment, child processes.

Result format (bench/results/<name>.json): a JSON list with one object per figure, each with at least

    name              dotted, starts with the benchmark's name ("federated_query.throughput.c8")
    value             the number measured
    unit              "queries/s", "ms", "ratio" ...
    higher_is_better  true or false
    baseline          the same measure in the same unit, measured in the same run
    baseline_name     what the baseline is ("federated_query.noop_fanout.throughput.c8")
    parameters        how it was measured (concurrency, durations, data sizes, machine, versions)

plus `ratio` (value / baseline, for convenience). Later benchmarks write the same shape, so results can
be collected, compared across runs and plotted by one tool.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

BENCH_DIR = Path(__file__).resolve().parent
PROJECT_ROOT = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"


@dataclass(frozen=True)
class Figure:
    """One measured figure and its baseline from the same run."""

    name: str
    value: float
    unit: str
    higher_is_better: bool
    baseline: float
    baseline_name: str
    parameters: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        return self.value / self.baseline if self.baseline else None

    def to_json(self) -> dict[str, Any]:
        """As a JSON object; a number that could not be measured (NaN) is null."""
        out = asdict(self)
        out["ratio"] = self.ratio
        for key in ("value", "baseline", "ratio"):
            if isinstance(out[key], float) and not math.isfinite(out[key]):
                out[key] = None
        return out


def write_figures(path: Path, figures: Sequence[Figure]) -> Path:
    """Write the figures as a JSON list (the shared result format); returns the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([f.to_json() for f in figures], indent=2) + "\n")
    return path


def read_figures(path: Path) -> list[Figure]:
    out = []
    for obj in json.loads(path.read_text()):
        obj.pop("ratio", None)
        out.append(Figure(**obj))
    return out


def fmt_number(v: float | None, digits: int = 1) -> str:
    if v is None:
        return "-"
    return f"{v:,.{digits}f}"


def figures_table(title: str, figures: Iterable[Figure]) -> Table:
    """A generic table of figures: value, baseline, ratio and whether that is good."""
    t = Table(title=title)
    for col, justify in (
        ("figure", "left"),
        ("value", "right"),
        ("baseline", "right"),
        ("unit", "left"),
        ("ratio", "right"),
    ):
        t.add_column(col, justify=justify)  # type: ignore[arg-type]
    for f in figures:
        digits = 3 if f.unit == "ratio" else 1
        t.add_row(
            f.name,
            fmt_number(f.value, digits),
            fmt_number(f.baseline, digits),
            f.unit + ("" if f.higher_is_better else " (lower is better)"),
            fmt_number(f.ratio, 3),
        )
    return t


def _git(*argv: str) -> str:
    proc = subprocess.run(
        ["git", *argv], cwd=PROJECT_ROOT, capture_output=True, text=True, check=False
    )
    return proc.stdout.strip() if proc.returncode == 0 else ""


def measured_source(*relative: str) -> dict[str, Any]:
    """Which code was measured: the files' combined SHA-256 and the git commit, with local changes
    flagged (several people work in this tree at once)."""
    digest = hashlib.sha256()
    for name in relative:
        digest.update((PROJECT_ROOT / name).read_bytes())
    return {
        "file": ", ".join(relative),
        "sha256": digest.hexdigest()[:16],
        "git_head": _git("rev-parse", "--short", "HEAD"),
        "changed_since_head": bool(_git("status", "--porcelain", "--", *relative)),
    }


def environment() -> dict[str, Any]:
    """The machine and versions, for every figure's parameters."""
    import grpc

    return {
        # When and on which commit (a "+" when the tree had uncommitted changes): SUMMARY.md shows them.
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "commit": _git("rev-parse", "--short", "HEAD")
        + ("+" if _git("status", "--porcelain") else ""),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "system": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "grpc": grpc.__version__,
    }


def status_kb(pid: int, key: str) -> int:
    """A /proc/<pid>/status figure in kB (VmRSS, VmHWM); 0 when the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds a process (all its threads) has used so far (Linux /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    # After the ")" closing comm: state is field 0, utime field 11, stime field 12.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy_cpu_s() -> float:
    """CPU seconds the whole machine has been busy (all cores, any process; Linux /proc/stat).

    Compared with the CPU of a benchmark's own processes over the same window it shows how much
    other load (another test run, a build) competed for the cores while the figures were taken.
    """
    try:
        first = Path("/proc/stat").read_text().splitlines()[0].split()
    except OSError:
        return 0.0
    # cpu user nice system idle iowait irq softirq steal ...: busy is all but idle and iowait.
    ticks = [int(v) for v in first[1:9]]
    busy = sum(ticks) - ticks[3] - ticks[4]
    return busy / os.sysconf("SC_CLK_TCK")


class Children:
    """Child processes of a benchmark, stopped together: SIGTERM, then SIGKILL after a grace period.

    Use as a context manager so they stop on any error or Ctrl-C.
    """

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, argv: Sequence[str], env: dict[str, str] | None = None) -> int:
        self.logs.mkdir(parents=True, exist_ok=True)
        with (self.logs / f"{name}.log").open("wb") as out:
            proc = subprocess.Popen(
                list(argv),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=PROJECT_ROOT,
                env=env,
            )
        self.procs.append((name, proc))
        return proc.pid

    def pid(self, name: str) -> int:
        for n, p in self.procs:
            if n == name:
                return p.pid
        raise KeyError(name)

    def check(self) -> None:
        for name, proc in self.procs:
            if proc.poll() is not None:
                tail = (self.logs / f"{name}.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{name} exited with status {proc.returncode}:\n{tail}")

    def stop(self, grace_s: float = 10.0) -> None:
        for _, proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for _, proc in self.procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs.clear()

    def __enter__(self) -> Children:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def terminate_on_sigterm() -> None:
    """Turn SIGTERM into KeyboardInterrupt, so `finally` blocks stop the children either way."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def python() -> str:
    return sys.executable


def console() -> Console:
    return Console(width=None if sys.stdout.isatty() else 140)
