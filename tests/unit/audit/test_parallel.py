"""The entries' signature checks (audit.parallel): the same first failure inline or in workers."""

from __future__ import annotations

from pathlib import Path

import pytest

from audit.checks import BundleError, Keys, UnverifiedEntry, parse_entry
from audit.parallel import PARALLEL_MIN_ENTRIES, SignatureChecks, default_workers
from domain.kinds import LogKind, Statement
from keys import dsse, timefmt
from tests.unit.domain.test_agreement import KEYS, NOW, bundle

ENTRIES = Path("b/entries.jsonl")


def entry(number: int, signer: str = "aurora") -> UnverifiedEntry:
    """A refusal by aurora, signed by `signer`'s key."""
    payload = {"city": "aurora", "issued_at": timefmt.fmt(NOW), "request_id": f"r{number}"}
    env = dsse.sign(Statement.REFUSAL, payload, KEYS[signer]).to_json()
    return parse_entry(env, LogKind.REFUSAL, ENTRIES, number)


def test_small_bundles_are_checked_inline() -> None:
    assert default_workers(PARALLEL_MIN_ENTRIES - 1) == 1
    assert default_workers(PARALLEL_MIN_ENTRIES) >= 1


@pytest.mark.parametrize("workers", [1, 2])
def test_good_signatures_pass(workers: int) -> None:
    with SignatureChecks(Keys([bundle()]), ENTRIES, workers) as checks:
        for i in range(5):
            checks.require(entry(i))
        checks.drain()
        assert checks.first_failure() is None


@pytest.mark.parametrize("workers", [1, 2])
def test_a_bad_signature_is_reported_for_its_entry(workers: int) -> None:
    with (
        pytest.raises(BundleError) as e,
        SignatureChecks(Keys([bundle()]), ENTRIES, workers) as checks,
    ):
        for i in range(5):
            checks.require(entry(i, "borealis" if i == 3 else "aurora"))
        checks.drain()
    assert (e.value.reason, e.value.file, e.value.entry) == ("SIGNATURE_INVALID", ENTRIES, 3)
    assert "refusal lacks a valid signature of aurora" in e.value.detail
