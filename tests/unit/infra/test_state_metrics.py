"""The metrics endpoint's state metrics (infra.metrics): each endpoint serves its own server's,
a counter kept by a store is served as a counter, and a store that cannot be read leaves its
metrics out of that scrape without failing it."""

from __future__ import annotations

import logging
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families

from edge.observability import node_metrics
from infra import metrics, storage
from infra.metrics import MetricsEndpoint, StateCounter, StateGauge

COUNTED = StateCounter("citybroker_test_counted", "A counter a store keeps.", ["kind"])
LEVEL = StateGauge("citybroker_test_level", "A figure of a store.", ["kind"])


def scrape(endpoint: MetricsEndpoint) -> dict[str, tuple[str, dict[tuple[str, ...], float]]]:
    """By family name: its type, and its samples' values by (sample name, label values)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{endpoint.port}/metrics", timeout=10) as r:
        assert r.status == 200
        text = r.read().decode()
    return {
        f.name: (f.type, {(s.name, *s.labels.values()): s.value for s in f.samples})
        for f in text_string_to_metric_families(text)
    }


@pytest.fixture
def started() -> Iterator[list[MetricsEndpoint]]:
    endpoints: list[MetricsEndpoint] = []
    yield endpoints
    for e in endpoints:
        e.stop()


def start(started: list[MetricsEndpoint], endpoint: MetricsEndpoint | None) -> MetricsEndpoint:
    assert endpoint is not None
    endpoint.start()
    started.append(endpoint)
    return endpoint


def test_each_endpoint_serves_its_own_state_beside_the_process_counters(
    started: list[MetricsEndpoint],
) -> None:
    a = start(started, MetricsEndpoint("127.0.0.1:0").watch(COUNTED, lambda: [(("x",), 3.0)]))
    b = start(started, MetricsEndpoint("127.0.0.1:0").watch(COUNTED, lambda: [(("x",), 5.0)]))
    assert scrape(a)["citybroker_test_counted"] == (
        "counter",
        {("citybroker_test_counted_total", "x"): 3.0},
    )
    assert scrape(b)["citybroker_test_counted"][1] == {("citybroker_test_counted_total", "x"): 5.0}
    assert "process_resident_memory_bytes" in scrape(a)


def test_a_reader_that_fails_leaves_its_metric_out_of_that_scrape_only(
    started: list[MetricsEndpoint], caplog: pytest.LogCaptureFixture
) -> None:
    down = {"now": True}

    def counted() -> list[tuple[tuple[str, ...], float]]:
        if down["now"]:
            raise sa.exc.OperationalError("SELECT", {}, Exception("database is locked"))
        return [(("x",), 7.0)]

    endpoint = MetricsEndpoint("127.0.0.1:0").watch(COUNTED, counted)
    endpoint.watch(LEVEL, lambda: [(("y",), 1.0)])
    start(started, endpoint)
    with caplog.at_level(logging.DEBUG, logger="citybroker.metrics"):
        families = scrape(endpoint)
    assert "citybroker_test_counted" not in families
    assert families["citybroker_test_level"][1] == {("citybroker_test_level", "y"): 1.0}
    assert [r.levelno for r in caplog.records] == [logging.DEBUG]
    assert "citybroker_test_counted" in caplog.text and "OperationalError" in caplog.text
    down["now"] = False
    assert scrape(endpoint)["citybroker_test_counted"][1] == {
        ("citybroker_test_counted_total", "x"): 7.0
    }


def test_a_node_whose_database_cannot_be_opened_still_answers_a_scrape(
    started: list[MetricsEndpoint], tmp_path: Path
) -> None:
    engine = storage.create_engine(f"sqlite:///{tmp_path / 'node.db'}")
    storage.upgrade(engine)
    endpoint = start(started, node_metrics("127.0.0.1:0", engine, "citybroker/node/aurora"))
    assert scrape(endpoint)[metrics.CONSENT_EVENTS.name] == ("counter", {})
    (tmp_path / "node.db").rename(tmp_path / "moved.db")
    (tmp_path / "node.db").mkdir()  # where the database was: nothing SQLite can open
    engine.dispose()
    families = scrape(endpoint)
    assert metrics.CONSENT_EVENTS.name not in families
    assert "citybroker_log_entries" not in families
    assert "process_resident_memory_bytes" in families
