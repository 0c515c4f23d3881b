"""A city cannot hand an auditor its log cut after the last result the broker received: the broker's
witnessing round records each city's signed checkpoint in the broker's own log, and the auditor's
verifier requires the city's log to reach it (LOG_TRUNCATED) with the same root (LOG_FORK).

A real federation over gRPC with mTLS: a query, a witnessing round, then the city logs consent
withdrawals (nothing the broker receives), the broker witnesses again; every party exports its
bundle with the CLI, as an operator would.
"""

from __future__ import annotations

import base64
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from audit import bundle as layout
from audit.merkle import CompactRange, leaf_hash
from audit.note import checkpoint_body, sign_note
from audit.verifier import BundleError, verify_bundle, verify_bundles
from cli.main import app
from keys.ed25519 import PublicKey, Signer
from keys.trust import load_authority_key
from tests.conftest import start_federation, stop_federation
from tests.integration.audit_bundles import BY_MODE, cli_export, read_lines

CITY = "aurora"
ORIGIN = f"citybroker/node/{CITY}"


@dataclass(frozen=True)
class Exported:
    root: Path
    authority: PublicKey
    authority_key: Path
    city_signer: Signer
    broker: str
    nodes: dict[str, Path]
    broker_bundle: Path
    # Aurora's log size when the broker first witnessed it, after the query.
    size_after_query: int
    # The largest index of aurora's log a broker receipt names.
    receipted: int

    @property
    def all(self) -> list[Path]:
        return [*self.nodes.values(), self.broker_bundle]

    def copy_to(self, dest: Path) -> Exported:
        """The bundles copied under `dest`, to cut."""
        dest.mkdir(parents=True)
        nodes = {c: Path(shutil.copytree(p, dest / p.name)) for c, p in self.nodes.items()}
        broker = Path(shutil.copytree(self.broker_bundle, dest / self.broker_bundle.name))
        return Exported(
            dest,
            self.authority,
            self.authority_key,
            self.city_signer,
            self.broker,
            nodes,
            broker,
            self.size_after_query,
            self.receipted,
        )


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Exported:
    root = tmp_path_factory.mktemp("city-checkpoints")
    rf = start_federation(root / "federation", residents_per_city=40)
    try:
        fed = rf.fed
        with rf.partner() as client:
            answer = client.query(BY_MODE)
        assert [c.status for c in answer.cities] == ["answered"] * 3
        rf.broker.witnessing.collect_once()
        watch = rf.broker.witnessing.cities
        assert watch is not None
        size_after_query = watch.recorded(CITY)[0]
        assert size_after_query > 0
        # The city logs more: two residents withdraw. The broker receives nothing of it.
        for person in rf.consenting[CITY][:2]:
            rf.operators[CITY].withdraw(f"{person.resident_id}-c1")
        rf.broker.witnessing.collect_once()
        assert watch.recorded(CITY)[0] >= size_after_query + 2
        out = root / "bundles"
        out.mkdir()
        nodes = {c: out / c for c in fed.cities}
        for city, path in nodes.items():
            cli_export(fed.cities[city].config, path)
        broker_bundle = out / fed.broker_id
        cli_export(fed.broker_config, broker_bundle)
    finally:
        stop_federation(rf)
    receipted = max(
        c["node_log_index"]
        for r in _statements(broker_bundle, "receipt")
        for c in r["cities"]
        if c["city"] == CITY and c["node_log_index"] is not None
    )
    return Exported(
        out,
        load_authority_key(fed.authority_key),
        fed.authority_key,
        fed.cities[CITY].signer,
        fed.broker_id,
        nodes,
        broker_bundle,
        size_after_query,
        receipted,
    )


@pytest.fixture
def work(exported: Exported, tmp_path: Path) -> Exported:
    return exported.copy_to(tmp_path / "copy")


def _objs(path: Path) -> list[dict[str, Any]]:
    return [json.loads(raw) for raw in read_lines(path)]


def _write(path: Path, objs: list[dict[str, Any]]) -> None:
    path.write_bytes(b"".join(layout.line(o) for o in objs))


def _statements(bundle: Path, thing: str) -> list[dict[str, Any]]:
    found = []
    for o in _objs(bundle / layout.ENTRIES):
        env = json.loads(base64.b64decode(o["entry"]))
        if env["payloadType"] == f"application/vnd.citybroker.{thing}+json":
            found.append({**json.loads(base64.b64decode(env["payload"])), "_index": o["index"]})
    return found


def _recorded(b: Exported) -> dict[str, Any]:
    """The broker's largest record of aurora's checkpoint, in its bundle."""
    records = [r for r in _statements(b.broker_bundle, "witnessed-checkpoint") if r["city"] == CITY]
    return max(records, key=lambda r: r["tree_size"])


