"""The verifier's rules (audit.checks) on parsed values: no bundle files, no processes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from audit import bundle as layout
from audit.checks import (
    BundleChecks,
    BundleError,
    BundleSummary,
    Keys,
    canonical_line,
    check_checkpoint_root,
    check_entry_kind,
    check_manifest,
    parse_entry,
    strict_b64,
)
from audit.ledger import Ledger
from audit.merkle import CompactRange, leaf_hash
from audit.note import checkpoint_body, sign_note
from domain.kinds import LogKind, Statement
from keys import dsse, timefmt
from tests.unit.domain.test_agreement import KEYS, NOW, bundle

ENTRIES = Path("b/entries.jsonl")
ORIGIN = "citybroker/node/aurora"


def reason(call: Any, *args: Any) -> str:
    with pytest.raises(BundleError) as e:
        call(*args)
    return e.value.reason


def refusal_entry() -> bytes:
    """A refusal statement signed by aurora, as a node logs it."""
    payload = {"city": "aurora", "issued_at": timefmt.fmt(NOW), "request_id": "r1"}
    return dsse.sign(Statement.REFUSAL, payload, KEYS["aurora"]).to_json()


def test_a_root_that_differs_from_the_signed_one_is_a_root_mismatch() -> None:
    tree = CompactRange()
    tree.append(leaf_hash(b"entry"))
    with pytest.raises(BundleError) as e:
        check_checkpoint_root(tree.root(), 1, b"\x00" * 32, ENTRIES, 0)
    assert (e.value.reason, e.value.file, e.value.entry) == ("CHECKPOINT_ROOT_MISMATCH", ENTRIES, 0)
    check_checkpoint_root(tree.root(), 1, tree.root(), ENTRIES, 0)


def test_a_statement_logged_under_another_kind_is_a_kind_mismatch() -> None:
    assert reason(parse_entry, refusal_entry(), LogKind.CONSENT, ENTRIES, 3) == (
        "ENTRY_KIND_MISMATCH"
    )
    assert reason(check_entry_kind, Statement.RESULT, LogKind.REFUSAL, ENTRIES, 3) == (
        "ENTRY_KIND_MISMATCH"
    )
    check_entry_kind(Statement.QUERY, LogKind.REFUSAL, ENTRIES, 3)


def test_parse_entry_names_the_signer_and_time_without_verifying() -> None:
    entry = parse_entry(refusal_entry(), LogKind.REFUSAL, ENTRIES, 5)
    assert (entry.number, entry.thing, entry.signers) == (5, "refusal", ["aurora"])
    assert entry.at == timefmt.parse(timefmt.fmt(NOW))
    assert entry.sigs[0][0] == KEYS["aurora"].keyid


@pytest.mark.parametrize(
    ("entry", "why"),
    [
        (b"not json", "ENVELOPE_MALFORMED"),
        (
            json.dumps({"payloadType": "text/plain", "payload": "", "signatures": []}).encode(),
            "STATEMENT_UNKNOWN",
        ),
        (dsse.sign(Statement.PLAN, {"x": 1}, KEYS["aurora"]).to_json(), "STATEMENT_UNKNOWN"),
        (
            dsse.sign(Statement.RESULT, {"city": "aurora", "issued_at": "soon"}).to_json(),
            "PAYLOAD_MALFORMED",
        ),
    ],
)
def test_parse_entry_refuses_what_is_not_a_logged_statement(entry: bytes, why: str) -> None:
    assert reason(parse_entry, entry, LogKind.EXCHANGE, ENTRIES, 0) == why


def test_lines_and_base64_must_be_canonical() -> None:
    good = layout.line({"index": 0, "kind": "exchange"})
    assert canonical_line(good, ENTRIES, 0) == {"index": 0, "kind": "exchange"}
    assert reason(canonical_line, b'{"kind": "exchange", "index": 0}\n', ENTRIES, 0) == (
        "BUNDLE_LINE_MALFORMED"
    )
    assert reason(strict_b64, "YQ", ENTRIES, 0) == "BUNDLE_LINE_MALFORMED"
    assert strict_b64("YQ==", ENTRIES, 0) == b"a"


def test_a_manifest_must_name_a_log_of_its_party() -> None:
    fields = {"format": layout.FORMAT, "party": "aurora", "role": "node", "size": 0}
    manifest = check_manifest(layout.line({**fields, "origin": ORIGIN}), Path("m"))
    assert (manifest.origin, manifest.size) == (ORIGIN, 0)
    other = layout.line({**fields, "origin": "citybroker/node/borealis"})
    assert reason(check_manifest, other, Path("m")) == "BUNDLE_ORIGIN_MISMATCH"


def _state(size: int) -> BundleChecks:
    ledger = Ledger()
    root = Path("b")
    summary = BundleSummary(
        root,
        ORIGIN,
        "aurora",
        "node",
        size,
        ledger,
        ledger.add_bundle(root, ORIGIN, "aurora", "node"),
    )
    return BundleChecks(summary, Keys([bundle()]))


def _checkpoint(tree: CompactRange) -> dict[str, Any]:
    note = sign_note(checkpoint_body(ORIGIN, tree.size, tree.root()), ORIGIN, KEYS["aurora"])
    return {"note": note, "size": tree.size}


def test_bundle_checks_find_entries_that_do_not_give_the_signed_root() -> None:
    signed = CompactRange()
    signed.append(leaf_hash(b"what the log signed"))
    state = _state(1)
    state.checkpoint(0, _checkpoint(CompactRange()))
    state.checkpoint(1, _checkpoint(signed))
    state.checkpoints_end()
    entry = state.entry(
        0, {"index": 0, "kind": LogKind.REFUSAL, "entry": layout.b64(refusal_entry())}
    )
    with pytest.raises(BundleError) as e:
        state.entry_signed(entry)
    assert (e.value.reason, e.value.file, e.value.entry) == (
        "CHECKPOINT_ROOT_MISMATCH",
        Path("b") / layout.ENTRIES,
        0,
    )


def test_bundle_checks_accept_entries_that_give_the_signed_root() -> None:
    logged = refusal_entry()
    signed = CompactRange()
    signed.append(leaf_hash(logged))
    state = _state(1)
    state.checkpoint(0, _checkpoint(signed))
    state.checkpoints_end()
    state.entry_signed(
        state.entry(0, {"index": 0, "kind": LogKind.REFUSAL, "entry": layout.b64(logged)})
    )
    state.entries_end()
    assert (state.summary.checkpoints_verified, state.summary.signatures_verified) == (1, 2)


def test_bundle_checks_refuse_checkpoints_out_of_order_and_forks() -> None:
    one, two = CompactRange(), CompactRange()
    one.append(leaf_hash(b"a"))
    two.append(leaf_hash(b"b"))
    state = _state(1)
    state.checkpoint(0, _checkpoint(one))
    assert reason(state.checkpoint, 1, _checkpoint(two)) == "LOG_FORK"
    assert reason(state.checkpoint, 1, _checkpoint(CompactRange())) == "CHECKPOINT_ORDER"
    assert reason(_state(2).checkpoints_end) == "CHECKPOINT_MISSING"
