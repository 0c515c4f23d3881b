"""Prometheus metrics, scraped over HTTP from real servers started with `metrics_listen`: calls by
method and code, refusals by reason, rate limiting by partner, cities' outcomes at the broker,
log size and checkpoint age, witnessing lag, the DP budget and consent events by type (those of
a bulk import run by the CLI in a process of its own included).

Every server of one process serves the same counters (one registry per process), so the test
compares scrapes taken before and after what it does; what is read from the stores, each server
serves for its own (a node its log, budgets and consent events; the broker its log and lag)."""

from __future__ import annotations

import csv
import dataclasses
import subprocess
import tomllib
import urllib.request
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from citybroker.broker.v1 import broker_pb2
from cli import sandbox
from domain import agreement as agreement_doc
from domain.agreement import DpTerms
from domain.query import Measure, MeasureKind
from edge.node_server import NodeServer
from keys import timefmt
from node.config import NodeConfig
from tests.conftest import RunningFederation, start_federation, stop_federation
from tests.integration.conftest import Wire, by_mode
from tests.system.conftest import command, environment

BROKER_QUERY = "/citybroker.broker.v1.BrokerService/Query"
NODE_RUN_QUERY = "/citybroker.node.v1.QueryService/RunQuery"
ANSWERED = broker_pb2.CITY_STATUS_ANSWERED
PARTNER_RATE = 6  # the partner's calls a minute at the broker in this test

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture
def observed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Wire]:
    """A fresh federation whose configs set metrics_listen (port 0), and a tight partner rate."""
    real_create = sandbox.create

    def create(root: Path, *args: Any, **kwargs: Any) -> sandbox.LocalFederation:
        fed = real_create(root, *args, **kwargs)
        for path in [*(c.config for c in fed.cities.values()), fed.broker_config]:
            config = {**tomllib.loads(path.read_text()), "metrics_listen": "127.0.0.1:0"}
            if path == fed.broker_config:
                partner = {fed.partner_id: {"queries_per_minute": PARTNER_RATE}}
                config["limits"] = {"partners": partner}
            sandbox.write_toml(path, config)
        return fed

    monkeypatch.setattr(sandbox, "create", create)
    rf = start_federation(tmp_path / "federation", residents_per_city=60)
    w = Wire(rf)
    yield w
    w.close()
    stop_federation(rf)


