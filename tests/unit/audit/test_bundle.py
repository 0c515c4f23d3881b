"""Writing a bundle (audit.bundle.export) from an ExportSpec."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine

from audit import bundle as layout
from audit.log import MerkleLog
from audit.schema import metadata
from domain.kinds import LogKind
from keys.ed25519 import Signer

ORIGIN = "citybroker/node/aurora"


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    engine = create_engine(f"sqlite:///{tmp_path / 'log.db'}")
    metadata.create_all(engine)
    with MerkleLog(engine, ORIGIN, Signer.generate()) as log:
        log.append_many([b"one", b"two"], LogKind.EXCHANGE)
    return engine


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_a_bundle_holds_what_its_spec_says(engine: Engine, tmp_path: Path) -> None:
    spec = layout.ExportSpec(
        ORIGIN, "aurora", "node", trust_envelopes=(), cosignatures=[(2, "b", "— x")]
    )
    progress: list[tuple[int, int]] = []
    size = layout.export(
        engine, tmp_path / "a", spec, progress=lambda d, t: progress.append((d, t))
    )
    assert size == 2 and progress == [(2, 2)]
    assert (tmp_path / "a" / layout.MANIFEST).read_bytes() == layout.line(
        {"format": layout.FORMAT, "origin": ORIGIN, "party": "aurora", "role": "node", "size": 2}
    )
    assert (tmp_path / "a" / layout.COSIGNATURES).read_bytes() == layout.line(
        {"size": 2, "witness": "b", "cosignature": "— x"}
    )


def test_export_never_writes_into_an_existing_directory(engine: Engine, tmp_path: Path) -> None:
    spec = layout.ExportSpec(ORIGIN, "aurora", "node", trust_envelopes=())
    layout.export(engine, tmp_path / "a", spec)
    with pytest.raises(FileExistsError):
        layout.export(engine, tmp_path / "a", spec)
