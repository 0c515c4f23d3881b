"""A node's datasets in a warehouse it may only read.

The node writes nothing to the data source but a session-local temporary table: the consent mirror
(node.aggregate.push_consenting), so that the consent filter runs where the data lives. Such a
table is private to the node's connection and gone when it closes, so a role with SELECT on the
datasets and nothing else will do, as long as it may create temporary tables (PostgreSQL grants
TEMPORARY on every database to PUBLIC unless an administrator revoked it). Where it may not (TEMP
revoked, a read-only transaction default, a hot standby), every query on a resident-linked dataset
would fail; the node checks this at start-up instead and names the grant it needs.
"""

from __future__ import annotations

import sqlalchemy as sa

from domain.errors import StoreError

_PROBE = "citybroker_probe"


def check_session_tables(engine: sa.Engine) -> None:
    """The data source lets this connection create (and fill) a temporary table of its own;
    StoreError DATA_SOURCE_NO_TEMPORARY_TABLES otherwise. Nothing outlives the check."""
    try:
        with engine.connect() as conn:
            conn.execute(sa.text(f"CREATE TEMPORARY TABLE {_PROBE} (x INTEGER)"))
            conn.execute(sa.text(f"INSERT INTO {_PROBE} VALUES (1)"))
            conn.execute(sa.text(f"DROP TABLE {_PROBE}"))
            conn.rollback()
    except sa.exc.DBAPIError as e:
        url = engine.url.render_as_string(hide_password=True)
        raise StoreError(
            f"the data source {url} does not let the node create a temporary table, which it "
            "needs for the consent filter of resident-linked datasets (a table private to its "
            "session; nothing is written to the data). Grant it, e.g. on PostgreSQL "
            f"`GRANT TEMPORARY ON DATABASE ... TO {engine.url.username or 'the node role'}`: "
            f"{str(e.orig).splitlines()[0]}",
            reason="DATA_SOURCE_NO_TEMPORARY_TABLES",
        ) from None
