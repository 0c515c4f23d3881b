"""The broker witnessing cities' logs against fake cities (no gRPC) that serve real Merkle logs: each
city's new checkpoint is checked and recorded in the broker's log; cosignatures alone are not
recorded (no endless exchange of records); forks, forgeries and failures are logged, not recorded."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, select

from audit import city_checkpoint
from audit.log import MerkleLog
from audit.note import checkpoint_body, sign_note
from audit.schema import metadata, witnessed_logs
from broker.city_logs import MAX_UNRECORDED, CityLogWatch
from broker.gateway import CityReply, LogHead, ServedEntry, SignedResult, Targets
from broker.witnessing import WitnessCollector
from cli import sandbox
from domain.errors import CallFailed, RemoteError
from domain.kinds import LogKind, Statement
from domain.plan import QueryPlan
from keys import dsse
from keys.ed25519 import Signer
from keys.trust import TrustStore


@dataclass
class FakeCities:
    """Cities serving their logs as a LogService would, and cosigning as a witness would (logging
    a cosignature statement in their own log)."""

    fed: sandbox.LocalFederation
    logs: dict[str, MerkleLog]  # by city
    down: set[str] = field(default_factory=set)
    # Per city, what to serve instead of its own checkpoint note, or its entries.
    notes: dict[str, Callable[[str], str]] = field(default_factory=dict)
    entries: dict[str, Callable[[list[ServedEntry]], list[ServedEntry]]] = field(
        default_factory=dict
    )
    calls: list[tuple[str, str]] = field(default_factory=list)

    def _city(self, endpoint: str, call: str) -> str:
        city = next(c for c, layout in self.fed.cities.items() if layout.address == endpoint)
        self.calls.append((city, call))
        if city in self.down:
            raise CallFailed(RemoteError("UNAVAILABLE", "", "connection refused"))
        return city

    def log_head(self, endpoint: str, since: int, timeout_s: float) -> LogHead:
        city = self._city(endpoint, "head")
        log = self.logs[city]
        note = log.checkpoint()
        if city in self.notes:
            note = self.notes[city](note)
        size = log.size()
        return LogHead(note, log.consistency_proof(since, size) if 0 < since < size else [])

    def log_entries(
        self, endpoint: str, start: int, count: int, timeout_s: float
    ) -> list[ServedEntry]:
        city = self._city(endpoint, "entries")
        log = self.logs[city]
        records = log.records(start, min(start + count, log.size()))
        served = [ServedEntry(r.index, r.kind, r.entry) for r in records]
        return self.entries[city](served) if city in self.entries else served

    def inclusion_proof(
        self, endpoint: str, index: int, size: int, timeout_s: float
    ) -> list[bytes]:
        return self.logs[self._city(endpoint, "proof")].inclusion_proof(index, size)

    def add_checkpoint(
        self, endpoint: str, old_size: int, checkpoint: str, proof: list[bytes], timeout_s: float
    ) -> str:
        city = self._city(endpoint, "cosign")
        cosign(self.fed, self.logs[city], city)
        return f"— {city} cosigned {checkpoint.splitlines()[1]}"

    def run_query(
        self, targets: Targets, signed_query: dsse.Envelope, timeout_s: float
    ) -> list[CityReply[SignedResult]]:
        raise AssertionError("witnessing asks no queries")

    def plan_query(
        self, targets: Targets, signed_request: dsse.Envelope, timeout_s: float
    ) -> list[CityReply[QueryPlan]]:
        raise AssertionError("witnessing asks no queries")

    def describe_offer(
        self, targets: Targets, signed_request: dsse.Envelope, timeout_s: float
    ) -> list[CityReply[list[dsse.Envelope]]]:
        raise AssertionError("witnessing asks no queries")


def cosign(fed: sandbox.LocalFederation, log: MerkleLog, city: str) -> None:
    """What a city's witness logs when it cosigns a broker checkpoint."""
    statement = dsse.sign(
        Statement.COSIGNATURE, {"city": city, "broker": fed.broker_id}, fed.cities[city].signer
    )
    log.append_many([statement.to_json()], LogKind.WITNESS)


