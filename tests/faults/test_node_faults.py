"""A node killed while a query is in flight, and a node that hangs: the broker still answers within
its deadline, naming the city, with the other cities' results; the city answers again once back."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge.partner_client import Answer
from tests.faults.harness import ProcessFederation, outcomes, process_federation, timed_query

pytestmark = pytest.mark.faults

CITY_TIMEOUT_S = 2.0
# What the broker may take beyond its per-city deadline: merging, signing, logging, a busy machine.
SLACK_S = 3.0
VICTIM = "borealis"


@pytest.fixture(scope="module")
def rf(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProcessFederation]:
    root: Path = tmp_path_factory.mktemp("node-faults")
    with process_federation(root, broker={"city_timeout_s": CITY_TIMEOUT_S}) as running:
        yield running


def _all_answer(rf: ProcessFederation) -> None:
    answer, _ = timed_query(rf.partner())
    assert {status for status, _ in outcomes(answer).values()} == {"answered"}


def test_a_node_killed_mid_query_is_named_and_the_others_answer(rf: ProcessFederation) -> None:
    _all_answer(rf)  # every channel is connected: the query below reaches the node
    client = rf.partner()
    # Stopped first, so the broker's request is certainly in flight when the node dies.
    rf.signal(f"node-{VICTIM}", signal.SIGSTOP)
    result: dict[str, tuple[Answer, float]] = {}
    asking = threading.Thread(target=lambda: result.update(q=timed_query(client)))
    asking.start()
    time.sleep(0.5)
    rf.signal(f"node-{VICTIM}", signal.SIGKILL)
    asking.join(30)
    answer, elapsed = result["q"]
    assert elapsed < CITY_TIMEOUT_S + SLACK_S
    got = outcomes(answer)
    assert got.pop(VICTIM)[0] in {"failed", "timed_out"}
    assert got == {"aurora": ("answered", "OK"), "cascadia": ("answered", "OK")}
    assert all(c.contributing == ["aurora", "cascadia"] for c in answer.cells)
    # Down for good: refused at once, named.
    answer, elapsed = timed_query(client)
    assert outcomes(answer)[VICTIM] == ("failed", "UNAVAILABLE")
    assert elapsed < CITY_TIMEOUT_S + SLACK_S
    rf.restart(f"node-{VICTIM}")
    _all_answer(rf)


def test_a_hanging_node_times_out_by_name_and_recovers(rf: ProcessFederation) -> None:
    client = rf.partner()
    _all_answer(rf)
    rf.signal(f"node-{VICTIM}", signal.SIGSTOP)
    try:
        answer, elapsed = timed_query(client)
    finally:
        rf.signal(f"node-{VICTIM}", signal.SIGCONT)
    assert elapsed < CITY_TIMEOUT_S + SLACK_S
    assert outcomes(answer) == {
        "aurora": ("answered", "OK"),
        VICTIM: ("timed_out", "DEADLINE_EXCEEDED"),
        "cascadia": ("answered", "OK"),
    }
    assert answer.cells and all(c.contributing == ["aurora", "cascadia"] for c in answer.cells)
    _all_answer(rf)
