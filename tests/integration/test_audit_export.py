"""Audit bundles exported from a real federation verify offline, together; any tampering, truncation,
missing file, forged checkpoint, fork or unreceipted result is a BundleError naming where it is."""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from audit import bundle as layout
from audit.ledger import Ledger
from audit.merkle import CompactRange, leaf_hash
from audit.note import checkpoint_body, parse_checkpoint, sign_note, unverified_body
from audit.verifier import BundleError, reconcile, verify_bundle, verify_bundles
from audit.witness import broker_origin
from cli.main import app
from keys.ed25519 import Signer
from tests.integration.audit_bundles import WITHDRAWING_CITY, Bundles, build, read_lines

CITY = WITHDRAWING_CITY


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> Bundles:
    return build(tmp_path_factory.mktemp("audit-bundles"))


@pytest.fixture
def work(bundles: Bundles, tmp_path: Path) -> Bundles:
    """A private copy of the bundles to tamper with."""
    return bundles.copy_to(tmp_path / "copy")


def _fails(paths: list[Path], b: Bundles) -> BundleError:
    # pytest.raises lets any other exception type through, which fails the test.
    with pytest.raises(BundleError) as info:
        verify_bundles(paths, b.authority)
    return info.value


def _origin(city: str) -> str:
    return f"citybroker/node/{city}"


def _signer(b: Bundles, party: str) -> Signer:
    return Signer.load(b.fed.root / "keys" / f"{party}.key")


def _objs(path: Path) -> list[dict[str, object]]:
    return [json.loads(raw) for raw in read_lines(path)]


def _write_lines(path: Path, lines: list[bytes]) -> None:
    path.write_bytes(b"".join(lines))


def _checkpoint_sizes(bundle: Path) -> list[int]:
    return [int(str(o["size"])) for o in _objs(bundle / layout.CHECKPOINTS)]


# -- the good case ---------------------------------------------------------------------------


def test_all_bundles_verify_together_and_receipts_reconcile(bundles: Bundles) -> None:
    report = verify_bundles(bundles.all, bundles.authority)
    assert report.to_json()["ok"] is True
    by_party = {s.party: s for s in report.bundles}
    assert set(by_party) == {*bundles.nodes, bundles.fed.broker_id}
    for s in report.bundles:
        manifest = json.loads((s.path / layout.MANIFEST).read_bytes())
        assert s.size == manifest["size"] == len(read_lines(s.path / layout.ENTRIES)) > 0
        assert s.checkpoints_verified == len(read_lines(s.path / layout.CHECKPOINTS))
    for city in bundles.nodes:
        s = by_party[city]
        assert (s.role, s.origin) == ("node", _origin(city))
        assert s.result_count == len(list(s.results())) == bundles.answered_queries
        kinds = Counter(str(o["kind"]) for o in _objs(s.path / layout.ENTRIES))
        consents = bundles.consents_given[city] + (city == CITY)  # one withdrawal
        # The city logged the cosignatures it gave (the verifier matched each with the broker's
        # bundle); a witnessing round may still have been running when the city was exported.
        cosigned = [
            o for o in _objs(bundles.broker / layout.COSIGNATURES) if str(o["witness"]) == city
        ]
        assert 1 <= kinds.pop("witness") <= len(cosigned)
        assert kinds == {
            "agreement": 1,
            "consent": consents,
            "exchange": 2 * bundles.answered_queries,
            "refusal": 2 * bundles.refused_queries,
        }
    broker = by_party[bundles.fed.broker_id]
    assert broker.role == "broker"
    # One receipt line per answered city per answered query; the refused query receipts nothing.
    receipts = list(broker.receipts())
    assert broker.receipt_count == len(receipts) == len(bundles.nodes) * bundles.answered_queries
    results = {(r.city, r.index): r.digest for s in report.bundles for r in s.results()}
    for receipt in receipts:
        assert results[(receipt.city, receipt.node_log_index)] == receipt.result_digest
    assert len(results) == len(receipts)
    assert broker.cosignatures_verified > 0
    assert broker.cosignatures_verified == len(read_lines(broker.path / layout.COSIGNATURES))
    cosigners = {str(o["witness"]) for o in _objs(broker.path / layout.COSIGNATURES)}
    assert cosigners == set(bundles.nodes)
    assert report.signatures_verified == sum(s.signatures_verified for s in report.bundles)


