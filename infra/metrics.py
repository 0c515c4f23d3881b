"""Prometheus metrics of one process: what every part counts, and the HTTP endpoint that serves them.

One registry per process (`REGISTRY`): a node or broker serves it on its `metrics_listen` address.
Counters are bumped where things happen (the gRPC edge, the limiter, the exchange, the consent
registry). Figures that live in the stores (the log's size and latest checkpoint, witnessing lag,
privacy budgets) are read when Prometheus scrapes, through `StateGauge` readers, so that nothing on
the hot path pays for them.

Labels stay bounded: method names, status codes, reasons, partner, city and agreement ids; never a
resident, a record, a request or a query value.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from domain.errors import ConfigError

log = logging.getLogger("citybroker.metrics")

REGISTRY = CollectorRegistry()
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)

RPC_REQUESTS = Counter(
    "citybroker_rpc_requests",
    "gRPC calls handled, by method and status code.",
    ["method", "code"],
    registry=REGISTRY,
)
RPC_LATENCY = Histogram(
    "citybroker_rpc_duration_seconds",
    "Time to handle a gRPC call, by method and status code.",
    ["method", "code"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
    registry=REGISTRY,
)
RPC_REFUSALS = Counter(
    "citybroker_rpc_refusals",
    "gRPC calls refused, by method and ErrorInfo reason.",
    ["method", "reason"],
    registry=REGISTRY,
)
RATE_LIMITED = Counter(
    "citybroker_rate_limited",
    "Calls refused under a partner's limits, by partner and the limit that refused them.",
    ["partner", "limit"],
    registry=REGISTRY,
)
CITY_OUTCOMES = Counter(
    "citybroker_broker_city_outcomes",
    "Cities' outcomes in the broker's exchanges: answered, refused, failed, timed_out, "
    "unverified, with the status code (UNAVAILABLE: the city could not be reached).",
    ["city", "status", "code"],
    registry=REGISTRY,
)
CONSENT_EVENTS = Counter(
    "citybroker_consent_events",
    "Consent events recorded, by event (given, refused, renewed, withdrawn, ...) and source: "
    "registry (the API and expiry) or import.",
    ["event", "source"],
    registry=REGISTRY,
)

# A reader returns (label values, value) pairs; it is called at scrape time.
Reader = Callable[[], Iterable[tuple[tuple[str, ...], float]]]


class StateGauge(Collector):
    """A gauge read from the stores when scraped: each watcher (a running server) gives a reader.
    A reader that fails is skipped and logged, so one unreachable database never fails a scrape."""

    def __init__(self, name: str, documentation: str, labels: list[str]) -> None:
        self.name, self.documentation, self.labels = name, documentation, labels
        self._readers: dict[object, Reader] = {}
        self._lock = threading.Lock()
        REGISTRY.register(self)

    def watch(self, owner: object, reader: Reader) -> None:
        """Read `reader` at every scrape until `unwatch(owner)`."""
        with self._lock:
            self._readers[owner] = reader

    def unwatch(self, owner: object) -> None:
        """Stop reading what `owner` watched."""
        with self._lock:
            self._readers.pop(owner, None)

    def describe(self) -> Iterable[Metric]:
        """The family, without values (the registry checks names at registration)."""
        return [GaugeMetricFamily(self.name, self.documentation, labels=self.labels)]

    def collect(self) -> Iterator[Metric]:
        """One sample per label set, from every reader (the first reader wins a duplicate)."""
        family = GaugeMetricFamily(self.name, self.documentation, labels=self.labels)
        with self._lock:
            readers = list(self._readers.values())
        seen: set[tuple[str, ...]] = set()
        for reader in readers:
            try:
                samples = list(reader())
            except Exception as e:  # the store is away: say so in the log, not in the scrape
                log.warning("metric %s not read: %s", self.name, type(e).__name__)
                continue
            for labels, value in samples:
                if labels not in seen:
                    seen.add(labels)
                    family.add_metric(list(labels), value)
        yield family


LOG_ENTRIES = StateGauge(
    "citybroker_log_entries", "Entries committed to the party's Merkle log.", ["log"]
)
LOG_CHECKPOINT_AGE = StateGauge(
    "citybroker_log_checkpoint_age_seconds",
    "Seconds since the party's latest signed log checkpoint was committed.",
    ["log"],
)
WITNESSING_LAG = StateGauge(
    "citybroker_witnessing_lag_entries",
    "Entries of the broker's log a city has not yet cosigned a checkpoint for.",
    ["log", "witness"],
)
DP_BUDGET_SPENT = StateGauge(
    "citybroker_dp_budget_spent_epsilon",
    "Privacy budget (epsilon) spent under each differential-privacy agreement version.",
    ["agreement", "version"],
)
DP_BUDGET_TOTAL = StateGauge(
    "citybroker_dp_budget_total_epsilon",
    "Privacy budget (epsilon) each differential-privacy agreement version allows in all.",
    ["agreement", "version"],
)


class MetricsEndpoint:
    """The registry served over plain HTTP at `address` (HOST:PORT; port 0 picks one) on /metrics,
    with the state gauges this party watches; `port` is the bound port once started."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.port = 0
        self._watched: list[StateGauge] = []
        self._pending: list[tuple[StateGauge, Reader]] = []
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def watch(self, gauge: StateGauge, reader: Reader) -> MetricsEndpoint:
        """Have `gauge` read `reader` while this endpoint runs."""
        self._pending.append((gauge, reader))
        return self

    def start(self) -> None:
        """Listen (ConfigError LISTEN_FAILED if the address is taken) and start the watches."""
        host, _, port = self.address.rpartition(":")
        try:
            server, thread = start_http_server(int(port), host.strip("[]"), REGISTRY)
        except (OSError, ValueError) as e:
            raise ConfigError(
                f"cannot listen on {self.address} (metrics_listen): {e}", reason="LISTEN_FAILED"
            ) from None
        self._server, self._thread, self.port = server, thread, int(server.server_port)
        for gauge, reader in self._pending:
            gauge.watch(self, reader)
            self._watched.append(gauge)

    def stop(self) -> None:
        """Stop the watches and the listener."""
        for gauge in self._watched:
            gauge.unwatch(self)
        self._watched.clear()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None


def labelled(rows: Iterable[tuple[Any, ...]]) -> list[tuple[tuple[str, ...], float]]:
    """(label values..., value) rows as a reader's samples: every label as text."""
    return [(tuple(str(v) for v in row[:-1]), float(row[-1])) for row in rows]
