"""audit.coverage against the city checkpoints a broker recorded: a city's log must reach the largest
size the broker's log recorded for it (else LOG_TRUNCATED), and hold each recorded checkpoint it
reaches with the same root (else LOG_FORK, or CHECKPOINT_MISSING)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from audit import bundle as layout
from audit.checks import BundleError
from audit.coverage import Expected, check_recorded, check_truncation, coverage, seen_by_others
from audit.ledger import Bundle, Ledger, ReceiptRef, Recorded
from keys import timefmt

CITY, BROKER = "aurora", "broker-1"
CITY_ORIGIN, BROKER_ORIGIN = f"citybroker/node/{CITY}", f"citybroker/broker/{BROKER}"
ROOTS = {size: bytes([size]) * 32 for size in range(1, 20)}


@dataclass
class Bundles:
    ledger: Ledger
    city: Bundle
    broker: Bundle


@pytest.fixture
def bundles() -> Iterator[Bundles]:
    """A city bundle with checkpoints 2, 5 and 8, and a broker bundle of size 4."""
    ledger = Ledger()
    city = ledger.add_bundle(Path("aurora.bundle"), CITY_ORIGIN, CITY, "node")
    for size in (2, 5, 8):
        ledger.add_checkpoint(city, size, ROOTS[size])
    broker = ledger.add_bundle(Path("broker.bundle"), BROKER_ORIGIN, BROKER, "broker")
    ledger.add_checkpoint(broker, 4, ROOTS[4])
    yield Bundles(ledger, city, broker)
    ledger.close()


def _record(b: Bundles, size: int, root: bytes | None = None, index: int = 3) -> None:
    b.ledger.add_recorded(
        b.broker, Recorded(BROKER, CITY, CITY_ORIGIN, size, root or ROOTS[size], index)
    )


def _receipt(b: Bundles, node_log_index: int) -> None:
    at = timefmt.now()
    b.ledger.add_receipt(
        b.broker, ReceiptRef(BROKER, CITY, "req-1", "sha256:" + "0" * 64, node_log_index, at)
    )


def _fails(check: object, b: Bundles) -> BundleError:
    assert callable(check)
    with pytest.raises(BundleError) as info:
        check(b.ledger)
    return info.value


def test_a_city_log_cut_below_a_size_the_broker_recorded_is_truncated(bundles: Bundles) -> None:
    _receipt(bundles, 4)  # the last result the broker received: index 4, reached
    _record(bundles, 11, index=3)  # then the broker witnessed the city's checkpoint of size 11
    e = _fails(check_truncation, bundles)
    assert (e.reason, e.file) == ("LOG_TRUNCATED", Path("aurora.bundle") / layout.CHECKPOINTS)
    assert f"node {CITY}'s log ends at size 8 in every bundle given" in e.message
    assert f"but {BROKER} logged (its entry 3 in broker.bundle)" in e.message
    assert "witnessed this log's checkpoint of size 11" in e.message


def test_a_city_log_reaching_what_the_broker_recorded_passes(bundles: Bundles) -> None:
    _receipt(bundles, 4)
    _record(bundles, 5, index=1)
    _record(bundles, 8, index=2)
    check_truncation(bundles.ledger)
    check_recorded(bundles.ledger)
    seen = seen_by_others(bundles.ledger, CITY, "node", CITY_ORIGIN)
    assert seen is not None
    assert (seen.size, seen.by, seen.how, seen.entry) == (8, BROKER, "witnessed", 2)
    report = coverage(bundles.ledger, Expected({CITY: "node", BROKER: "broker"}, Path("t")), [])
    line = {p.party: p.to_json() for p in report.parties}[CITY]
    assert (line["largest_size_seen_by_others"], line["seen_how"]) == (8, "witnessed")


def test_a_receipt_beyond_the_log_is_reported_first_as_receipted(bundles: Bundles) -> None:
    """Both kinds of evidence go past the city's bundle: the receipt is named (it says which
    result is missing), as before there were records."""
    _receipt(bundles, 9)
    _record(bundles, 12)
    e = _fails(check_truncation, bundles)
    assert e.reason == "LOG_TRUNCATED"
    assert f"but {BROKER} receipted a result at index 9" in e.message
    # The largest size vouched for is still reported as the record's.
    seen = seen_by_others(bundles.ledger, CITY, "node", CITY_ORIGIN)
    assert seen is not None and (seen.size, seen.how) == (12, "witnessed")


def test_a_recorded_checkpoint_with_another_root_is_a_fork(bundles: Bundles) -> None:
    _record(bundles, 5, root=b"\xee" * 32, index=6)
    check_truncation(bundles.ledger)  # long enough: the size is not the problem
    e = _fails(check_recorded, bundles)
    assert (e.reason, e.file) == ("LOG_FORK", Path("aurora.bundle") / layout.CHECKPOINTS)
    assert f"{BROKER} recorded (its entry 6 in broker.bundle) {CITY}'s checkpoint of size 5" in (
        e.message
    )


def test_a_recorded_checkpoint_the_city_bundle_lacks_is_missing(bundles: Bundles) -> None:
    _record(bundles, 6)
    e = _fails(check_recorded, bundles)
    assert e.reason == "CHECKPOINT_MISSING"
    assert "no checkpoint of that size" in e.message


def test_a_recorded_checkpoint_beyond_the_city_bundle_is_left_to_truncation(
    bundles: Bundles,
) -> None:
    _record(bundles, 13, root=b"\xee" * 32)
    check_recorded(bundles.ledger)
    assert _fails(check_truncation, bundles).reason == "LOG_TRUNCATED"


def test_records_of_another_city_do_not_count(bundles: Bundles) -> None:
    bundles.ledger.add_recorded(
        bundles.broker,
        Recorded(BROKER, "borealis", "citybroker/node/borealis", 15, b"\xee" * 32, 1),
    )
    check_truncation(bundles.ledger)
    check_recorded(bundles.ledger)
    assert seen_by_others(bundles.ledger, CITY, "node", CITY_ORIGIN) is None
