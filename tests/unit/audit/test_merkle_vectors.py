"""The public RFC 6962 proof vectors (transparency-dev/merkle testdata) against audit.merkle."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from audit.merkle import ProofError, verify_consistency, verify_inclusion
from domain.errors import VerificationError

VECTORS = Path(__file__).resolve().parents[3].parent / "shared" / "vectors" / "rfc6962"


def _vector_files() -> list[Any]:
    if not VECTORS.is_dir():
        return [
            pytest.param(
                None, marks=pytest.mark.skip(reason=f"RFC 6962 vectors not found at {VECTORS}")
            )
        ]
    return [
        pytest.param(path, id=path.relative_to(VECTORS).as_posix())
        for path in sorted(VECTORS.rglob("*.json"))
    ]


def _b64(value: str) -> bytes:
    return base64.b64decode(value)


def _proof(vector: dict[str, Any]) -> list[bytes]:
    # Several upstream files write an empty proof as null.
    return [_b64(h) for h in vector["proof"] or []]


def _check(vector: dict[str, Any]) -> None:
    if "leafIdx" in vector:
        verify_inclusion(
            vector["leafIdx"],
            vector["treeSize"],
            _b64(vector["leafHash"]),
            _proof(vector),
            _b64(vector["root"]),
        )
    else:
        verify_consistency(
            vector["size1"],
            vector["size2"],
            _proof(vector),
            _b64(vector["root1"]),
            _b64(vector["root2"]),
        )


@pytest.mark.parametrize("path", _vector_files())
def test_vector(path: Path) -> None:
    vector = json.loads(path.read_text())
    if vector["wantErr"]:
        with pytest.raises(ProofError) as raised:
            _check(vector)
        assert isinstance(raised.value, VerificationError)
        assert raised.value.reason == "PROOF_INVALID"
    else:
        _check(vector)


def test_vectors_cover_both_proof_kinds() -> None:
    if not VECTORS.is_dir():
        pytest.skip(f"RFC 6962 vectors not found at {VECTORS}")
    files = list(VECTORS.rglob("*.json"))
    inclusion = [p for p in files if "inclusion" in p.relative_to(VECTORS).parts]
    consistency = [p for p in files if "consistency" in p.relative_to(VECTORS).parts]
    accepted = [p for p in files if not json.loads(p.read_text())["wantErr"]]
    # A silently emptied folder must not pass as "all vectors agree".
    assert len(inclusion) > 50
    assert len(consistency) > 50
    assert accepted
