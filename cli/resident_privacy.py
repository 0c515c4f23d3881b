"""`citybroker node consent erase` (a resident's erasure through the node, GDPR Art. 17) and what
an audit export adds for committed entries: the erasures always, the openings (personal data)
only for an auditor the city names on purpose."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape

from cli.output import console, fail
from domain.errors import CallFailed
from edge.operator_client import OperatorClient
from infra.config import Section, load_toml

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

OperatorOpt = Annotated[
    Path,
    typer.Option(
        "--operator",
        help="Operator connection file (TOML: node, ca_cert, cert, key), as "
        "`citybroker demo` writes operator-<city>.toml.",
    ),
]


def erase(
    resident: Annotated[str, typer.Argument(help="The resident id to erase.")],
    operator: OperatorOpt,
    yes: Annotated[
        bool, typer.Option("--yes", help="Confirm: the erasure cannot be undone.")
    ] = False,
) -> None:
    """Erase a resident (GDPR Art. 17): their consent records, events, receipts and salts, and the
    link from their transparency record, in one transaction. The node's log still verifies; its
    commitments to the erased statements are reported as erased. Exit status: 0 erased, 1 the
    node refused (for example RESIDENT_UNKNOWN: nothing changed), 2 not confirmed."""
    if not yes:
        raise fail(f"erasing {resident!r} cannot be undone; run again with --yes to confirm", 2)
    section = Section(load_toml(operator), operator)
    client = OperatorClient(
        section.str("node"), section.path_("ca_cert"), section.path_("cert"), section.path_("key")
    )
    try:
        with client:
            done = client.erase_resident(resident)
    except CallFailed as e:
        r = e.error
        raise fail(f"the node refused: {r.code} {r.reason}: {r.message}", 1) from None
    console.print(
        escape(
            f"erased resident {resident}: {done.records} consent records, {done.events} events, "
            f"{done.statements} logged receipts opened no more, {done.batch_members} imported "
            "events unlinked from their batch statements; the log's commitments to them are "
            "now reported as erased"
        ),
        soft_wrap=True,
    )


def commitment_export(engine: Engine, party: str, role: str, auditor: str | None) -> dict[str, Any]:
    """The ExportSpec fields (audit.bundle) for a node's committed entries: its erasures, and
    its openings only when `auditor` names whom the city exports personal data for. A broker's
    committed entries (attribute checks' queries) have openings and no erasures."""
    if role != "node":
        if not auditor:
            return {}
        from audit.bundle import exchange_openings_below

        return {
            "openings": lambda size: exchange_openings_below(engine, size),
            "personal_data_for": auditor,
        }
    from node import log_openings

    fields: dict[str, Any] = {"erasures": log_openings.erasures(engine)}
    if auditor:
        fields["openings"] = lambda size: log_openings.all_openings(engine, party, size)
        fields["personal_data_for"] = auditor
    return fields