def _cut(bundle: Path, below: int) -> int:
    """Cut the bundle back to its newest checkpoint smaller than `below`, as its owner could.
    Returns the new size."""
    checkpoints = [o for o in _objs(bundle / layout.CHECKPOINTS) if 0 < o["size"] < below]
    size = int(checkpoints[-1]["size"])
    _write(bundle / layout.CHECKPOINTS, checkpoints)
    _write(bundle / layout.ENTRIES, _objs(bundle / layout.ENTRIES)[:size])
    manifest = json.loads((bundle / layout.MANIFEST).read_bytes())
    (bundle / layout.MANIFEST).write_bytes(layout.line({**manifest, "size": size}))
    return size


def _cli(b: Exported, paths: list[Path]) -> tuple[int, str]:
    result = CliRunner().invoke(
        app,
        ["audit", "verify", *map(str, paths), "--authority-key", str(b.authority_key)],
    )
    assert "Traceback" not in result.output
    return result.exit_code, result.output


def test_the_broker_s_bundle_records_the_city_s_checkpoints(exported: Exported) -> None:
    recorded = _recorded(exported)
    assert recorded["broker"] == exported.broker
    assert recorded["tree_size"] >= exported.size_after_query + 2 > exported.receipted + 1
    # The city's own signed note, the size it was proved to extend.
    assert recorded["checkpoint"].startswith(f"{ORIGIN}\n{recorded['tree_size']}\n")
    assert recorded["extends"] == exported.size_after_query


def test_the_full_exports_verify_and_report_what_the_broker_witnessed(exported: Exported) -> None:
    report = verify_bundles(exported.all, exported.authority)
    assert report.coverage is not None
    line = {p.party: p for p in report.coverage.parties}[CITY]
    assert line.seen is not None
    assert (line.seen.how, line.seen.by) == ("witnessed", exported.broker)
    assert line.seen.size == _recorded(exported)["tree_size"] <= (line.size or 0)
    code, output = _cli(exported, exported.all)
    assert code == 0, output
    assert f"witnessed by {exported.broker}" in output


def test_a_city_export_cut_before_what_it_logged_after_the_last_result_is_truncated(
    work: Exported,
) -> None:
    recorded = _recorded(work)
    cut = work.nodes[CITY]
    size = _cut(cut, below=recorded["tree_size"])
    # Past every result the broker received: the receipts alone see nothing missing...
    assert work.receipted + 1 <= work.size_after_query <= size < recorded["tree_size"]
    assert verify_bundle(cut, work.authority).size == size
    # ...but the broker recorded the city's checkpoint after its withdrawals.
    with pytest.raises(BundleError) as info:
        verify_bundles(work.all, work.authority)
    e = info.value
    assert (e.reason, e.file) == ("LOG_TRUNCATED", cut / layout.CHECKPOINTS), e.message
    assert f"node {CITY}'s log ends at size {size}" in e.message
    assert f"but {work.broker} logged (its entry {recorded['_index']} in" in e.message
    assert f"witnessed this log's checkpoint of size {recorded['tree_size']}" in e.message
    code, output = _cli(work, work.all)
    assert code != 0
    assert "LOG_TRUNCATED" in output and CITY in output


def test_a_city_export_with_another_history_at_the_recorded_size_is_a_fork(
    work: Exported,
) -> None:
    """The city rewrites its last two withdrawals (swapped) and signs the new tree: its bundle
    verifies alone, but the broker holds its signed checkpoint of that size with another root."""
    recorded = _recorded(work)
    bundle = work.nodes[CITY]
    n = _cut(bundle, below=recorded["tree_size"] + 1)
    assert n == recorded["tree_size"]
    entries = _objs(bundle / layout.ENTRIES)
    for field in ("entry", "kind"):
        entries[-2][field], entries[-1][field] = entries[-1][field], entries[-2][field]
    _write(bundle / layout.ENTRIES, entries)
    tree = CompactRange()
    for o in entries:
        tree.append(leaf_hash(base64.b64decode(o["entry"])))
    note = sign_note(checkpoint_body(ORIGIN, n, tree.root()), ORIGIN, work.city_signer)
    kept = [o for o in _objs(bundle / layout.CHECKPOINTS) if o["size"] <= n - 2]
    _write(bundle / layout.CHECKPOINTS, [*kept, {"size": n, "note": note}])
    assert verify_bundle(bundle, work.authority).size == n
    with pytest.raises(BundleError) as info:
        verify_bundles(work.all, work.authority)
    e = info.value
    assert (e.reason, e.file) == ("LOG_FORK", bundle / layout.CHECKPOINTS), e.message
    assert f"{work.broker} recorded (its entry {recorded['_index']} in" in e.message
