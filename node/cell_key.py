"""The cell-key method (disclosure regime `cell_key`). Pure functions, no I/O.

This is the perturbation of the Australian Bureau of Statistics' TableBuilder (Fraser & Wooton,
"A proposed method for confidentialising tabular output to protect against differencing", UNECE
work session on statistical data confidentiality, 2005; ABS, "TableBuilder: perturbation", and
Thompson, Broadfoot & Elazar, "Methodology for the automatic confidentialisation of statistical
outputs from remote servers at the Australian Bureau of Statistics", 2013):

- every resident has a record key, drawn at random once by the node and never changed
  (node.schema.resident_cell_keys), uniform on 0 .. KEY_RANGE - 1;
- a cell's key is the sum of its records' keys modulo KEY_RANGE (each record carries its
  resident's key; the sum is computed in the aggregate's own SQL, node.aggregate);
- a count is perturbed by a value read from a fixed perturbation table at (the count, the cell
  key): a deterministic function of who contributed, so the same cell always gets the same answer
  and asking for it again, or by another route, learns nothing new, while two cells that differ by
  one resident get unrelated perturbations, so differencing them returns noise.

The table (`perturbation`): for a count v, the perturbation p is drawn by the cell key from a
triangular distribution on -m .. m, m = min(max_perturbation, v - small_cell_threshold), weight
m + 1 - |p|: bounded by the agreement's `max_perturbation`, mean zero for every count (unbiased
totals: "zero-sum" in expectation), never taking a released count below the small-cell
threshold (so never negative; cells under the threshold are withheld, not perturbed).

Magnitudes. A sum is perturbed consistently with its cell's counts, as the ABS continuous
perturbation does, by an amount scaled to the cell's largest contribution (the largest one
resident's total, or one record's value for observational data): sum + top * p / m_max, where p
is the cell's perturbation at full width m_max = max_perturbation, so it moves by at most its top
contribution, which is the one value differencing would otherwise reveal. An average is that
perturbed sum over the cell's (unreleased) record count. Minima and maxima are released as they
are, only where the agreement allows extremes on the field. Sums and averages also pass the
dominance rule (node.dominance) before any of this.

Observational data has no residents, so no stored keys: a cell's key is then an HMAC, under a
node secret, of the cell's exact content (record count and measures), again the same for the same
contributors (`content_key`).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
from dataclasses import dataclass

from domain.agreement import CellKeyTerms
from domain.query import Measure, MeasureKind

# Record keys and cell keys are in 0 .. KEY_RANGE - 1 (ABS used 0 .. 255 for small tables; a wider
# range makes collisions between cells' keys rarer and the perturbation table's quantiles finer).
KEY_RANGE = 1 << 20


def cell_key(record_keys_sum: int) -> int:
    """A cell's key from the sum of its records' keys."""
    return int(record_keys_sum) % KEY_RANGE


def content_key(secret: bytes, records: int, values: dict[str, float | int]) -> int:
    """A cell key for observational data (no residents): keyed by the cell's exact content."""
    body = json.dumps([records, sorted(values.items())], separators=(",", ":"))
    digest = hmac.new(secret, body.encode(), hashlib.sha256).digest()
    return int.from_bytes(digest[:8], "big") % KEY_RANGE


@functools.lru_cache(maxsize=4096)
def _cumulative(width: int) -> tuple[int, ...]:
    """Cumulative triangular weights of -width .. width (total (width + 1) ** 2)."""
    out, total = [], 0
    for p in range(-width, width + 1):
        total += width + 1 - abs(p)
        out.append(total)
    return tuple(out)


def _draw(width: int, key: int) -> int:
    """The perturbation at quantile key / KEY_RANGE of the triangular table of this width."""
    if width <= 0:
        return 0
    cumulative = _cumulative(width)
    total = cumulative[-1]
    # The smallest p whose cumulative weight exceeds the quantile; integer arithmetic throughout.
    for i, c in enumerate(cumulative):
        if key * total < c * KEY_RANGE:
            return i - width
    return width  # unreachable: key < KEY_RANGE


def perturbation(value: int, key: int, terms: CellKeyTerms) -> int:
    """The perturbation of count `value` (at least the small-cell threshold) in a cell with key
    `key`: within +-max_perturbation, mean zero over keys, never below the threshold."""
    width = min(terms.max_perturbation, value - terms.small_cell_threshold)
    return _draw(width, key)


@dataclass(frozen=True)
class CellFacts:
    """What perturbing one released cell needs: its exact measures and record count, its key,
    and each summed field's largest contribution."""

    values: dict[str, float | int]
    records: int
    key: int
    top: dict[str, float]


def perturbed(
    cell: CellFacts, measures: tuple[Measure, ...], terms: CellKeyTerms
) -> tuple[dict[str, float | int], int]:
    """The cell's released measures and record count under the cell-key method."""
    out: dict[str, float | int] = {}
    unit = _draw(terms.max_perturbation, cell.key) / terms.max_perturbation
    for m in measures:
        v = cell.values[m.name]
        if m.kind in (MeasureKind.COUNT_RECORDS, MeasureKind.COUNT_RESIDENTS):
            out[m.name] = int(v) + perturbation(int(v), cell.key, terms)
        elif m.kind is MeasureKind.SUM:
            out[m.name] = _rounded(float(v) + cell.top.get(m.field, 0.0) * unit)
        elif m.kind is MeasureKind.AVG:
            shift = cell.top.get(m.field, 0.0) * unit / max(cell.records, 1)
            out[m.name] = _rounded(float(v) + shift)
        else:  # min, max: released as they are (the agreement allows extremes on the field)
            out[m.name] = v
    records = cell.records + perturbation(cell.records, cell.key, terms)
    return out, records


def _rounded(v: float) -> float | int:
    return int(v) if float(v).is_integer() else round(v, 6)
