"""The demo's disclosure regimes: one city's agreement under `cell_key`, and a differencing attempt
(the city total minus the same query over every district but one) that a city under `exact`
refuses (its differencing guard withholds the second answer) and the `cell_key` city answers with
noise (two independently perturbed totals, whose difference is not the district's figure)."""

from __future__ import annotations

import dataclasses

from rich.console import Console
from rich.table import Table

from cli import sandbox
from domain import agreement as agreement_doc
from domain.agreement import CellKeyTerms, DisclosureTerms, Regime
from domain.query import Filter, FilterOp, Measure, MeasureKind, Query
from edge.operator_client import OperatorClient
from edge.partner_client import Answer, PartnerClient

PURPOSE = "urban-mobility-planning"
TRIPS = Measure(MeasureKind.COUNT_RECORDS)


def cell_key_city(fed: sandbox.LocalFederation) -> str:
    """The city whose agreement the demo puts under cell_key: the last one."""
    return list(fed.cities)[-1]


def use_cell_key(fed: sandbox.LocalFederation, operators: dict[str, OperatorClient]) -> None:
    """Version 2 of the cell_key city's agreement with the partner: the same terms, under
    cell_key (counts move by at most 2; cells under 5 residents withheld)."""
    city = cell_key_city(fed)
    terms = dataclasses.replace(
        fed.agreement(city, version=2),
        disclosure=DisclosureTerms(Regime.CELL_KEY, CellKeyTerms(2, 5)),
    )
    layout = fed.cities[city]
    operators[city].activate_agreement(agreement_doc.sign(terms, layout.signer, fed.partner_signer))


def _total(answer: Answer) -> str:
    cells = [c for c in answer.cells if not c.withheld]
    if not cells:
        refused = [c.reason for c in answer.cities if c.reason]
        return f"withheld ({', '.join(refused)})" if refused else "withheld"
    return f"{cells[0].values[TRIPS.name]:,.0f}"


def differencing_example(
    client: PartnerClient, fed: sandbox.LocalFederation, console: Console
) -> int:
    """Example 6: in one exact city and the cell_key city, the total of trips, then the trips of
    every district but the first; printed side by side. Returns how many signatures were
    verified."""
    t = Table(
        title="6. Differencing: the city total minus every district but one should give that "
        "district's trips"
    )
    for col in ("city", "regime", "left out", "total", "all but it", "what differencing gives"):
        t.add_column(col)
    verified = 0
    for city, regime in ((next(iter(fed.cities)), "exact"), (cell_key_city(fed), "cell_key")):
        districts = fed.cities[city].plan.districts
        total = client.query(Query("mobility", PURPOSE, (TRIPS,), cities=(city,)))
        rest = client.query(
            Query(
                "mobility",
                PURPOSE,
                (TRIPS,),
                filters=(Filter("district", FilterOp.IN, districts[1:]),),
                cities=(city,),
            )
        )
        verified += total.signatures_verified + rest.signatures_verified
        a, b = _total(total), _total(rest)
        if "withheld" in a + b:
            outcome = "nothing: the differencing guard withheld the second answer"
        else:
            difference = float(a.replace(",", "")) - float(b.replace(",", ""))
            outcome = f"{difference:,.0f}" + (
                ", off by up to 4 (both totals perturbed, each by up to 2)"
                if regime == "cell_key"
                else ""
            )
        t.add_row(city, regime, districts[0], a, b, outcome)
    console.print(t)
    return verified