def test_an_earlier_export_of_the_same_log_is_consistent(bundles: Bundles) -> None:
    report = verify_bundles([bundles.early, bundles.nodes[CITY]], bundles.authority, parties=[CITY])
    early, late = report.bundles
    assert 0 < early.size < late.size
    # The log is covered as far as its longer export goes.
    assert report.coverage is not None
    (covered,) = [p for p in report.coverage.parties if p.status == "covered"]
    assert (covered.party, covered.size) == (CITY, late.size)
    assert covered.bundles == (bundles.early, bundles.nodes[CITY])
    early_roots, late_roots = early.checkpoint_roots(), late.checkpoint_roots()
    common = set(early_roots) & set(late_roots)
    assert common
    assert all(early_roots[s] == late_roots[s] for s in common)


# -- entry lines -----------------------------------------------------------------------------


def _delete_middle(lines: list[bytes], j: int) -> tuple[int, str]:
    del lines[j]
    return j, "ENTRY_OUT_OF_ORDER"


def _delete_last(lines: list[bytes], j: int) -> tuple[int, str]:
    lines.pop()
    return len(lines), "ENTRY_MISSING"


def _swap(lines: list[bytes], j: int) -> tuple[int, str]:
    lines[j], lines[j + 1] = lines[j + 1], lines[j]
    return j, "ENTRY_OUT_OF_ORDER"


def _duplicate(lines: list[bytes], j: int) -> tuple[int, str]:
    lines.insert(j + 1, lines[j])
    return j + 1, "ENTRY_OUT_OF_ORDER"


def _append_copy(lines: list[bytes], j: int) -> tuple[int, str]:
    obj = json.loads(lines[j])
    obj["index"] = len(lines)
    lines.append(layout.line(obj))
    return len(lines) - 1, "ENTRY_EXTRA"


MANIPULATIONS: dict[str, Callable[[list[bytes], int], tuple[int, str]]] = {
    "delete-middle": _delete_middle,
    "delete-last": _delete_last,
    "swap": _swap,
    "duplicate": _duplicate,
    "append": _append_copy,
}


