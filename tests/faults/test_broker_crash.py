"""The broker killed with SIGKILL under load: after a restart its log extends the last checkpoint it
published (a consistency proof), its entries hash to its new signed root, and every exchange a
partner holds a verified receipt for is in it."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.harness import (
    BrokerLog,
    CheckpointWatcher,
    ProcessFederation,
    QueryLoad,
    outcomes,
    process_federation,
    timed_query,
    wait_until,
)

pytestmark = pytest.mark.faults


@pytest.fixture
def rf(tmp_path: Path) -> Iterator[ProcessFederation]:
    with process_federation(tmp_path / "broker-crash") as running:
        yield running


def test_a_broker_killed_under_load_keeps_every_receipted_exchange(rf: ProcessFederation) -> None:
    log = BrokerLog(rf.fed)
    try:
        with CheckpointWatcher(log) as watcher, QueryLoad(rf, threads=4) as load:
            wait_until("the load has receipts", lambda: len(load.receipts) >= 20, timeout_s=60)
            rf.signal("broker", signal.SIGKILL)
            time.sleep(0.5)
        published = watcher.last
        receipted = list(load.receipts)
        assert len(receipted) > 10, "the load hardly ran before the kill"
        assert published.size > 0
        # Calls in flight at the kill fail as unavailable; nothing is reported as a bug.
        assert {code for code, _ in load.errors} <= {"UNAVAILABLE"}, load.errors[:5]
        rf.restart("broker")
        latest = log.check_extends(published)
        assert latest.size >= published.size
        missing = log.missing(receipted, latest.size)
        assert not missing, f"{len(missing)} of {len(receipted)} receipted exchanges not logged"
        # And the broker works on: a new exchange extends the same log.
        answer, _ = timed_query(rf.partner())
        assert {s for s, _ in outcomes(answer).values()} == {"answered"}
        log.check_extends(latest)
        print(
            f"{len(receipted)} receipts before the kill, published checkpoint "
            f"{published.size}, log {latest.size} entries after restart"
        )
    finally:
        log.close()