def scrape(port: int) -> tuple[str, Samples]:
    """The exposition text at http://127.0.0.1:PORT/metrics, and its samples by name and labels."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        assert reply.status == 200
        text = reply.read().decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return text, samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def _dp_agreement(rf: RunningFederation, city: str) -> str:
    fed = rf.fed
    terms = dataclasses.replace(
        fed.agreement(city, version=2), dp=DpTerms(0.5, 2.0, {"distance_km": (0.0, 30.0)})
    )
    rf.operators[city].activate_agreement(
        agreement_doc.sign(terms, fed.cities[city].signer, fed.partner_signer)
    )
    return terms.agreement_id


def test_a_query_a_refusal_and_a_rate_limit_show_in_the_scrape(observed: Wire) -> None:
    rf, fed = observed.rf, observed.fed
    port = rf.broker.metrics.port if rf.broker.metrics else 0
    aurora = node_port(rf, "aurora")
    assert port and all(n.metrics and n.metrics.port for n in rf.nodes.values())
    _, before = scrape(port)

    answered = observed.query()  # one query, answered by the three cities
    assert all(c.status == ANSWERED for c in answered.cities)
    with pytest.raises(grpc.RpcError) as refused:  # one refusal: no token at all
        observed.broker().Query(broker_pb2.QueryRequest(), timeout=10)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    agreement_id = _dp_agreement(rf, "aurora")
    dp = observed.query(by_mode(cities=("aurora",), measures=(Measure(MeasureKind.COUNT_RECORDS),)))
    assert dp.cities[0].status == ANSWERED
    rf.nodes.pop("cascadia").stop(0)  # a city that cannot be reached
    partial = observed.query()
    assert {c.city_id: c.status for c in partial.cities}["cascadia"] != ANSWERED
    limited = 0
    for _ in range(PARTNER_RATE + 1):  # over the partner's rate: refused, then counted
        try:
            observed.broker().DescribeFederation(
                broker_pb2.DescribeFederationRequest(),
                metadata=observed.bearer_describe(),
                timeout=10,
            )
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            limited += 1
            break
    assert limited == 1

    text, after = scrape(port)
    node_text, at_aurora = scrape(aurora)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    # Calls and latency by method and code, at the broker and at the nodes.
    assert delta("citybroker_rpc_requests_total", method=BROKER_QUERY, code="OK") == 3
    assert delta("citybroker_rpc_duration_seconds_count", method=BROKER_QUERY, code="OK") == 3
    assert delta("citybroker_rpc_duration_seconds_sum", method=BROKER_QUERY, code="OK") > 0
    assert delta("citybroker_rpc_requests_total", method=NODE_RUN_QUERY, code="OK") == 3 + 1 + 2
    # Refusals by reason, and the rate limit by partner and limit.
    assert delta("citybroker_rpc_requests_total", method=BROKER_QUERY, code="UNAUTHENTICATED") == 1
    assert delta("citybroker_rpc_refusals_total", method=BROKER_QUERY, reason="TOKEN_MISSING") == 1
    describe = "/citybroker.broker.v1.BrokerService/DescribeFederation"
    assert delta("citybroker_rpc_refusals_total", method=describe, reason="RATE_LIMITED") == 1
    assert (
        delta("citybroker_rate_limited_total", partner=fed.partner_id, limit="queries_per_minute")
        == 1
    )
    # Cities' outcomes at the broker: the one that was down is counted with its code.
    assert (
        delta("citybroker_broker_city_outcomes_total", city="aurora", status="answered", code="OK")
        == 3
    )
    # The registry is the process's: other tests in this process count there too, so deltas.
    down = [
        delta("citybroker_broker_city_outcomes_total", city="cascadia", status=s, code=c)
        for s, c in (("failed", "UNAVAILABLE"), ("timed_out", "DEADLINE_EXCEEDED"))
    ]
    assert sum(down) == 1
    # State read at scrape time, each server its own: the broker its log's size and checkpoint
    # age and the witnessing lag; a node its log, the DP budget and its consent events.
    broker_log = f"citybroker/broker/{fed.broker_id}"
    aurora_log = "citybroker/node/aurora"
    # Each query logs its signed query and receipt (witnessing may log cities' checkpoints too).
    assert value(after, "citybroker_log_entries", log=broker_log) >= 2 * 3
    assert 0 <= value(after, "citybroker_log_checkpoint_age_seconds", log=broker_log) < 120
    assert (
        "citybroker_witnessing_lag_entries",
        frozenset({("log", broker_log), ("witness", "aurora")}),
    ) in after
    assert value(at_aurora, "citybroker_log_entries", log=aurora_log) > 3
    assert 0 <= value(at_aurora, "citybroker_log_checkpoint_age_seconds", log=aurora_log) < 120
    assert not [k for k in after if dict(k[1]).get("log") == aurora_log]
    assert not [k for k in at_aurora if dict(k[1]).get("log") == broker_log]
    # Aurora answered two queries under its DP agreement (the second with cascadia down).
    assert (
        value(at_aurora, "citybroker_dp_budget_spent_epsilon", agreement=agreement_id, version="2")
        == 2 * 0.5
    )
    assert (
        value(at_aurora, "citybroker_dp_budget_total_epsilon", agreement=agreement_id, version="2")
        == 2.0
    )
    # Consent events by type, from aurora's database: the fixture gave its consents through the
    # node's API, and nothing else.
    assert consent_events(at_aurora) == {("given", "registry"): len(rf.consenting["aurora"])}
    # Calls by method and code at a node too (the process's counters).
    assert delta_at(at_aurora, before, NODE_RUN_QUERY) == 3 + 1 + 2
    assert "process_resident_memory_bytes" in text and "process_resident_memory_bytes" in node_text
    # Bounded labels: no resident id anywhere in the exposition.
    residents = [r.resident_id for people in rf.consenting.values() for r in people]
    assert not [r for r in residents if r in text or r in node_text]


def node_port(rf: RunningFederation, city: str) -> int:
    metrics = rf.nodes[city].metrics
    assert metrics is not None and metrics.port
    return metrics.port


def delta_at(after: Samples, before: Samples, method: str) -> float:
    key = ("citybroker_rpc_requests_total", frozenset({("method", method), ("code", "OK")}))
    return after.get(key, 0.0) - before.get(key, 0.0)


def consent_events(samples: Samples) -> dict[tuple[str, str], float]:
    """citybroker_consent_events_total by (event, source)."""
    return {
        (dict(labels)["event"], dict(labels)["source"]): v
        for (name, labels), v in samples.items()
        if name == "citybroker_consent_events_total"
    }


def _write_import(path: Path, partner: str, residents: int) -> None:
    """`residents` new consents, a tenth of them withdrawn, as a city's export would list them."""
    start = timefmt.fmt(timefmt.now() - timedelta(days=1))
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["event", "record_id", "resident_id", "purposes", "recipients",
                    "data_categories", "valid_from", "valid_until"])  # fmt: skip
        for i in range(residents):
            w.writerow(["given", f"imp-{i}", f"aurora-imp{i:04d}", "urban-mobility-planning",
                        partner, "mobility", start, ""])  # fmt: skip
        for i in range(0, residents, 10):
            w.writerow(["withdrawn", f"imp-{i}", "", "", "", "", "", ""])


def test_a_bulk_import_by_the_cli_shows_in_the_running_nodes_scrape(
    observed: Wire, tmp_path: Path
) -> None:
    """The import runs as `citybroker node consent import`, a process of its own, while aurora's
    node serves; the node's scrape counts its events, and so does a replica on the same database."""
    rf, fed = observed.rf, observed.fed
    layout = fed.cities["aurora"]
    replica_config = tmp_path / "node-aurora-b.toml"
    config = tomllib.loads(layout.config.read_text())
    config.update(listen=f"127.0.0.1:{sandbox.free_port()}", metrics_listen="127.0.0.1:0")
    config.pop("health_listen", None)
    sandbox.write_toml(replica_config, config)
    replica = NodeServer(NodeConfig.load(replica_config)).start()
    try:
        assert replica.metrics is not None
        given = len(rf.consenting["aurora"])
        _, before = scrape(node_port(rf, "aurora"))
        assert consent_events(before) == {("given", "registry"): given}

        events = tmp_path / "events.csv"
        _write_import(events, fed.partner_id, 40)
        done = subprocess.run(
            [*command(), "node", "consent", "import", str(events), "--config", str(layout.config)],
            capture_output=True, text=True, timeout=120, env=environment(),
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr

        _, after = scrape(node_port(rf, "aurora"))
        assert consent_events(after) == {
            ("given", "registry"): given,
            ("given", "import"): 40,
            ("withdrawn", "import"): 4,
        }
        _, at_replica = scrape(replica.metrics.port)
        assert consent_events(at_replica) == consent_events(after)
    finally:
        replica.stop(0)
