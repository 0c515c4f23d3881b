"""How each disclosure regime an agreement names shapes an aggregate answer (no I/O):

- `exact`: cells under k (the agreement's min_cell_size, at least the node's floor) and dominated
  sums withheld, with secondary suppression (node.disclosure) and the differencing guard;
- `cell_key`: cells under the agreement's small_cell_threshold (at least the node's floor) and
  dominated sums withheld, the same secondary suppression, and every released value perturbed by
  the cell-key method (node.cell_key); no differencing guard, since differencing returns noise;
- `dp`: differential privacy (node.privacy), unchanged; no dominance rule (the noise covers it).

Every signed result states the regime and its parameters (`statement`).
"""

from __future__ import annotations

from typing import Any

from domain.agreement import DEFAULT_K, Agreement, CellKeyTerms, DominanceTerms, Regime
from domain.query import Measure
from node import cell_key
from node.aggregate import Cell, Scan
from node.secrets import NodeSecret


def k_for(agreement: Agreement, k_floor: int) -> int:
    """The smallest cell the agreement's regime releases, never under the node's own floor."""
    terms = agreement.disclosure_terms
    if terms.regime is Regime.CELL_KEY:
        return max((terms.cell_key or CellKeyTerms()).small_cell_threshold, k_floor)
    return max(agreement.min_cell_size or DEFAULT_K, k_floor)


def uses_cell_keys(agreement: Agreement) -> bool:
    """Whether answers under the agreement are perturbed by the cell-key method."""
    return agreement.disclosure_terms.regime is Regime.CELL_KEY


def dominance(agreement: Agreement) -> DominanceTerms | None:
    """The dominance rule sums and averages pass under the agreement (None under dp)."""
    terms = agreement.disclosure_terms
    return None if terms.regime is Regime.DP else terms.dominance


def statement(agreement: Agreement) -> dict[str, Any]:
    """The disclosure terms in force, as a signed result states them."""
    return agreement.disclosure_terms.to_payload()


def observational_secret(node_secret: NodeSecret, dataset: str) -> bytes:
    """The secret keying observational cells (node.cell_key.content_key): derived from the node's
    long-lived secret, so such cells keep their perturbation across signing-key rotations."""
    return node_secret.derive(f"citybroker cell keys\0{dataset}".encode())


def perturb(
    cells: list[Cell], scan: Scan, agreement: Agreement, secret: bytes
) -> list[dict[str, Any]]:
    """The released cells under the agreement's cell-key terms (`perturb_cells`)."""
    terms = agreement.disclosure_terms.cell_key or CellKeyTerms()
    return perturb_cells(cells, scan.query.measures, terms, secret)


def perturb_cells(
    cells: list[Cell], measures: tuple[Measure, ...], terms: CellKeyTerms, secret: bytes
) -> list[dict[str, Any]]:
    """The released cells under the cell-key method, as a result lists them (key, values, records:
    the perturbed record count, so that averages still merge by weight). `secret` keys cells of
    observational data, which have no stored keys."""
    out: list[dict[str, Any]] = []
    for c in cells:
        key = (
            cell_key.cell_key(c.key_sum)
            if c.key_sum is not None
            else cell_key.content_key(secret, c.records, c.values)
        )
        values, records = cell_key.perturbed(
            cell_key.CellFacts(c.values, c.records, key, c.top or {}), measures, terms
        )
        out.append({"key": c.key, "values": values, "records": records})
    return out
