"""The audit export bundle: a self-contained directory an auditor verifies with no network.

    manifest.json       {"format", "origin", "party", "role", "size"}
    entries.jsonl       one line per log entry: {"entry": base64, "index", "kind"}
    checkpoints.jsonl   one line per signed checkpoint: {"note", "size"}
    cosignatures.jsonl  cities' cosignatures of this log's checkpoints: {"cosignature", "size", "witness"}
    trust/v<N>.json     every trust bundle version the log's owner installed (DSSE, as signed)
    agreements/<id>-v<N>.json  the agreements its entries reference (DSSE, as signed)

Every line and file is in one canonical form (sorted keys, no spaces, canonical base64), so that
any changed byte is detected: entries by the Merkle root, everything else by a byte comparison
with its canonical re-encoding. The manifest's authority is the checkpoints, never itself.

I/O boundary: `export` reads the log's database and writes the bundle's files; `line` and `b64`
are the pure encodings both it and the verifier (audit.checks, audit.bundle_reader) rely on.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, select

from audit.schema import log_checkpoints, log_entries

FORMAT = "citybroker-audit-bundle/1"
MANIFEST, ENTRIES, CHECKPOINTS, COSIGNATURES = (
    "manifest.json",
    "entries.jsonl",
    "checkpoints.jsonl",
    "cosignatures.jsonl",
)
TRUST_DIR, AGREEMENTS_DIR = "trust", "agreements"
PAGE = 10_000


def line(obj: dict[str, Any]) -> bytes:
    """The one accepted encoding of a bundle line (all values here are strings and integers)."""
    return (
        json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"
    )


def b64(data: bytes) -> str:
    """The one accepted base64 encoding of `data` (standard alphabet, padded)."""
    return base64.b64encode(data).decode()


@dataclass(frozen=True)
class ExportSpec:
    """Whose log a bundle holds, and what it carries besides the log's entries and checkpoints."""

    origin: str
    party: str
    role: str
    trust_envelopes: Iterable[bytes]
    agreement_envelopes: Iterable[tuple[str, int, bytes]] = ()
    cosignatures: Iterable[tuple[int, str, str]] = ()  # (tree size, witness city, line)


Progress = Callable[[int, int], None]


def export(engine: Engine, out: Path, spec: ExportSpec, progress: Progress | None = None) -> int:
    """Write the log in `engine` as a bundle into the new directory `out`; returns its size.

    The size is that of the latest checkpoint, so the bundle is exactly what the log signed,
    even while appends go on.
    """
    out.mkdir(parents=True, exist_ok=False)
    size = _write_checkpoints(engine, out / CHECKPOINTS)
    _write_entries(engine, out / ENTRIES, size, progress)
    with (out / COSIGNATURES).open("wb") as f:
        for tree_size, witness, note in spec.cosignatures:
            f.write(line({"size": tree_size, "witness": witness, "cosignature": note}))
    (out / TRUST_DIR).mkdir()
    for env in spec.trust_envelopes:
        version = json.loads(base64.b64decode(json.loads(env)["payload"]))["version"]
        (out / TRUST_DIR / f"v{int(version)}.json").write_bytes(env)
    (out / AGREEMENTS_DIR).mkdir()
    for agreement_id, version, env in spec.agreement_envelopes:
        (out / AGREEMENTS_DIR / f"{agreement_id}-v{version}.json").write_bytes(env)
    manifest = {
        "format": FORMAT,
        "origin": spec.origin,
        "party": spec.party,
        "role": spec.role,
        "size": size,
    }
    # Written last: a bundle whose export was interrupted has no manifest and never verifies.
    (out / MANIFEST).write_bytes(line(manifest))
    return size


def _write_checkpoints(engine: Engine, path: Path) -> int:
    """Write every checkpoint; return the size of the latest, the bundle's extent."""
    with engine.connect() as conn:
        checkpoints = conn.execute(
            select(log_checkpoints.c.tree_size, log_checkpoints.c.note).order_by(
                log_checkpoints.c.tree_size
            )
        ).all()
    with path.open("wb") as f:
        for tree_size, note in checkpoints:
            f.write(line({"size": tree_size, "note": note}))
    return checkpoints[-1][0] if checkpoints else 0


def _write_entries(engine: Engine, path: Path, size: int, progress: Progress | None) -> None:
    with path.open("wb") as f:
        # A page per connection, so memory and the read transaction stay short for any size.
        for start in range(0, size, PAGE):
            with engine.connect() as conn:
                rows = conn.execute(
                    select(log_entries.c.idx, log_entries.c.entry, log_entries.c.kind)
                    .where(log_entries.c.idx >= start, log_entries.c.idx < min(size, start + PAGE))
                    .order_by(log_entries.c.idx)
                ).all()
            for idx, entry, kind in rows:
                f.write(line({"index": idx, "kind": kind, "entry": b64(bytes(entry))}))
            if progress:
                progress(min(size, start + PAGE), size)
