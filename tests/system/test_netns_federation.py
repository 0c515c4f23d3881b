"""Several hosts: the broker and each node in a network namespace of its own (veth pairs on a private
subnet), real mTLS between them. One city's link is cut: the broker reports that city within its
deadline and answers with the others; once the link is back, the city answers again."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cli import sandbox
from tests.faults.harness import (
    ProcessFederation,
    outcomes,
    process_federation,
    timed_query,
    wait_until,
)
from tests.faults.netns import Hosts, NetnsUnavailable, namespaces

pytestmark = pytest.mark.faults

CITY_TIMEOUT_S = 3.0
SLACK_S = 3.0
BROKER = "broker-1"
CITIES = [c.id for c in sandbox.DEMO_CITIES]
CUT = "cascadia"


@pytest.fixture(scope="module")
def hosts() -> Iterator[Hosts]:
    try:
        with namespaces([BROKER, *CITIES]) as made:
            yield made
    except NetnsUnavailable as e:
        pytest.skip(f"network namespaces unavailable: {e}")


@pytest.fixture(scope="module")
def rf(hosts: Hosts, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProcessFederation]:
    root: Path = tmp_path_factory.mktemp("netns")
    addresses = {**hosts.addresses, f"{BROKER}.peers": hosts.addresses[BROKER]}
    prefixes = {"broker": hosts.prefix(BROKER), **{f"node-{c}": hosts.prefix(c) for c in CITIES}}
    with process_federation(
        root, broker={"city_timeout_s": CITY_TIMEOUT_S}, hosts=addresses, prefixes=prefixes
    ) as running:
        yield running


def test_each_party_is_on_its_own_host(rf: ProcessFederation, hosts: Hosts) -> None:
    assert rf.fed.broker_address.startswith(hosts.addresses[BROKER] + ":")
    for city in CITIES:
        assert rf.fed.cities[city].address.startswith(hosts.addresses[city] + ":")
    answer, _ = timed_query(rf.partner())
    assert {s for s, _ in outcomes(answer).values()} == {"answered"}
    assert answer.signatures_verified == 1 + len(CITIES) + 1  # query, each result, receipt


def test_a_city_cut_off_is_reported_within_the_deadline_and_answers_once_back(
    rf: ProcessFederation, hosts: Hosts
) -> None:
    client = rf.partner()
    timed_query(client)
    hosts.cut(CUT)
    try:
        answer, elapsed = timed_query(client)
        # Twice: over the connection the broker already had, and over whatever it tries next.
        again, elapsed_again = timed_query(client)
    finally:
        hosts.restore(CUT)
    for a, took in ((answer, elapsed), (again, elapsed_again)):
        got = outcomes(a)
        assert got.pop(CUT) in {("timed_out", "DEADLINE_EXCEEDED"), ("failed", "UNAVAILABLE")}
        assert got == {c: ("answered", "OK") for c in CITIES if c != CUT}
        assert a.cells and all(c.contributing == ["aurora", "borealis"] for c in a.cells)
        assert took < CITY_TIMEOUT_S + SLACK_S
    started = time.monotonic()
    wait_until(
        f"{CUT} answers again",
        lambda: outcomes(timed_query(client)[0])[CUT] == ("answered", "OK"),
        timeout_s=60,
    )
    print(f"{CUT} answered again {time.monotonic() - started:.1f} s after its link came back")