def consent(fed: sandbox.LocalFederation, log: MerkleLog, city: str, n: int = 1) -> None:
    """Something a city logs that is not a cosignature (a consent receipt's commitment)."""
    signer = fed.cities[city].signer
    entries = [dsse.sign(Statement.COMMITMENT, {"city": city, "n": i}, signer) for i in range(n)]
    log.append_many([e.to_json() for e in entries], LogKind.CONSENT)


@pytest.fixture
def city_logs(fed: sandbox.LocalFederation, tmp_path: Path) -> Iterator[dict[str, MerkleLog]]:
    engines: list[Engine] = []
    logs = {}
    for city, layout in fed.cities.items():
        engine = create_engine(f"sqlite:///{tmp_path / f'{city}.db'}")
        metadata.create_all(engine)
        engines.append(engine)
        logs[city] = MerkleLog(engine, city_checkpoint.node_origin(city), layout.signer)
        consent(fed, logs[city], city, 2)
    yield logs
    for log in logs.values():
        log.close()
    for engine in engines:
        engine.dispose()


@pytest.fixture
def cities(fed: sandbox.LocalFederation, city_logs: dict[str, MerkleLog]) -> FakeCities:
    return FakeCities(fed, city_logs)


@pytest.fixture
def watch(
    fed: sandbox.LocalFederation,
    trust: TrustStore,
    broker_db: Engine,
    broker_log: MerkleLog,
    cities: FakeCities,
) -> CityLogWatch:
    return CityLogWatch(broker_db, broker_log, trust, cities, fed.broker_id, fed.broker_signer)


def records(log: MerkleLog) -> list[dict[str, Any]]:
    """The broker log's records of city checkpoints, as their payloads."""
    found = []
    for r in log.records(0, log.size()):
        if r.kind != LogKind.WITNESS:
            continue
        env = json.loads(r.entry)
        if env["payloadType"] == dsse.media_type(Statement.WITNESSED_CHECKPOINT):
            assert r.kind == LogKind.WITNESS
            found.append(json.loads(dsse.Envelope.from_json(r.entry).payload))
    return found


def test_each_city_s_checkpoint_is_recorded_once_in_one_batch(
    watch: CityLogWatch, broker_log: MerkleLog, broker_db: Engine, city_logs: dict[str, MerkleLog]
) -> None:
    assert watch.record_once() == 3
    assert broker_log.size() == 3
    got = records(broker_log)
    assert [(r["city"], r["tree_size"], r["extends"]) for r in got] == [
        (c, 2, 0) for c in city_logs
    ]
    for r in got:
        assert r["checkpoint"] == city_logs[r["city"]].checkpoint()
    with broker_db.connect() as conn:
        rows = dict(conn.execute(select(witnessed_logs.c.origin, witnessed_logs.c.tree_size)).all())
    assert rows == {city_checkpoint.node_origin(c): 2 for c in city_logs}
    assert watch.record_once() == 0  # nothing new
    assert broker_log.size() == 3


def test_what_a_city_logs_next_is_recorded_extending_the_last_record(
    fed: sandbox.LocalFederation,
    watch: CityLogWatch,
    broker_log: MerkleLog,
    city_logs: dict[str, MerkleLog],
) -> None:
    watch.record_once()
    consent(fed, city_logs["aurora"], "aurora", 3)
    assert watch.record_once() == 1
    last = records(broker_log)[-1]
    assert (last["city"], last["tree_size"], last["extends"]) == ("aurora", 5, 2)
    assert watch.recorded("aurora") == (5, city_logs["aurora"].root())