@pytest.mark.parametrize("how", list(MANIPULATIONS))
def test_entry_lines_moved_or_removed_are_named(work: Bundles, how: str) -> None:
    path = work.nodes[CITY] / layout.ENTRIES
    lines = read_lines(path)
    entry, reason = MANIPULATIONS[how](lines, len(lines) // 2)
    _write_lines(path, lines)
    e = _fails(work.all, work)
    assert (e.file, e.entry, e.reason) == (path, entry, reason)
    assert f"entries.jsonl, entry {entry}:" in e.message


def test_an_inserted_validly_signed_entry_breaks_the_signed_root(work: Bundles) -> None:
    """A genuine statement of the city, inserted with every later index renumbered: each line is
    well formed and validly signed, only the checkpoint roots can tell."""
    bundle = work.nodes[CITY]
    path = bundle / layout.ENTRIES
    objs = _objs(path)
    j = len(objs) // 2
    objs.insert(j + 1, dict(objs[j]))
    for i, o in enumerate(objs):
        o["index"] = i
    _write_lines(path, [layout.line(o) for o in objs])
    e = _fails(work.all, work)
    first_checkpoint_after = min(s for s in _checkpoint_sizes(bundle) if s >= j + 2)
    assert (e.file, e.entry, e.reason) == (
        path,
        first_checkpoint_after - 1,
        "CHECKPOINT_ROOT_MISMATCH",
    )


@pytest.mark.parametrize("kind", ["exchange", "cons\nt", "consent ", "", "Consent"])
def test_an_entry_kind_changed_is_named(work: Bundles, kind: str) -> None:
    """The kind is outside the Merkle leaf, yet it is bundle content: changing it must be caught."""
    path = work.nodes[CITY] / layout.ENTRIES
    objs = _objs(path)
    j = next(i for i, o in enumerate(objs) if o["kind"] == "consent")
    objs[j]["kind"] = kind
    _write_lines(path, [layout.line(o) for o in objs])
    e = _fails(work.all, work)
    assert (e.file, e.entry, e.reason) == (path, j, "ENTRY_KIND_MISMATCH")


# -- truncated and missing files ---------------------------------------------------------------

FILES = [
    ("node", layout.MANIFEST),
    ("node", layout.ENTRIES),
    ("node", layout.CHECKPOINTS),
    ("node", "trust/v1.json"),
    ("node", "agreements/*"),
    ("broker", layout.MANIFEST),
    ("broker", layout.ENTRIES),
    ("broker", layout.CHECKPOINTS),
    ("broker", layout.COSIGNATURES),
    ("broker", "trust/v1.json"),
]


def _target(work: Bundles, which: str, rel: str) -> Path:
    root = work.nodes[CITY] if which == "node" else work.broker
    (path,) = root.glob(rel)
    return path


def _cut(data: bytes, where: str) -> int:
    if where == "empty":
        return 0
    if where == "last-byte":
        return len(data) - 1
    if where == "last-line":  # on a line boundary: a whole line gone
        return data.rindex(b"\n", 0, len(data) - 1) + 1 if data.count(b"\n") > 1 else 0
    # Inside the middle line, never on a line boundary.
    starts = [0] + [i + 1 for i, c in enumerate(data[:-1]) if c == 0x0A]
    start = starts[len(starts) // 2]
    end = data.index(b"\n", start) if b"\n" in data[start:] else len(data)
    return start + max(1, (end - start) // 2)


@pytest.mark.parametrize("where", ["empty", "mid-line", "last-byte", "last-line"])
@pytest.mark.parametrize(("which", "rel"), FILES, ids=[f"{w}-{r}" for w, r in FILES])
def test_a_truncated_file_is_named(work: Bundles, which: str, rel: str, where: str) -> None:
    # Cosignatures: the cities' logs hold each one they gave (audit.witness).
    path = _target(work, which, rel)
    data = path.read_bytes()
    path.write_bytes(data[: _cut(data, where)])
    e = _fails(work.all, work)
    assert e.file == path, e.message
    assert str(path) in e.message


def _first_result_index(bundle: Path) -> int:
    for o in _objs(bundle / layout.ENTRIES):
        env = json.loads(base64.b64decode(str(o["entry"])))
        if env["payloadType"].endswith(".result+json"):
            return int(str(o["index"]))
    raise AssertionError("no result in the bundle")


REMOVED = [
    (layout.MANIFEST, layout.MANIFEST, "BUNDLE_FILE_MISSING"),
    (layout.ENTRIES, layout.ENTRIES, "BUNDLE_FILE_MISSING"),
    (layout.CHECKPOINTS, layout.CHECKPOINTS, "BUNDLE_FILE_MISSING"),
    (layout.COSIGNATURES, layout.COSIGNATURES, "BUNDLE_FILE_MISSING"),
    ("trust/v1.json", "trust", "TRUST_BUNDLE_MISSING"),
    ("trust", "trust", "TRUST_BUNDLE_MISSING"),
    ("agreements/*", layout.ENTRIES, "AGREEMENT_MISSING"),
    ("agreements", layout.ENTRIES, "AGREEMENT_MISSING"),
]


@pytest.mark.parametrize(("rel", "named", "reason"), REMOVED, ids=[r[0] for r in REMOVED])
def test_a_missing_file_is_named(work: Bundles, rel: str, named: str, reason: str) -> None:
    bundle = work.nodes[CITY]
    (path,) = bundle.glob(rel)
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink()
    e = _fails(work.all, work)
    assert (e.file, e.reason) == (bundle / named, reason), e.message
    if reason == "AGREEMENT_MISSING":
        assert e.entry == _first_result_index(bundle)


# -- forged checkpoints and forks ----------------------------------------------------------------


def _replace_last_checkpoint(bundle: Path, note: str) -> tuple[Path, int]:
    path = bundle / layout.CHECKPOINTS
    lines = read_lines(path)
    size = json.loads(lines[-1])["size"]
    lines[-1] = layout.line({"size": size, "note": note})
    _write_lines(path, lines)
    return path, len(lines) - 1


def _last_checkpoint(bundle: Path) -> tuple[str, int, bytes]:
    note = str(json.loads(read_lines(bundle / layout.CHECKPOINTS)[-1])["note"])
    return parse_checkpoint(unverified_body(note))


def test_a_checkpoint_for_another_origin_is_refused(work: Bundles) -> None:
    bundle = work.nodes[CITY]
    _, size, root = _last_checkpoint(bundle)
    body = checkpoint_body(_origin("borealis"), size, root)
    # Signed with the city's real log key, under its own key name: only the origin line is wrong.
    note = sign_note(body, _origin(CITY), _signer(work, CITY))
    path, number = _replace_last_checkpoint(bundle, note)
    e = _fails(work.all, work)
    assert (e.file, e.entry, e.reason) == (path, number, "CHECKPOINT_ORIGIN_MISMATCH")


@pytest.mark.parametrize(
    ("key_name", "signer"),
    [("borealis-origin", CITY), ("own-origin", "borealis"), ("own-origin", "broker-1")],
)
def test_a_checkpoint_not_signed_by_the_log_key_is_refused(
    work: Bundles, key_name: str, signer: str
) -> None:
    bundle = work.nodes[CITY]
    origin, size, root = _last_checkpoint(bundle)
    name = _origin("borealis") if key_name == "borealis-origin" else origin
    note = sign_note(checkpoint_body(origin, size, root), name, _signer(work, signer))
    path, number = _replace_last_checkpoint(bundle, note)
    e = _fails(work.all, work)
    assert (e.file, e.entry, e.reason) == (path, number, "CHECKPOINT_INVALID")


def test_a_checkpoint_signed_by_the_log_key_over_other_entries_is_refused(work: Bundles) -> None:
    bundle = work.nodes[CITY]
    origin, size, _ = _last_checkpoint(bundle)
    other = hashlib.sha256(b"a tree the entries do not make").digest()
    _replace_last_checkpoint(
        bundle, sign_note(checkpoint_body(origin, size, other), origin, _signer(work, CITY))
    )
    e = _fails(work.all, work)
    assert (e.file, e.entry, e.reason) == (
        bundle / layout.ENTRIES,
        size - 1,
        "CHECKPOINT_ROOT_MISMATCH",
    )


def test_two_checkpoints_of_one_size_in_one_bundle_are_a_fork(work: Bundles) -> None:
    bundle = work.nodes[CITY]
    path = bundle / layout.CHECKPOINTS
    lines = read_lines(path)
    j = len(lines) // 2
    size = json.loads(lines[j])["size"]
    other = hashlib.sha256(b"another tree").digest()
    note = sign_note(
        checkpoint_body(_origin(CITY), size, other), _origin(CITY), _signer(work, CITY)
    )
    lines.insert(j + 1, layout.line({"size": size, "note": note}))
    _write_lines(path, lines)
    e = _fails(work.all, work)
    assert (e.file, e.entry, e.reason) == (path, j + 1, "LOG_FORK")


def _swap_last_two_and_resign(bundle: Path, origin: str, signer: Signer) -> int:
    """Rewrite a bundle's history as its log's owner could: the last two entries swapped, the
    checkpoints covering them replaced by one for the new tree, signed with the owner's key.
    Returns the log size."""
    entries = _objs(bundle / layout.ENTRIES)
    n = len(entries)
    for field in ("entry", "kind"):
        entries[-2][field], entries[-1][field] = entries[-1][field], entries[-2][field]
    _write_lines(bundle / layout.ENTRIES, [layout.line(o) for o in entries])
    tree = CompactRange()
    for o in entries:
        tree.append(leaf_hash(base64.b64decode(str(o["entry"]))))
    note = sign_note(checkpoint_body(origin, n, tree.root()), origin, signer)
    kept = [o for o in _objs(bundle / layout.CHECKPOINTS) if int(str(o["size"])) <= n - 2]
    _write_lines(
        bundle / layout.CHECKPOINTS,
        [layout.line(o) for o in kept] + [layout.line({"size": n, "note": note})],
    )
    return n


def test_two_bundles_of_one_log_with_different_trees_are_a_fork(
    work: Bundles, tmp_path: Path
) -> None:
    """The city shows a second auditor a history with its last two statements swapped: each bundle
    verifies alone (every entry and checkpoint is genuinely signed), together they are a fork."""
    honest = work.nodes[CITY]
    forked = tmp_path / "forked"
    shutil.copytree(honest, forked)
    n = _swap_last_two_and_resign(forked, _origin(CITY), _signer(work, CITY))
    assert _last_checkpoint(forked)[2] != _last_checkpoint(honest)[2]
    assert verify_bundle(forked, work.authority).size == n
    assert verify_bundle(honest, work.authority).size == n
    e = _fails([honest, forked], work)
    assert (e.file, e.reason) == (forked, "LOG_FORK")
    assert str(honest) in e.message


# -- reconciliation and trust --------------------------------------------------------------------


def test_a_city_export_older_than_the_broker_receipts_is_truncated(work: Bundles) -> None:
    """The broker's receipts name where the city logged its results; an export of the city's
    log that ends before them (here an older one) is a truncated log, named with both parties."""
    others = [p for c, p in work.nodes.items() if c != CITY]
    early = verify_bundle(work.early, work.authority)
    assert early.result_count == 0
    e = _fails([work.early, *others, work.broker], work)
    assert (e.file, e.reason) == (work.early / layout.CHECKPOINTS, "LOG_TRUNCATED")
    assert f"node {CITY}'s log ends at size {early.size}" in e.message
    assert f"but {work.fed.broker_id} receipted a result" in e.message


def test_a_receipt_naming_a_result_the_city_log_lacks_is_refused(bundles: Bundles) -> None:
    """The verified bundles' references, copied into a ledger with one receipt naming a digest
    the city's log does not hold at the index named (the broker's log can't be edited without
    breaking its signatures)."""
    summaries = [verify_bundle(p, bundles.authority) for p in bundles.all]
    ledger = Ledger()
    for s in summaries:
        into = ledger.add_bundle(s.path, s.origin, s.party, s.role)
        for r in s.results():
            ledger.add_result(into, r)
        for n, receipt in enumerate(s.receipts()):
            if n == 0:
                receipt = replace(receipt, result_digest="sha256:" + "0" * 64)
            ledger.add_receipt(into, receipt)
    with pytest.raises(BundleError) as info:
        reconcile(ledger)
    e = info.value
    assert (e.file, e.reason) == (bundles.broker, "RECEIPT_RESULT_MISSING")
    assert next(iter(summaries[-1].receipts())).city in e.message


def test_a_result_the_broker_never_receipted_is_refused(bundles: Bundles) -> None:
    """The verified bundles' references, copied into a ledger without the broker's receipt of
    one result (the broker's log can't be edited without breaking its signatures)."""
    summaries = [verify_bundle(p, bundles.authority) for p in bundles.all]
    node = next(s for s in summaries if s.party == CITY)
    broker = next(s for s in summaries if s.role == "broker")
    result = next(node.results())
    receipts = [r for r in broker.receipts() if r.result_digest != result.digest]

    def ledger_with(result_at: datetime) -> Ledger:
        ledger = Ledger()
        for s in summaries:
            if s.role == "node":
                into = ledger.add_bundle(s.path, s.origin, s.party, s.role)
                for r in s.results():
                    at = result_at if r.digest == result.digest else r.issued_at
                    ledger.add_result(into, replace(r, issued_at=at))
        into = ledger.add_bundle(broker.path, broker.origin, broker.party, broker.role)
        for receipt in receipts:
            ledger.add_receipt(into, receipt)
        return ledger

    reconcile(ledger_with(result.issued_at))  # released just now: its receipt may be on its way
    late = max(r.issued_at for r in receipts) - timedelta(minutes=5)
    with pytest.raises(BundleError) as info:
        reconcile(ledger_with(late))
    e = info.value
    assert (e.file, e.entry, e.reason) == (node.path, result.index, "RESULT_NOT_RECEIPTED")


def test_the_wrong_authority_key_fails(bundles: Bundles) -> None:
    e = _fails(bundles.all, replace(bundles, authority=Signer.generate().public))
    assert (e.file, e.reason) == (bundles.nodes[CITY] / "trust" / "v1.json", "SIGNATURE_INVALID")


# -- the CLI ---------------------------------------------------------------------------------------


def _cli_verify(b: Bundles, paths: list[Path], report: Path) -> tuple[int, str, str]:
    result = CliRunner().invoke(
        app,
        [
            "audit",
            "verify",
            *map(str, paths),
            "--authority-key",
            str(b.fed.authority_key),
            "--report",
            str(report),
        ],
    )
    if result.exception is not None:
        assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    return result.exit_code, result.stdout, result.stderr


def test_cli_verify_accepts_good_bundles_and_writes_a_report(
    bundles: Bundles, tmp_path: Path
) -> None:
    code, out, _ = _cli_verify(bundles, bundles.all, tmp_path / "report.json")
    assert code == 0
    assert "OK" in out
    report = json.loads((tmp_path / "report.json").read_text())
    expected = verify_bundles(bundles.all, bundles.authority).to_json()
    assert report == expected
    assert report["ok"] is True
    assert [b["path"] for b in report["bundles"]] == [str(p) for p in bundles.all]


def _error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.strip()]


def test_cli_verify_names_the_file_and_entry_on_one_line(work: Bundles, tmp_path: Path) -> None:
    path = work.nodes[CITY] / layout.ENTRIES
    lines = read_lines(path)
    j = len(lines) // 2
    lines[j], lines[j + 1] = lines[j + 1], lines[j]
    _write_lines(path, lines)
    code, out, err = _cli_verify(work, work.all, tmp_path / "report.json")
    assert code == 1
    (line,) = _error_lines(err)
    assert line.startswith("error: verification failed: ")
    assert f"{path}, entry {j}:" in line
    assert line.endswith("(ENTRY_OUT_OF_ORDER)")
    assert "OK" not in out
    report = json.loads((tmp_path / "report.json").read_text())
    assert report == {
        "ok": False,
        "file": str(path),
        "entry": j,
        "reason": "ENTRY_OUT_OF_ORDER",
        "message": f"expected entry index {j}",
    }


def test_cli_verify_shows_bundle_paths_and_content_as_they_are(
    work: Bundles, tmp_path: Path
) -> None:
    """Paths and bundle content are data, never console markup (an auditor's directory names and
    a hostile bundle's statement types alike)."""
    bundle = tmp_path / "q3[draft]" / CITY
    shutil.copytree(work.nodes[CITY], bundle)
    path = bundle / layout.ENTRIES
    lines = read_lines(path)
    lines[-1] = lines[-1][:-1]  # no final newline: not canonical
    _write_lines(path, lines)
    code, _, err = _cli_verify(work, [bundle], tmp_path / "r1.json")
    assert code == 1
    (line,) = _error_lines(err)
    assert f"{path}, entry {len(lines) - 1}:" in line

    bundle = work.nodes[CITY]
    path = bundle / layout.ENTRIES
    objs = _objs(path)
    hostile = {"payload": "", "payloadType": "[bold]evil[/] [/]", "signatures": []}
    objs[0]["entry"] = base64.b64encode(json.dumps(hostile).encode()).decode()
    _write_lines(path, [layout.line(o) for o in objs])
    code, _, err = _cli_verify(work, [bundle], tmp_path / "r2.json")
    assert code == 1
    (line,) = _error_lines(err)
    assert "'[bold]evil[/] [/]'" in line
    assert line.endswith("(STATEMENT_UNKNOWN)")


def test_cli_export_into_an_existing_directory_fails_cleanly(
    bundles: Bundles, tmp_path: Path
) -> None:
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = CliRunner().invoke(
        app,
        [
            "audit",
            "export",
            "--config",
            str(bundles.fed.cities[CITY].config),
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 2
    assert isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    (line,) = _error_lines(result.stderr)
    assert line == f"error: {out} already exists; choose a new directory"
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_a_broker_history_other_than_the_one_a_city_cosigned_is_a_fork(
    work: Bundles, tmp_path: Path
) -> None:
    """The broker re-signs its last checkpoint over a rewritten history and drops the cities'
    cosignatures of the honest one: its bundle verifies alone, but the cities' logs hold what
    they cosigned, so verified with them it is a fork, named in a city's bundle."""
    forked = work.broker
    origin = broker_origin(work.fed.broker_id)
    n = _swap_last_two_and_resign(forked, origin, _signer(work, work.fed.broker_id))
    cosignatures = [o for o in _objs(forked / layout.COSIGNATURES) if int(str(o["size"])) < n - 1]
    _write_lines(forked / layout.COSIGNATURES, [layout.line(o) for o in cosignatures])
    assert verify_bundle(forked, work.authority).size == n
    e = _fails(work.all, work)
    assert e.reason == "LOG_FORK", e.message
    assert e.file in work.nodes.values()
    assert origin in e.message
