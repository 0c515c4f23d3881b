"""How `citybroker audit verify` shows what a verification covered: each party's log and size,
the parties left out, and the results released but never delivered."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from audit.checks import BundleError
from audit.coverage import Coverage


def failure_json(e: BundleError) -> dict[str, Any]:
    """The JSON report of a failed verification."""
    return {
        "ok": False,
        "file": str(e.file),
        "entry": e.entry,
        "reason": e.reason,
        "message": e.detail,
    }


def print_coverage(console: Console, coverage: Coverage | None) -> None:
    """The parties' logs the bundles covered (and not), then the undelivered results."""
    if coverage is None:
        return
    table = Table(title="Logs covered")
    for col in ("party", "role", "status", "size", "newest cosigned by", "largest seen by others"):
        table.add_column(col)
    for p in coverage.parties:
        seen = "" if p.seen is None else f"{p.seen.size} ({p.seen.how} by {p.seen.by})"
        table.add_row(
            escape(p.party),
            p.role,
            p.status,
            "" if p.size is None else str(p.size),
            escape(", ".join(p.cosigned_by)),
            escape(seen),
        )
    console.print(table)
    for u in coverage.undelivered:
        console.print(
            escape(
                f"released but not delivered: {u.city}'s result for {u.request_id} "
                f"(its log index {u.log_index}); {u.broker}'s receipt says {u.receipt_status}"
            ),
            soft_wrap=True,
        )
