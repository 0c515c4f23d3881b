"""Proofs from the stored log against a naive recursive Merkle tree; flipped bits are rejected."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import create_engine, event

from audit.log import MerkleLog
from audit.merkle import (
    ProofError,
    consistency_proof,
    inclusion_proof,
    verify_consistency,
    verify_inclusion,
)
from audit.schema import metadata
from keys.ed25519 import Signer

MAX_SIZE = 300


def naive_leaf(entry: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + entry).digest()


def naive_mth(entries: list[bytes]) -> bytes:
    """RFC 6962 section 2.1, written as literally as the RFC states it."""
    n = len(entries)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return naive_leaf(entries[0])
    k = 1
    while k * 2 < n:
        k *= 2
    return hashlib.sha256(b"\x01" + naive_mth(entries[:k]) + naive_mth(entries[k:])).digest()


def naive_path(m: int, entries: list[bytes]) -> list[bytes]:
    """RFC 6962 section 2.1.1 PATH(m, D[n])."""
    n = len(entries)
    if n == 1:
        return []
    k = 1
    while k * 2 < n:
        k *= 2
    if m < k:
        return naive_path(m, entries[:k]) + [naive_mth(entries[k:])]
    return naive_path(m - k, entries[k:]) + [naive_mth(entries[:k])]


def naive_subproof(m: int, entries: list[bytes], whole: bool) -> list[bytes]:
    """RFC 6962 section 2.1.2 SUBPROOF(m, D[n], b)."""
    n = len(entries)
    if m == n:
        return [] if whole else [naive_mth(entries)]
    k = 1
    while k * 2 < n:
        k *= 2
    if m <= k:
        return naive_subproof(m, entries[:k], whole) + [naive_mth(entries[k:])]
    return naive_subproof(m - k, entries[k:], False) + [naive_mth(entries[:k])]


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[MerkleLog, list[bytes]]]:
    path: Path = tmp_path_factory.mktemp("merkle-props") / "log.db"
    engine = create_engine(f"sqlite:///{path}")

    @event.listens_for(engine, "connect")
    def _wal(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.execute("PRAGMA journal_mode=WAL")

    metadata.create_all(engine)
    rng = random.Random(6962)
    entries = [rng.randbytes(rng.randrange(0, 40)) for _ in range(MAX_SIZE)]
    log = MerkleLog(engine, "props.example/log", Signer.generate())
    # Uneven batches, so stored nodes come from many different transactions.
    position = 0
    while position < MAX_SIZE:
        chunk = entries[position : position + rng.randrange(1, 23)]
        if len(chunk) == 1:
            log.append(chunk[0], "prop")
        else:
            log.append_many(chunk, "prop")
        position += len(chunk)
    assert log.size() == MAX_SIZE
    yield log, entries
    log.close()
    engine.dispose()


def flip(data: bytes, bit: int) -> bytes:
    bit %= len(data) * 8
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


sizes = st.integers(min_value=1, max_value=MAX_SIZE)
bits = st.integers(min_value=0, max_value=32 * 8 - 1)


@settings(max_examples=200, deadline=None)
@given(size=sizes, data=st.data())
def test_inclusion_proofs_from_store(
    stored: tuple[MerkleLog, list[bytes]], size: int, data: st.DataObject
) -> None:
    log, entries = stored
    index = data.draw(st.integers(min_value=0, max_value=size - 1), label="index")
    root = naive_mth(entries[:size])
    assert log.root(size) == root
    proof = log.inclusion_proof(index, size)
    assert proof == naive_path(index, entries[:size])
    leaf = naive_leaf(entries[index])
    verify_inclusion(index, size, leaf, proof, root)

    if proof:
        element = data.draw(st.integers(min_value=0, max_value=len(proof) - 1), label="element")
        tampered = list(proof)
        tampered[element] = flip(tampered[element], data.draw(bits, label="bit"))
        with pytest.raises(ProofError):
            verify_inclusion(index, size, leaf, tampered, root)
        with pytest.raises(ProofError):
            verify_inclusion(index, size, leaf, proof[:-1], root)
    with pytest.raises(ProofError):
        verify_inclusion(index, size, flip(leaf, data.draw(bits, label="leaf bit")), proof, root)
    with pytest.raises(ProofError):
        verify_inclusion(index, size, leaf, proof, flip(root, data.draw(bits, label="root bit")))
    with pytest.raises(ProofError):
        verify_inclusion(index, size, leaf, [*proof, root], root)


@settings(max_examples=200, deadline=None)
@given(size2=sizes, data=st.data())
def test_consistency_proofs_from_store(
    stored: tuple[MerkleLog, list[bytes]], size2: int, data: st.DataObject
) -> None:
    log, entries = stored
    size1 = data.draw(st.integers(min_value=1, max_value=size2), label="size1")
    root1, root2 = naive_mth(entries[:size1]), naive_mth(entries[:size2])
    proof = log.consistency_proof(size1, size2)
    assert proof == ([] if size1 == size2 else naive_subproof(size1, entries[:size2], True))
    verify_consistency(size1, size2, proof, root1, root2)

    if proof:
        element = data.draw(st.integers(min_value=0, max_value=len(proof) - 1), label="element")
        tampered = list(proof)
        tampered[element] = flip(tampered[element], data.draw(bits, label="bit"))
        with pytest.raises(ProofError):
            verify_consistency(size1, size2, tampered, root1, root2)
        with pytest.raises(ProofError):
            verify_consistency(size1, size2, proof[:-1], root1, root2)
    with pytest.raises(ProofError):
        verify_consistency(size1, size2, proof, flip(root1, data.draw(bits)), root2)
    with pytest.raises(ProofError):
        verify_consistency(size1, size2, proof, root1, flip(root2, data.draw(bits)))
    with pytest.raises(ProofError):
        verify_consistency(size1, size2, [*proof, root2], root1, root2)


@settings(max_examples=300, deadline=None)
@given(size=st.integers(min_value=1, max_value=1000), data=st.data())
def test_proof_builders_match_the_rfc_definitions(size: int, data: st.DataObject) -> None:
    entries = [i.to_bytes(2, "big") for i in range(size)]

    def subtree(start: int, end: int) -> bytes:
        return naive_mth(entries[start:end])

    index = data.draw(st.integers(min_value=0, max_value=size - 1))
    assert inclusion_proof(index, size, subtree) == naive_path(index, entries)
    old = data.draw(st.integers(min_value=1, max_value=size))
    expected = [] if old == size else naive_subproof(old, entries, True)
    assert consistency_proof(old, size, subtree) == expected
