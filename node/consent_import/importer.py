"""The importer: one node database, one city's key and log; `import_file` is what the CLI runs."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa

from audit.log import MerkleLog
from keys.ed25519 import Signer
from node.consent_evidence import ConsentEvidence
from node.consent_import.codec import Codec
from node.consent_import.model import (
    ErrorSink,
    ImportFormat,
    ImportLimits,
    ImportReport,
    Progress,
)
from node.consent_import.parse import Setup
from node.consent_import.pipeline import Run
from node.consent_import.reader import RowReader, open_rows
from node.consent_import.write import compile_statements


class ConsentImporter:
    """Imports consent event files into one node database. Not thread-safe; one run at a time."""

    def __init__(
        self,
        engine: sa.Engine,
        city: str,
        signer: Signer,
        log: MerkleLog,
        known_parties: frozenset[str] | None = None,
        limits: ImportLimits | None = None,
    ) -> None:
        self.engine, self.city = engine, city
        self.evidence = ConsentEvidence(city, signer, log)
        self.known_parties = known_parties
        self.limits = limits or ImportLimits()
        self.codec = Codec(engine.dialect.name == "sqlite")
        self.statements = compile_statements(engine.dialect, self.codec.driver_level)

    def run(
        self,
        path: Path,
        fmt: ImportFormat | None = None,
        on_error: ErrorSink | None = None,
        progress: Progress | None = None,
        actor: str | None = None,
    ) -> ImportReport:
        """Import one file; returns the counts. Error rows go to `on_error` in file order."""
        with open_rows(path, fmt, self.limits) as reader:
            return self.run_rows(reader, on_error, progress, actor)

    def run_rows(
        self,
        reader: RowReader,
        on_error: ErrorSink | None = None,
        progress: Progress | None = None,
        actor: str | None = None,
    ) -> ImportReport:
        """Import the rows of an opened file (see `open_rows`)."""
        default_actor = actor or f"import via {reader.path.name}"
        return Run(self, reader, default_actor, on_error, progress).run()

    def setup(self, default_actor: str, header: tuple[str, ...] | None) -> Setup:
        """What the workers of a run need to know."""
        return Setup(self.city, self.known_parties, default_actor, self.codec.driver_level, header)


def import_file(
    config_path: Path,
    path: Path,
    fmt: ImportFormat | None = None,
    limits: ImportLimits | None = None,
    on_error: ErrorSink | None = None,
    progress: Progress | None = None,
) -> ImportReport:
    """What `citybroker node consent import` does: import a file into the node its config names.

    The input is checked before anything else is opened. The node's database is migrated if it
    needs to be (as the node does on start), recipients are checked against the trust bundle,
    each batch is covered by a statement signed with the city's key and logged in the node's log.
    """
    from infra.party import open_party
    from node.config import NodeConfig

    limits = limits or ImportLimits()
    with open_rows(path, fmt, limits) as reader:
        config = NodeConfig.load(config_path)
        opened = open_party(config, config.origin)
        try:
            parties = frozenset(opened.trust.current.parties)
            importer = ConsentImporter(
                opened.engine, config.city, opened.signer, opened.log, parties, limits
            )
            return importer.run_rows(reader, on_error, progress)
        finally:
            opened.log.close()
            opened.engine.dispose()
