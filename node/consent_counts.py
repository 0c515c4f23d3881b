"""How many consent events of each kind a node has recorded, by source
(`node.schema.consent_event_counts`): added to in the transaction that writes the events, by the
registry and by bulk imports alike, so that the node's metrics read a few rows at scrape time, never
consent_events, and count what every process writing to the database recorded."""

from __future__ import annotations

from collections.abc import Mapping

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from node.schema import consent_event_counts

REGISTRY = "registry"  # the API and expiry (node.consent)
IMPORT = "import"  # bulk imports (node.consent_import)

_c = consent_event_counts.c


def _upsert(dialect: str) -> sa.Insert:
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stmt = insert(consent_event_counts)
    return stmt.on_conflict_do_update(
        index_elements=[_c.event, _c.source], set_={"events": _c.events + stmt.excluded.events}
    )


_UPSERT = {name: _upsert(name) for name in ("postgresql", "sqlite")}


def add(conn: sa.Connection, source: str, events: Mapping[str, int]) -> None:
    """Add `events` (event → how many) to `source`'s counts, in `conn`'s transaction. Its rows stay
    locked until that commits: make it the transaction's last statement. Rows go in event order,
    so that two writers never wait for each other in a cycle."""
    rows = [{"event": e, "source": source, "events": n} for e, n in sorted(events.items()) if n]
    if rows:
        conn.execute(_UPSERT["postgresql" if conn.dialect.name == "postgresql" else "sqlite"], rows)


def read(engine: sa.Engine) -> list[tuple[str, str, int]]:
    """Every (event, source, how many) counted."""
    with engine.connect() as conn:
        rows = conn.execute(sa.select(_c.event, _c.source, _c.events).order_by(_c.event, _c.source))
        return [(e, s, int(n)) for e, s, n in rows]