def test_cosignatures_alone_are_not_recorded_until_the_city_logs_something_else(
    fed: sandbox.LocalFederation,
    watch: CityLogWatch,
    cities: FakeCities,
    broker_log: MerkleLog,
    city_logs: dict[str, MerkleLog],
) -> None:
    watch.record_once()
    for _ in range(3):
        cosign(fed, city_logs["aurora"], "aurora")
    cities.calls.clear()
    assert watch.record_once() == 0
    # Each cosignature was read and proved to be in the checkpoint.
    assert cities.calls.count(("aurora", "proof")) == 3
    cities.calls.clear()
    assert watch.record_once() == 0
    assert ("aurora", "entries") not in cities.calls  # the same checkpoint is not looked at twice
    consent(fed, city_logs["aurora"], "aurora")
    assert watch.record_once() == 1
    assert records(broker_log)[-1]["tree_size"] == 6


def test_too_many_cosignatures_are_recorded_anyway(
    fed: sandbox.LocalFederation, watch: CityLogWatch, city_logs: dict[str, MerkleLog]
) -> None:
    watch.record_once()
    for _ in range(MAX_UNRECORDED + 1):
        cosign(fed, city_logs["borealis"], "borealis")
    assert watch.record_once() == 1


def test_an_entry_passed_off_as_a_cosignature_is_recorded(
    fed: sandbox.LocalFederation,
    watch: CityLogWatch,
    cities: FakeCities,
    city_logs: dict[str, MerkleLog],
) -> None:
    watch.record_once()
    consent(fed, city_logs["aurora"], "aurora")
    fake = dsse.sign(Statement.COSIGNATURE, {"city": "aurora"}, fed.cities["aurora"].signer)
    # The city serves a cosignature in place of its consent entry: it is not in the tree.
    cities.entries["aurora"] = lambda served: [
        ServedEntry(s.index, LogKind.WITNESS, fake.to_json()) for s in served
    ]
    assert watch.record_once() == 1
    # A consent statement served under the kind `witness`: the bytes say what it is.
    consent(fed, city_logs["aurora"], "aurora")
    cities.entries["aurora"] = lambda served: [
        ServedEntry(s.index, LogKind.WITNESS, s.entry) for s in served
    ]
    assert watch.record_once() == 1
    # A withheld entry: whatever it is, it is recorded.
    consent(fed, city_logs["aurora"], "aurora")
    cities.entries["aurora"] = lambda served: [ServedEntry(s.index, s.kind, b"") for s in served]
    assert watch.record_once() == 1


def _other_log(fed: sandbox.LocalFederation, tmp_path: Path, city: str, n: int) -> MerkleLog:
    engine = create_engine(f"sqlite:///{tmp_path / f'{city}-forked.db'}")
    metadata.create_all(engine)
    log = MerkleLog(engine, city_checkpoint.node_origin(city), fed.cities[city].signer)
    for i in range(n):
        log.append_many([f"another history {i}".encode()], LogKind.CONSENT)
    return log


def test_a_fork_is_logged_as_an_error_and_not_recorded(
    fed: sandbox.LocalFederation,
    watch: CityLogWatch,
    cities: FakeCities,
    broker_log: MerkleLog,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    watch.record_once()
    recorded = watch.recorded("aurora")
    honest = cities.logs["aurora"]
    cities.logs["aurora"] = forked = _other_log(fed, tmp_path, "aurora", 2)  # same size, new root
    consent(fed, cities.logs["borealis"], "borealis")
    with caplog.at_level(logging.WARNING, logger="citybroker.witnessing"):
        assert watch.record_once() == 1  # borealis only
    assert any(
        r.levelno == logging.ERROR and "aurora" in r.getMessage() and "LOG_FORK" in r.getMessage()
        for r in caplog.records
    )
    # Grown from another tree: its consistency proof does not lead to the recorded root.
    forked.append_many([b"more"], LogKind.CONSENT)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="citybroker.witnessing"):
        assert watch.record_once() == 0
    assert any("PROOF_INVALID" in r.getMessage() for r in caplog.records)
    assert watch.recorded("aurora") == recorded
    assert [r["city"] for r in records(broker_log)].count("aurora") == 1
    forked.close()
    cities.logs["aurora"] = honest


