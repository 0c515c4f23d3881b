"""The audit export bundle: a self-contained directory an auditor verifies with no network.

    manifest.json       {"format", "origin", "party", "role", "size"}
    entries.jsonl       one line per log entry: {"entry": base64, "index", "kind"}
    checkpoints.jsonl   one line per signed checkpoint: {"note", "size"}
    cosignatures.jsonl  cities' cosignatures of this log's checkpoints: {"cosignature", "size", "witness"}
    trust/v<N>.json     every trust bundle version the log's owner installed (DSSE, as signed)
    agreements/<id>-v<N>.json  the agreements its entries reference (DSSE, as signed)
    erasures.jsonl      committed entries the city erased (no personal data; audit.openings)
    openings.jsonl      only when exported on purpose for one auditor (`personal-data.json`
                        names them): the statements and salts that open the log's commitments

Every line and file is in one canonical form (sorted keys, no spaces, canonical base64), so that
any changed byte is detected: entries by the Merkle root, everything else by a byte comparison
with its canonical re-encoding. The manifest's authority is the checkpoints, never itself.

I/O boundary: `export` reads the log's database and writes the bundle's files; `line` and `b64`
are the pure encodings both it and the verifier (audit.checks, audit.bundle_reader) rely on.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, select

from audit.schema import exchange_openings, log_checkpoints, log_entries
from domain.commitment import Opening

FORMAT = "citybroker-audit-bundle/1"
MANIFEST, ENTRIES, CHECKPOINTS, COSIGNATURES = (
    "manifest.json",
    "entries.jsonl",
    "checkpoints.jsonl",
    "cosignatures.jsonl",
)
TRUST_DIR, AGREEMENTS_DIR = "trust", "agreements"
OPENINGS, ERASURES, PERSONAL_DATA = "openings.jsonl", "erasures.jsonl", "personal-data.json"
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
    # Committed entries erased: (log index, batch members erased, or None for the whole entry).
    erasures: Iterable[tuple[int, int | None]] = ()
    # Personal data, only on purpose: the openings of the log's commitments below a tree size,
    # exported for the auditor `personal_data_for` names (both or neither).
    openings: Callable[[int], Iterable[Opening]] | None = None
    personal_data_for: str = ""


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
    _write_commitment_files(out, spec, size)
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


def _write_commitment_files(out: Path, spec: ExportSpec, size: int) -> None:
    """The erasures (always) and, when the city exports them on purpose, the openings."""
    with (out / ERASURES).open("wb") as f:
        for index, members in spec.erasures:
            if index < size:
                f.write(line({"index": index, "members": members}))
    if spec.openings is None and not spec.personal_data_for:
        return
    if spec.openings is None or not spec.personal_data_for:
        raise ValueError("openings are exported only for a named auditor")
    (out / PERSONAL_DATA).write_bytes(line({"auditor": spec.personal_data_for}))
    with (out / OPENINGS).open("wb") as f:
        for opening in spec.openings(size):
            f.write(line(opening_line(opening)))


def opening_line(opening: Opening) -> dict[str, Any]:
    """The openings.jsonl line of an opening: a statement and its salt, or one batch member."""
    if opening.statement:
        return {
            "index": opening.index,
            "salt": b64(opening.salt),
            "statement": b64(opening.statement),
        }
    return {
        "index": opening.index,
        "member": b64(opening.member_payload),
        "member_salt": b64(opening.member_salt),
    }


def exchange_openings_below(engine: Engine, below: int) -> Iterator[Opening]:
    """The openings a party keeps of its committed exchange statements (exchange_openings) of
    entries below index `below`, in log order: personal data, for an auditor on purpose."""
    o = exchange_openings.c
    after = -1
    while True:
        with engine.connect() as conn:
            rows = conn.execute(
                select(o.log_index, o.statement, o.salt)
                .where(o.log_index > after, o.log_index < below)
                .order_by(o.log_index)
                .limit(PAGE)
            ).all()
        if not rows:
            return
        for index, statement, salt in rows:
            yield Opening(int(index), bytes(statement), bytes(salt))
        after = int(rows[-1][0])


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
