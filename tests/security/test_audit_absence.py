"""An auditor notices what is missing: a log cut short, a party left out; and an honest federation
whose broker gave up on a slow city still passes its audit, reporting what was released but never
delivered.

Bundles come from real federations (gRPC, mTLS), exported with the CLI as an operator would.
A log's owner can always export a consistent prefix of its log, signed checkpoints and all, so no
bundle alone can prove nothing followed; the other parties' logs can (what a city logged that it
cosigned of the broker's log, where a broker's receipt says a city logged its result).
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from typer.testing import CliRunner

from audit import bundle as layout
from audit.verifier import BundleError, verify_bundle, verify_bundles
from cli.main import app
from domain import receipt as receipt_doc
from keys import timefmt
from keys.trust import load_authority_key
from node import answering
from node.answering import Answerer
from tests.conftest import RunningFederation, start_federation, stop_federation
from tests.integration.audit_bundles import (
    BY_MODE,
    RESIDENTS_PER_CITY,
    WITHDRAWING_CITY,
    Bundles,
    build,
    cli_export,
    read_lines,
)

CITY = WITHDRAWING_CITY


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> Bundles:
    return build(tmp_path_factory.mktemp("absence-bundles"))


@pytest.fixture
def work(bundles: Bundles, tmp_path: Path) -> Bundles:
    return bundles.copy_to(tmp_path / "copy")


def _objs(path: Path) -> list[dict[str, Any]]:
    return [json.loads(raw) for raw in read_lines(path)]


def _write(path: Path, objs: list[dict[str, Any]]) -> None:
    path.write_bytes(b"".join(layout.line(o) for o in objs))


def _statements(bundle: Path, thing: str) -> Iterator[tuple[int, dict[str, Any]]]:
    for o in _objs(bundle / layout.ENTRIES):
        env = json.loads(base64.b64decode(o["entry"]))
        if env["payloadType"].endswith(f".{thing}+json"):
            yield int(o["index"]), json.loads(base64.b64decode(env["payload"]))


def _cut(bundle: Path, below: int) -> int:
    """Cut the bundle back to its newest checkpoint smaller than `below`, as its owner could:
    entries, checkpoints and cosignatures after it removed, the manifest's size edited to match.
    Returns the new size."""
    checkpoints = [o for o in _objs(bundle / layout.CHECKPOINTS) if 0 < o["size"] < below]
    size = checkpoints[-1]["size"]
    _write(bundle / layout.CHECKPOINTS, checkpoints)
    _write(bundle / layout.ENTRIES, _objs(bundle / layout.ENTRIES)[:size])
    cosignatures = [o for o in _objs(bundle / layout.COSIGNATURES) if o["size"] <= size]
    _write(bundle / layout.COSIGNATURES, cosignatures)
    manifest = json.loads((bundle / layout.MANIFEST).read_bytes())
    (bundle / layout.MANIFEST).write_bytes(layout.line({**manifest, "size": size}))
    return size


def _fails(paths: list[Path], b: Bundles, **kwargs: Any) -> BundleError:
    with pytest.raises(BundleError) as info:
        verify_bundles(paths, b.authority, **kwargs)
    return info.value


def _cli(b: Bundles, paths: list[Path], *options: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(
        app,
        [
            "audit",
            "verify",
            *map(str, paths),
            "--authority-key",
            str(b.fed.authority_key),
            *options,
        ],
    )
    assert "Traceback" not in result.output
    return result.exit_code, result.stdout, result.stderr


# -- (a) a city's log cut short ------------------------------------------------------------------


def test_a_city_bundle_cut_below_what_the_broker_receipted_is_truncated(work: Bundles) -> None:
    broker = work.fed.broker_id
    receipted = max(
        c["node_log_index"]
        for _, r in _statements(work.broker, "receipt")
        for c in r["cities"]
        if c["city"] == CITY and c["node_log_index"] is not None
    )
    cut = work.nodes[CITY]
    size = _cut(cut, below=receipted + 1)
    # A consistent prefix, every checkpoint genuinely signed: alone it verifies...
    assert verify_bundle(cut, work.authority).size == size
    # ...but the broker's receipt says the city logged a result at `receipted`.
    e = _fails(work.all, work)
    assert (e.reason, e.file) == ("LOG_TRUNCATED", cut / layout.CHECKPOINTS), e.message
    assert f"node {CITY}'s log ends at size {size}" in e.message
    assert f"but {broker} receipted a result at index {receipted}" in e.message
    assert f"at least {receipted + 1} entries" in e.message
    # Verified alone, as a federation verification, the others are missing.
    e = _fails([cut], work)
    assert e.reason == "PARTY_MISSING"


# -- (b) the broker's log cut short --------------------------------------------------------------


def test_a_broker_bundle_cut_below_what_cities_cosigned_is_truncated(work: Bundles) -> None:
    witnessed = {
        city: max(s["tree_size"] for _, s in _statements(work.nodes[city], "cosignature"))
        for city in work.nodes
    }
    cut = work.broker
    size = _cut(cut, below=min(witnessed.values()) // 2)
    assert 0 < size < min(witnessed.values())
    assert verify_bundle(cut, work.authority).size == size
    e = _fails(work.all, work)
    assert (e.reason, e.file) == ("LOG_TRUNCATED", cut / layout.CHECKPOINTS), e.message
    assert f"broker {work.fed.broker_id}'s log ends at size {size}" in e.message
    largest = max(witnessed.values())
    assert f"that it cosigned size {largest}" in e.message
    assert any(f"but {city} logged" in e.message for city, w in witnessed.items() if w == largest)


def test_each_bundle_s_extent_is_its_newest_signed_checkpoint(bundles: Bundles) -> None:
    report = verify_bundles(bundles.all, bundles.authority)
    assert report.coverage is not None
    by_party = {p.party: p for p in report.coverage.parties}
    for s in report.bundles:
        newest = _objs(s.path / layout.CHECKPOINTS)[-1]["size"]
        assert s.size == by_party[s.party].size == newest
        seen = by_party[s.party].seen
        assert seen is not None and seen.size <= newest
    broker = by_party[bundles.fed.broker_id]
    # Every city cosigned the broker's newest checkpoint (in the last witnessing round).
    assert broker.cosigned_by == tuple(sorted(bundles.nodes))


# -- (c) a party left out ------------------------------------------------------------------------


def test_a_missing_party_fails_unless_the_auditor_leaves_it_out(bundles: Bundles) -> None:
    left_out = next(c for c in bundles.nodes if c != CITY)
    paths = [p for c, p in bundles.nodes.items() if c != left_out] + [bundles.broker]
    e = _fails(paths, bundles)
    assert e.reason == "PARTY_MISSING"
    assert left_out in e.message
    assert e.file == bundles.nodes[CITY] / "trust" / "v1.json"

    report = verify_bundles(paths, bundles.authority, exclude=[left_out]).to_json()
    lines = {p["party"]: p for p in report["parties"]}
    assert lines[left_out]["status"] == "excluded"
    assert lines[left_out]["size"] is None
    for party in [*(c for c in bundles.nodes if c != left_out), bundles.fed.broker_id]:
        assert lines[party]["status"] == "covered"
        assert lines[party]["size"] > 0
    # An explicit list of parties: the others are reported as not requested.
    only = verify_bundles([bundles.nodes[CITY]], bundles.authority, parties=[CITY])
    assert only.coverage is not None
    statuses = {p.party: p.status for p in only.coverage.parties}
    assert statuses[CITY] == "covered"
    assert set(statuses.values()) == {"covered", "not requested"}
    e = _fails([bundles.nodes[CITY]], bundles, parties=[CITY, left_out])
    assert e.reason == "PARTY_MISSING" and left_out in e.message


def test_the_cli_reports_parties_and_sizes_covered(bundles: Bundles) -> None:
    left_out = next(c for c in bundles.nodes if c != CITY)
    paths = [p for c, p in bundles.nodes.items() if c != left_out] + [bundles.broker]
    code, _, err = _cli(bundles, paths)
    assert code == 1
    assert "(PARTY_MISSING)" in err and left_out in err

    code, out, _ = _cli(bundles, paths, "--exclude", left_out)
    assert code == 0, out
    assert "Logs covered" in out and "excluded" in out and "OK" in out

    code, out, _ = _cli(bundles, paths, "--exclude", left_out, "--json")
    assert code == 0
    report = json.loads(out)
    sizes = {p["party"]: (p["status"], p["size"]) for p in report["parties"]}
    summaries = verify_bundles(paths, bundles.authority, exclude=[left_out]).bundles
    assert sizes == {
        left_out: ("excluded", None),
        **{s.party: ("covered", s.size) for s in summaries},
    }


# -- (d) the broker gave up on a slow city, which released anyway --------------------------------

SLOW_CITY = "borealis"
PARTNER_TIMEOUT_S = 4.0  # the broker keeps 1 s of it: each city gets 3 s
SLOW_S = 4.5
QUERIES = 6


@dataclass
class Slowness:
    """The requests the slow city took too long on (the broker's deadline passed while it
    answered): those it saw were cancelled (`seen`), and those whose cancellation came after its
    last look, as when the deadline passes while the result is being committed (`unseen`)."""

    lock: threading.Lock
    seen: list[str]
    unseen: list[str]


def _make_slow(answerer: Answerer, monkeypatch: pytest.MonkeyPatch) -> Slowness:
    """Every other request slow, and its cancellation hidden from the node's last look."""
    slow = Slowness(threading.Lock(), [], [])
    answer, stop_if = answerer._answer, answering._stop_if
    current = threading.local()

    def slow_answer(request: Any, data: Any) -> Any:
        rid = request.request_id
        with slow.lock:
            # A request may be answered again (another answer changed what it relied on).
            first = rid not in slow.seen and rid not in slow.unseen
            if first:
                (slow.unseen if len(slow.unseen) <= len(slow.seen) else slow.seen).append(rid)
            current.blind = rid in slow.unseen
        if first:
            time.sleep(SLOW_S)
        return answer(request, data)

    def last_look(cancelled: Any) -> None:
        if not getattr(current, "blind", False):
            stop_if(cancelled)

    monkeypatch.setattr(answerer, "_answer", slow_answer)
    monkeypatch.setattr(answering, "_stop_if", last_look)
    return slow