def test_a_note_the_city_did_not_sign_or_an_older_one_is_not_recorded(
    fed: sandbox.LocalFederation,
    watch: CityLogWatch,
    cities: FakeCities,
    city_logs: dict[str, MerkleLog],
    caplog: pytest.LogCaptureFixture,
) -> None:
    forger = Signer.generate()
    origin = city_checkpoint.node_origin("aurora")

    def forged(note: str) -> str:
        return sign_note(checkpoint_body(origin, 9, b"\x01" * 32), origin, forger)

    cities.notes["aurora"] = forged
    with caplog.at_level(logging.WARNING, logger="citybroker.witnessing"):
        assert watch.record_once() == 2
    assert any(
        "aurora" in r.getMessage() and "NOTE_INVALID" in r.getMessage() for r in caplog.records
    )
    assert watch.recorded("aurora") == (0, b"")
    del cities.notes["aurora"]
    assert watch.record_once() == 1
    # The city serves an older checkpoint than the one recorded (a log restored from a backup).
    old = city_logs["borealis"].checkpoint()
    consent(fed, city_logs["borealis"], "borealis")
    assert watch.record_once() == 1
    cities.notes["borealis"] = lambda note: old
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="citybroker.witnessing"):
        assert watch.record_once() == 0
    assert any("CHECKPOINT_STALE" in r.getMessage() for r in caplog.records)


def test_a_city_down_is_skipped_and_recorded_when_it_is_back(
    watch: CityLogWatch, cities: FakeCities, broker_log: MerkleLog
) -> None:
    cities.down.add("cascadia")
    assert watch.record_once() == 2
    cities.down.clear()
    assert watch.record_once() == 1
    assert sorted(r["city"] for r in records(broker_log)) == ["aurora", "borealis", "cascadia"]


def test_records_are_offered_for_cosigning_in_the_same_round_and_then_all_is_quiet(
    fed: sandbox.LocalFederation,
    trust: TrustStore,
    broker_db: Engine,
    broker_log: MerkleLog,
    cities: FakeCities,
    city_logs: dict[str, MerkleLog],
    watch: CityLogWatch,
) -> None:
    """Cities log each cosignature; were those recorded, the broker's log would grow, be offered,
    be cosigned, and so on for ever. A round records, offers, and the next one has nothing to do."""
    collector = WitnessCollector(broker_db, broker_log, trust, cities, 60, cities=watch)
    broker_log.append_many([b"an exchange"], kind=LogKind.EXCHANGE)
    assert collector.collect_once() == 3
    assert broker_log.size() == 4  # the exchange and three records, all offered
    assert [c for c, call in cities.calls if call == "cosign"] == list(fed.cities)
    sizes = {c: log.size() for c, log in city_logs.items()}
    assert sizes == {c: 3 for c in city_logs}  # each city logged its cosignature
    for _ in range(3):
        assert collector.collect_once() == 0
    assert broker_log.size() == 4
    assert {c: log.size() for c, log in city_logs.items()} == sizes
    # The city logs a consent event: recorded, offered, cosigned; then quiet again.
    consent(fed, city_logs["aurora"], "aurora")
    assert collector.collect_once() == 3
    assert broker_log.size() == 5
    assert records(broker_log)[-1]["tree_size"] == 4
    assert collector.collect_once() == 0
    assert broker_log.size() == 5


def test_a_failing_record_step_does_not_stop_the_offers(
    fed: sandbox.LocalFederation,
    trust: TrustStore,
    broker_db: Engine,
    broker_log: MerkleLog,
    cities: FakeCities,
    watch: CityLogWatch,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken() -> int:
        raise RuntimeError("database gone")

    monkeypatch.setattr(watch, "record_once", broken)
    collector = WitnessCollector(broker_db, broker_log, trust, cities, 60, cities=watch)
    broker_log.append_many([b"an exchange"], kind=LogKind.EXCHANGE)
    assert collector.collect_once() == 3
