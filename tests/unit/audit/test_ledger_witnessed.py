"""Ledger.witnessed_unmatched: what cities logged as cosigned against a broker's bundle."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from audit.ledger import Bundle, Ledger, Witnessed

ORIGIN = "citybroker/broker/broker-1"
ROOT, OTHER_ROOT = b"\x01" * 32, b"\x02" * 32


@pytest.fixture
def ledger() -> Iterator[tuple[Ledger, Bundle, Bundle]]:
    ledger = Ledger()
    broker = ledger.add_bundle(Path("broker"), ORIGIN, "broker-1", "broker")
    for size, root in ((3, b"\x00" * 32), (5, ROOT)):
        ledger.add_checkpoint(broker, size, root)
    city = ledger.add_bundle(Path("aurora"), "citybroker/node/aurora", "aurora", "node")
    yield ledger, broker, city
    ledger.close()


def witnessed(size: int, root: bytes = ROOT, line: str = "— a cosignature") -> Witnessed:
    return Witnessed("aurora", ORIGIN, size, root, line, index=7)


def test_a_cosignature_the_broker_holds_matches_whatever_its_timestamp(
    ledger: tuple[Ledger, Bundle, Bundle],
) -> None:
    log, broker, city = ledger
    # The city cosigned size 5 twice (the broker asked again); the broker kept the second.
    log.add_witnessed(city, witnessed(5, line="first"))
    log.add_witnessed(city, witnessed(5, line="second"))
    log.add_cosignature(broker, "aurora", 5)
    assert log.witnessed_unmatched(broker) is None


def test_a_cosignature_the_broker_dropped_is_reported(
    ledger: tuple[Ledger, Bundle, Bundle],
) -> None:
    log, broker, city = ledger
    log.add_witnessed(city, witnessed(5))
    log.add_cosignature(broker, "borealis", 5)  # another city's does not count
    found = log.witnessed_unmatched(broker)
    assert found is not None and found[0] == city and found[2] == "uncosigned"


def test_another_root_or_no_checkpoint_of_that_size_is_reported(
    ledger: tuple[Ledger, Bundle, Bundle],
) -> None:
    log, broker, city = ledger
    log.add_witnessed(city, witnessed(4))
    found = log.witnessed_unmatched(broker)
    assert found is not None and found[2] == "missing"
    fresh = Ledger()
    b = fresh.add_bundle(Path("broker"), ORIGIN, "broker-1", "broker")
    fresh.add_checkpoint(b, 5, ROOT)
    fresh.add_cosignature(b, "aurora", 5)
    c = fresh.add_bundle(Path("aurora"), "citybroker/node/aurora", "aurora", "node")
    fresh.add_witnessed(c, witnessed(5, OTHER_ROOT))
    found = fresh.witnessed_unmatched(b)
    assert found is not None and found[2] == "fork"
    fresh.close()


def test_a_checkpoint_beyond_the_brokers_export_is_not_judged(
    ledger: tuple[Ledger, Bundle, Bundle],
) -> None:
    log, broker, city = ledger
    log.add_witnessed(city, witnessed(9, OTHER_ROOT))  # cosigned after the broker's export
    assert log.witnessed_unmatched(broker) is None
