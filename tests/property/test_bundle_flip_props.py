"""Any single byte changed anywhere in an exported set of audit bundles makes the offline verifier
fail with a BundleError that names the bundle holding the changed byte, never another exception."""

from __future__ import annotations

import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from audit.verifier import BundleError, verify_bundles
from tests.integration.audit_bundles import Bundles, build

# The base64 entries dominate the bytes; flips there are the easy case. Two thirds of the examples
# change a byte outside them: anywhere else (JSON structure, checkpoint notes, cosignatures,
# manifests, trust and agreement envelopes), or in the per-entry fields (index, kind) of entries.jsonl.
ENTRY_VALUE = re.compile(rb'"entry":"([^"]*)"')


@dataclass(frozen=True)
class Target:
    bundle: Path
    rel: Path
    data: bytes = field(repr=False)
    structural: tuple[int, ...] = field(repr=False)  # offsets outside any base64 entry value


@dataclass(frozen=True, repr=False)
class Corpus:
    bundles: Bundles
    targets: tuple[Target, ...]


def _structural(data: bytes) -> tuple[int, ...]:
    inside: set[int] = set()
    for m in ENTRY_VALUE.finditer(data):
        inside.update(range(m.start(1), m.end(1)))
    return tuple(i for i in range(len(data)) if i not in inside)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    b = build(tmp_path_factory.mktemp("flip-bundles"))
    verify_bundles(b.all, b.authority)  # the untouched set is good
    targets = []
    for bundle in b.all:
        for path in sorted(p for p in bundle.rglob("*") if p.is_file()):
            data = path.read_bytes()
            if data:
                targets.append(Target(bundle, path.relative_to(bundle), data, _structural(data)))
    assert {t.rel.parts[0] for t in targets} >= {
        "manifest.json",
        "entries.jsonl",
        "checkpoints.jsonl",
        "cosignatures.jsonl",
        "trust",
        "agreements",
    }
    return Corpus(b, tuple(targets))


@settings(max_examples=80, deadline=None)
@given(data=st.data())
def test_any_flipped_byte_is_a_bundle_error_naming_its_bundle(
    corpus: Corpus, data: st.DataObject
) -> None:
    mode = data.draw(st.sampled_from(["anywhere", "outside-base64", "entry-fields"]), label="mode")
    if mode == "entry-fields":
        entries = [t for t in corpus.targets if t.rel.name == "entries.jsonl"]
        target = data.draw(st.sampled_from(entries), label="file")
    else:
        target = data.draw(st.sampled_from(corpus.targets), label="file")
    if mode == "anywhere":
        offset = data.draw(st.integers(0, len(target.data) - 1), label="offset")
    else:
        offset = data.draw(st.sampled_from(target.structural), label="offset")
    mask = data.draw(st.integers(1, 255), label="xor")
    changed = bytearray(target.data)
    changed[offset] ^= mask
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / target.bundle.name
        shutil.copytree(target.bundle, copy)
        (copy / target.rel).write_bytes(bytes(changed))
        paths = [copy if p == target.bundle else p for p in corpus.bundles.all]
        with pytest.raises(BundleError) as info:
            verify_bundles(paths, corpus.bundles.authority)
    e = info.value
    assert e.file == copy or copy in e.file.parents, (str(target.rel), offset, mask, e.message)
