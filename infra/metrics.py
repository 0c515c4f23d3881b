"""Prometheus metrics of one process: what every part counts, and the HTTP endpoint that serves them.

One registry per process (`REGISTRY`): a node or broker serves it on its `metrics_listen` address.
Counters are bumped where things happen (the gRPC edge, the limiter, the exchange). Figures that
live in the stores (the log's size and latest checkpoint, witnessing lag, privacy budgets, the
consent events recorded) are read when Prometheus scrapes, through the readers of `StateMetric`s
that each endpoint watches for its own server, so that nothing on the hot path pays for them, and
what other processes write to the same database (a bulk import run by the CLI, a replica) counts.

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
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

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

# A reader returns (label values, value) pairs; it is called at scrape time.
Reader = Callable[[], Iterable[tuple[tuple[str, ...], float]]]


class StateMetric:
    """A metric read from a server's stores when its endpoint is scraped (`MetricsEndpoint.watch`):
    each endpoint serves what its own server's readers return, so servers that share a process (as
    in tests) do not serve each other's state."""

    _family: type[GaugeMetricFamily] | type[CounterMetricFamily] = GaugeMetricFamily

    def __init__(self, name: str, documentation: str, labels: list[str]) -> None:
        self.name, self.documentation, self.labels = name, documentation, labels

    def family(self) -> GaugeMetricFamily | CounterMetricFamily:
        """The family, without samples."""
        return self._family(self.name, self.documentation, labels=self.labels)


class StateGauge(StateMetric):
    """A gauge: the store's figure as it is now."""


class StateCounter(StateMetric):
    """A counter that the store keeps (served as NAME_total): what every process writing to the
    store counted, so that replicas sharing one database serve the same figure."""

    _family = CounterMetricFamily


class _StateCollector:
    """The state metrics one endpoint watches, read at every scrape. A reader that fails is
    skipped (logged at debug level: a scrape every few seconds must not flood the log while the
    database is away); a metric none of whose readers could be read is left out of that scrape,
    so that a brief outage never fails a scrape nor shows a counter falling to nothing."""

    def __init__(self, watches: list[tuple[StateMetric, Reader]]) -> None:
        self._readers: dict[StateMetric, list[Reader]] = {}
        for metric, reader in watches:
            self._readers.setdefault(metric, []).append(reader)

    def collect(self) -> Iterator[Metric]:
        """One family per metric read, one sample per label set (the first reader wins)."""
        for metric, readers in self._readers.items():
            family, read = metric.family(), False
            seen: set[tuple[str, ...]] = set()
            for reader in readers:
                try:
                    samples = list(reader())
                except Exception as e:  # the store is away: say so in the log, not in the scrape
                    log.debug("metric %s not read: %s", metric.name, type(e).__name__)
                    continue
                read = True
                for labels, value in samples:
                    if labels not in seen:
                        seen.add(labels)
                        family.add_metric(list(labels), value)
            if read:
                yield family


class _ProcessCollector:
    """The process's own registry (`REGISTRY`), as a part of one endpoint's."""

    def collect(self) -> Iterable[Metric]:
        return REGISTRY.collect()


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
CONSENT_EVENTS = StateCounter(
    "citybroker_consent_events",
    "Consent events recorded in the node's database, by event (given, refused, renewed, "
    "withdrawn, ...) and source: registry (the API and expiry) or import (bulk imports, whichever "
    "process ran them). Erasing a resident's events does not take them back.",
    ["event", "source"],
)


class MetricsEndpoint:
    """The process's registry and this server's state metrics, served over plain HTTP at `address`
    (HOST:PORT; port 0 picks one) on /metrics; `port` is the bound port once started."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.port = 0
        self._watches: list[tuple[StateMetric, Reader]] = []
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def watch(self, metric: StateMetric, reader: Reader) -> MetricsEndpoint:
        """Serve `metric` as `reader` reads it (watches added after `start` are not served)."""
        self._watches.append((metric, reader))
        return self

    def start(self) -> None:
        """Listen (ConfigError LISTEN_FAILED if the address is taken)."""
        served = CollectorRegistry(support_collectors_without_names=True)
        served.register(_ProcessCollector())
        served.register(_StateCollector(self._watches))
        host, _, port = self.address.rpartition(":")
        try:
            server, thread = start_http_server(int(port), host.strip("[]"), served)
        except (OSError, ValueError) as e:
            raise ConfigError(
                f"cannot listen on {self.address} (metrics_listen): {e}", reason="LISTEN_FAILED"
            ) from None
        self._server, self._thread, self.port = server, thread, int(server.server_port)

    def stop(self) -> None:
        """Stop the listener."""
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
