"""Witnessing against fake cities (no gRPC): each city is offered the broker log's latest checkpoint
with a proof from what it last cosigned; cosignatures are stored, failures skipped until next round."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from sqlalchemy import Engine, select

from audit.log import MerkleLog
from audit.schema import log_cosignatures
from broker.gateway import CityReply, SignedResult, Targets
from broker.witnessing import WitnessCollector
from cli import sandbox
from domain.errors import CallFailed, RemoteError
from domain.kinds import LogKind
from domain.plan import QueryPlan
from keys import dsse
from keys.trust import TrustStore


@dataclass
class FakeWitnesses:
    """Cities that cosign whatever they are offered, except those told to fail."""

    endpoints: dict[str, str]
    known: dict[str, int] = field(default_factory=dict)  # a witness's own idea of its last size
    down: set[str] = field(default_factory=set)
    offered: list[tuple[str, int, int]] = field(default_factory=list)  # city, old size, proof len

    def add_checkpoint(
        self, endpoint: str, old_size: int, checkpoint: str, proof: list[bytes], timeout_s: float
    ) -> str:
        city = self.endpoints[endpoint]
        self.offered.append((city, old_size, len(proof)))
        if city in self.down:
            raise CallFailed(RemoteError("UNAVAILABLE", "", "connection refused"))
        if city in self.known and self.known[city] != old_size:
            raise CallFailed(
                RemoteError(
                    "FAILED_PRECONDITION",
                    "WITNESS_OLD_SIZE_MISMATCH",
                    "old size mismatch",
                    {"known_size": str(self.known[city])},
                )
            )
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


def _stored(engine: Engine) -> list[tuple[int, str]]:
    with engine.connect() as conn:
        rows = conn.execute(select(log_cosignatures.c.tree_size, log_cosignatures.c.witness))
        return sorted((r.tree_size, r.witness) for r in rows)


def test_each_city_cosigns_each_new_size_once(
    fed: sandbox.LocalFederation, trust: TrustStore, broker_db: Engine, broker_log: MerkleLog
) -> None:
    witnesses = FakeWitnesses({c.address: city for city, c in fed.cities.items()})
    collector = WitnessCollector(broker_db, broker_log, trust, witnesses, interval_s=60)
    assert collector.collect_once() == 0  # an empty log has nothing to witness
    broker_log.append_many([b"one", b"two"], kind=LogKind.EXCHANGE)

    assert collector.collect_once() == 3
    assert witnesses.offered == [(c, 0, 0) for c in fed.cities]
    assert collector.collect_once() == 0  # nothing new
    broker_log.append_many([b"three"], kind=LogKind.EXCHANGE)
    witnesses.offered.clear()
    assert collector.collect_once() == 3
    # Offered from the size each city cosigned, with a consistency proof from it.
    assert [(c, old) for c, old, _ in witnesses.offered] == [(c, 2) for c in fed.cities]
    assert all(n > 0 for _, _, n in witnesses.offered)
    assert _stored(broker_db) == sorted([(2, c) for c in fed.cities] + [(3, c) for c in fed.cities])
    with broker_db.connect() as conn:
        line = conn.execute(
            select(log_cosignatures.c.cosignature).where(
                log_cosignatures.c.witness == "aurora", log_cosignatures.c.tree_size == 3
            )
        ).scalar_one()
    assert line == f"— aurora cosigned {broker_log.checkpoint().splitlines()[1]}"


def test_a_city_down_is_skipped_and_one_out_of_step_is_retried_from_its_size(
    fed: sandbox.LocalFederation, trust: TrustStore, broker_db: Engine, broker_log: MerkleLog
) -> None:
    witnesses = FakeWitnesses(
        {c.address: city for city, c in fed.cities.items()},
        known={"borealis": 1},
        down={"cascadia"},
    )
    broker_log.append_many([b"one"], kind=LogKind.EXCHANGE)
    broker_log.append_many([b"two", b"three"], kind=LogKind.EXCHANGE)
    collector = WitnessCollector(broker_db, broker_log, trust, witnesses, interval_s=60)
    assert collector.collect_once() == 2
    assert [(c, old) for c, old, _ in witnesses.offered] == [
        ("aurora", 0),
        ("borealis", 0),
        ("borealis", 1),  # the second try, from the size borealis says it knows
        ("cascadia", 0),
    ]
    assert _stored(broker_db) == [(3, "aurora"), (3, "borealis")]


def test_concurrent_rounds_store_each_cosignature_once(
    fed: sandbox.LocalFederation, trust: TrustStore, broker_db: Engine, broker_log: MerkleLog
) -> None:
    """The background thread's round and a direct call may overlap (the log just grew)."""

    class SlowWitnesses(FakeWitnesses):
        def add_checkpoint(
            self, endpoint: str, old_size: int, checkpoint: str, proof: list[bytes], t: float
        ) -> str:
            time.sleep(0.05)
            return super().add_checkpoint(endpoint, old_size, checkpoint, proof, t)

    witnesses = SlowWitnesses({c.address: city for city, c in fed.cities.items()})
    collector = WitnessCollector(broker_db, broker_log, trust, witnesses, interval_s=60)
    broker_log.append_many([b"one"], kind=LogKind.EXCHANGE)
    with ThreadPoolExecutor(2) as pool:
        counts = sorted(f.result() for f in [pool.submit(collector.collect_once) for _ in "ab"])
    assert counts == [0, 3]
    assert _stored(broker_db) == [(1, c) for c in sorted(fed.cities)]
