"""bench/results/SUMMARY.md: one row per headline figure, from the results the benchmarks wrote.

Each row gives the value, its baseline from the same run, the ratio, the goal, whether it is met,
and when and on which commit it was measured, so that a figure which slid, or was never re-measured
after a change, shows at the next `make bench`. A headline whose result file or figure is missing
is listed as not measured rather than left out.

    .venv/bin/python bench/summary.py          # rewrite SUMMARY.md from bench/results/*.json
"""

from __future__ import annotations

import json
import operator
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import RESULTS_DIR, fmt_number


@dataclass(frozen=True)
class Headline:
    """A figure the project holds itself to: `of` says whether the goal applies to the figure's
    value or to its ratio to the baseline, `at_least` whether the goal is a floor or a ceiling."""

    title: str
    figure: str  # "<results file stem>:<figure name>"
    of: str  # "value" or "ratio"
    goal: float
    at_least: bool
    # The figure's parameter holding the size it was measured at; "{n}" in the title shows it
    # (`make bench` runs some benchmarks smaller than `make bench-full`).
    size: str | None = None

    def met(self, measured: float) -> bool:
        """Whether `measured` reaches the goal."""
        compare: Callable[[float, float], bool] = operator.ge if self.at_least else operator.le
        return compare(measured, self.goal)


HEADLINES = [
    Headline(
        "federated query: best throughput / bare fan-out",
        "federated_query:federated_query.throughput_ratio.best",
        "value",
        0.35,
        at_least=True,
    ),
    Headline(
        "federated query: CPU per query, bare / real",
        "federated_query:federated_query.cpu_ratio.*",
        "value",
        0.35,
        at_least=True,
    ),
    Headline(
        "federated query: p50 latency at concurrency 1, real / bare",
        "federated_query:federated_query.latency_p50.c1",
        "ratio",
        4.0,
        at_least=False,
    ),
    *(
        Headline(
            f"minimisation, {{n}} residents, {engine}: end to end / raw SQL",
            f"minimisation:minimisation.{engine}.end_to_end",
            "ratio",
            1.5,
            at_least=False,
            size="residents",
        )
        for engine in ("duckdb", "sqlite", "postgresql")
    ),
    *(
        Headline(
            f"node peak resident memory, {{n}} residents, {engine} (MB)",
            f"minimisation:minimisation.{engine}.node_peak_rss",
            "value",
            300.0,
            at_least=False,
            size="residents",
        )
        for engine in ("duckdb", "sqlite", "postgresql")
    ),
    Headline(
        "idle node resident memory, demo city (MB)",
        "federated_query:federated_query.idle_node_rss",
        "value",
        150.0,
        at_least=False,
    ),
    Headline(
        "consent import, {n} events (events/s)",
        "consent_import:consent_import.events_per_s",
        "value",
        20_000.0,
        at_least=True,
        size="events",
    ),
    Headline(
        "log appends, durable, sustained (entries/s)",
        "log_append:log_append.sustained.throughput.c64",
        "value",
        5_000.0,
        at_least=True,
    ),
    Headline(
        "bundle verification, default workers / raw one-thread Ed25519",
        "verify_bundle:verify_bundle.rate_ratio.100000",
        "value",
        0.7,
        at_least=True,
    ),
    Headline(
        "differencing guard, warm, 10,000 earlier cells, 1,000,000 residents (ms per query)",
        "differencing_guard:differencing_guard.guard_step.warm",
        "value",
        20.0,
        at_least=False,
    ),
]


def _figures(results: Path) -> dict[str, dict[str, Any]]:
    """Every figure of every result file, by "<stem>:<name>"."""
    found: dict[str, dict[str, Any]] = {}
    for path in sorted(results.glob("*.json")):
        try:
            figures = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        for figure in figures if isinstance(figures, list) else []:
            if isinstance(figure, dict) and "name" in figure:
                found[f"{path.stem}:{figure['name']}"] = figure
    return found


def _find(figures: dict[str, dict[str, Any]], name: str) -> dict[str, Any] | None:
    """The figure called `name`; a name ending in "*" matches the first figure it prefixes
    (the CPU ratio is named after the concurrency it was taken at)."""
    if not name.endswith("*"):
        return figures.get(name)
    return next((f for key, f in sorted(figures.items()) if key.startswith(name[:-1])), None)


def _title(headline: Headline, parameters: dict[str, Any]) -> str:
    """The headline's title with the size its figure was measured at ("?" if not recorded)."""
    if headline.size is None:
        return headline.title
    size = parameters.get(headline.size)
    return headline.title.format(n=f"{size:,}" if isinstance(size, int) else "?")


def _row(headline: Headline, figure: dict[str, Any] | None) -> list[str]:
    if figure is None or figure.get("value") is None:
        return [_title(headline, {}), "not measured", "", "", _goal(headline), "no", "", ""]
    measured = figure["value"] if headline.of == "value" else figure.get("ratio")
    parameters = figure.get("parameters", {})
    digits = 3 if figure.get("unit") == "ratio" else 1
    return [
        _title(headline, parameters),
        f"{fmt_number(figure['value'], digits)} {figure.get('unit', '')}".strip(),
        fmt_number(figure.get("baseline"), digits),
        fmt_number(figure.get("ratio"), 3),
        _goal(headline),
        "yes" if measured is not None and headline.met(measured) else "**no**",
        str(parameters.get("measured_at", "")),
        str(parameters.get("commit", "")),
    ]


def _goal(headline: Headline) -> str:
    sign = "≥" if headline.at_least else "≤"
    return f"{headline.of} {sign} {headline.goal:g}"


def render(results: Path) -> str:
    """SUMMARY.md's text for the results in `results`."""
    figures = _figures(results)
    header = ["figure", "value", "baseline", "ratio", "goal", "met", "measured at", "commit"]
    lines = [
        "# Benchmark summary",
        "",
        "Generated by `bench/summary.py` (`make bench` runs it last) from `bench/results/*.json`.",
        "Baselines are measured in the same run as each value; see bench/README.md for each one.",
        "Sizes are those of the run: `make bench` runs minimisation and consent import at 200,000",
        "residents / events, `make bench-full` at the issue's 1,000,000.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for headline in HEADLINES:
        lines.append("| " + " | ".join(_row(headline, _find(figures, headline.figure))) + " |")
    return "\n".join(lines) + "\n"


def main() -> int:
    """Write SUMMARY.md beside the results and print it."""
    text = render(RESULTS_DIR)
    (RESULTS_DIR / "SUMMARY.md").write_text(text)
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