def _receipts_later(monkeypatch: pytest.MonkeyPatch, by: timedelta) -> None:
    """The broker's clock, as its receipts show it, moves on (the federation keeps running)."""
    monkeypatch.setattr(
        receipt_doc,
        "timefmt",
        SimpleNamespace(fmt=timefmt.fmt, now=lambda: timefmt.now() + by),
    )


@pytest.fixture
def slow_federation(tmp_path: Path) -> Iterator[RunningFederation]:
    rf = start_federation(tmp_path / "federation", residents_per_city=RESIDENTS_PER_CITY)
    yield rf
    stop_federation(rf)


def _query_all(rf: RunningFederation, n: int) -> list[Any]:
    def one(_: int) -> Any:
        with rf.partner() as client:
            return client.query(BY_MODE, timeout_s=PARTNER_TIMEOUT_S)

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(one, range(n)))


def _export_all(rf: RunningFederation, out: Path) -> list[Path]:
    paths = []
    for city, layout_ in rf.fed.cities.items():
        paths.append(out / city)
        cli_export(layout_.config, paths[-1])
    paths.append(out / rf.fed.broker_id)
    cli_export(rf.fed.broker_config, paths[-1])
    return paths


def test_a_result_released_after_the_broker_gave_up_is_reported_not_failed(
    slow_federation: RunningFederation, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rf = slow_federation
    slow = _make_slow(rf.nodes[SLOW_CITY].city.answerer, monkeypatch)
    answers = _query_all(rf, QUERIES)
    for a in answers:
        # Under load (two CPUs shared with the rest), another city may time out too.
        assert {c.city: c.status for c in a.cities}[SLOW_CITY] == "timed_out"
    time.sleep(SLOW_S)  # the slow city finishes what it still does
    monkeypatch.undo()
    # Later, the federation goes on (its receipts now well past the grace for late results).
    _receipts_later(monkeypatch, timedelta(minutes=5))
    with rf.partner() as client:
        assert {c.status for c in client.query(BY_MODE).cities} == {"answered"}
    monkeypatch.undo()
    rf.broker.witnessing.collect_once()
    paths = _export_all(rf, tmp_path / "bundles")

    report = verify_bundles(paths, load_authority_key(rf.fed.authority_key))
    assert report.coverage is not None
    assert {p.status for p in report.coverage.parties} == {"covered"}
    slow_bundle = paths[list(rf.fed.cities).index(SLOW_CITY)]
    logged = {r["request_id"] for _, r in _statements(slow_bundle, "result")}
    queried = {q["request_id"] for _, q in _statements(slow_bundle, "query")}
    # Cancelled after the node's last look: released (logged) after the broker stopped waiting,
    # and reported so.
    assert slow.unseen and set(slow.unseen) <= logged
    undelivered = report.coverage.undelivered
    assert {u.receipt_status for u in undelivered} == {"timed_out"}
    assert {u.request_id for u in undelivered if u.city == SLOW_CITY} == set(slow.unseen)
    # Cancelled while it answered: the node saw the broker had gone and released nothing.
    assert slow.seen and not set(slow.seen) & (logged | queried)
    as_json = report.to_json()["released_not_delivered"]
    assert [u.to_json() for u in undelivered] == as_json
    assert {u["request_id"] for u in as_json if u["city"] == SLOW_CITY} == set(slow.unseen)
