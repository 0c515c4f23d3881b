"""A federation of real processes (`citybroker node serve`, `citybroker broker serve`) that fault
tests can kill, stop, restart and cut off, and the checks they make afterwards: the broker's log
read through its LogService, verified against its signed checkpoints."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
import tomllib
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from rich.console import Console

from audit.merkle import leaf_hash, root_from_leaf_hashes, verify_consistency
from audit.note import NoteVerifier, parse_checkpoint, verify_note
from citybroker.audit.v1 import audit_pb2, audit_pb2_grpc
from cli import demo, sandbox
from domain import statements
from domain.errors import CallFailed
from domain.query import Dimension, Measure, MeasureKind, Query
from edge.operator_client import OperatorClient
from edge.partner_client import Answer, PartnerClient
from edge.rpc import CHANNEL_OPTIONS, client_credentials
from keys import dsse
from node import synthetic

BY_MODE = Query(
    "mobility",
    demo.PURPOSE,
    (Measure(MeasureKind.COUNT_RECORDS), Measure(MeasureKind.COUNT_RESIDENTS)),
    group_by=(Dimension("mode"),),
)
RECEIPT_TYPE = dsse.media_type("receipt")
# One partner drives the load: the per-partner limits must not be what the tests measure.
ROOMY_LIMITS = {"queries_per_minute": 1_000_000, "max_concurrent": 1000, "max_in_flight": 1000}


def merge_toml(path: Path, changes: Mapping[str, Any]) -> None:
    """Set top-level keys of a TOML config."""
    sandbox.write_toml(path, {**tomllib.loads(path.read_text()), **changes})


@dataclass
class ProcessFederation:
    fed: sandbox.LocalFederation
    procs: demo.Processes
    operators: dict[str, OperatorClient]
    consenting: dict[str, list[synthetic.Resident]]
    _clients: list[PartnerClient] = field(default_factory=list)

    def partner(self) -> PartnerClient:
        """A partner client to the broker (closed with the federation)."""
        f = self.fed
        client = PartnerClient.connect(
            f.broker_address,
            f.broker_id,
            f.partner_id,
            f.partner_signer,
            f.ca_cert,
            f.trust_bundle,
            f.authority_key,
        )
        self._clients.append(client)
        return client

    def process(self, name: str) -> subprocess.Popen[bytes]:
        """The running child called `name` (node-CITY or broker)."""
        return next(p for n, p in reversed(self.procs.children) if n == name)

    def signal(self, name: str, sig: signal.Signals) -> None:
        """Send `sig` to the child `name` (and wait for it when the signal kills)."""
        proc = self.process(name)
        os.kill(proc.pid, sig)
        if sig == signal.SIGKILL:
            proc.wait(10)

    def restart(self, name: str) -> None:
        """Start the child `name` again with its config (after it was killed) and wait until it
        serves."""
        proc = self.process(name)
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        self.procs.children = [(n, p) for n, p in self.procs.children if p is not proc]
        ca = self.fed.ca_cert.read_bytes()
        if name == "broker":
            self.procs.start(name, "broker", "serve", "--config", str(self.fed.broker_config))
            demo.wait_healthy(self.fed.broker_address, client_credentials(ca), self.procs)
            return
        layout = self.fed.cities[name.removeprefix("node-")]
        self.procs.start(name, "node", "serve", "--config", str(layout.config))
        creds = client_credentials(
            ca, layout.operator_cert.read_bytes(), layout.operator_key.read_bytes()
        )
        demo.wait_healthy(layout.address, creds, self.procs)

    def close_clients(self) -> None:
        for client in self._clients:
            client.close()


@contextmanager
def process_federation(
    root: Path,
    residents: int = 60,
    broker: Mapping[str, Any] | None = None,
    nodes: Mapping[str, Mapping[str, Any]] | None = None,
    hosts: dict[str, str] | None = None,
    prefixes: Mapping[str, Sequence[str]] | None = None,
) -> Iterator[ProcessFederation]:
    """The demo's federation (cli.demo.running_federation) with roomy partner limits; `broker`
    and `nodes` (by city) override config keys, `hosts` and `prefixes` place parties elsewhere."""
    fed = sandbox.create(root, hosts=hosts)
    merge_toml(fed.broker_config, {"limits": ROOMY_LIMITS, **(broker or {})})
    for city, layout in fed.cities.items():
        merge_toml(layout.config, {"limits": ROOMY_LIMITS, **(nodes or {}).get(city, {})})
    console = Console(quiet=True)
    with demo.running_federation(fed, residents, console, prefixes) as (procs, ops, consenting):
        running = ProcessFederation(fed, procs, ops, consenting)
        try:
            yield running
        finally:
            running.close_clients()


def outcomes(answer: Answer) -> dict[str, tuple[str, str]]:
    """Each city's (status, code) in an answer."""
    return {c.city: (c.status, c.code) for c in answer.cities}


def timed_query(client: PartnerClient, timeout_s: float = 30.0) -> tuple[Answer, float]:
    """BY_MODE asked, and how long the answer took (seconds)."""
    started = time.monotonic()
    answer = client.query(BY_MODE, timeout_s=timeout_s)
    return answer, time.monotonic() - started


def wait_until(what: str, ready: Callable[[], bool], timeout_s: float = 30.0) -> None:
    """Poll `ready` until it holds; AssertionError naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if ready():
                return
        except CallFailed:
            pass
        time.sleep(0.3)
    raise AssertionError(f"{what}: not within {timeout_s:g} s")


# -- load -------------------------------------------------------------------------------------


@dataclass
class QueryLoad:
    """Partner queries from `threads` threads until stopped: the receipts received (verified by
    the partner client) and the errors, as (code, reason)."""

    rf: ProcessFederation
    threads: int = 3
    receipts: list[dict[str, Any]] = field(default_factory=list)
    errors: list[tuple[str, str]] = field(default_factory=list)
    city_codes: set[str] = field(default_factory=set)
    _stop: threading.Event = field(default_factory=threading.Event)
    _workers: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _work(self) -> None:
        client = self.rf.partner()
        while not self._stop.is_set():
            try:
                answer = client.query(BY_MODE, timeout_s=15)
            except CallFailed as e:
                with self._lock:
                    self.errors.append((e.error.code, e.error.reason))
                time.sleep(0.05)
                continue
            with self._lock:
                self.receipts.append(answer.receipt)
                self.city_codes.update(c.code for c in answer.cities)

    def __enter__(self) -> QueryLoad:
        for i in range(self.threads):
            t = threading.Thread(target=self._work, name=f"query-load-{i}", daemon=True)
            t.start()
            self._workers.append(t)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._workers:
            t.join(30)


# -- the broker's log, read as a partner --------------------------------------------------------


@dataclass(frozen=True)
class Checkpoint:
    size: int
    root: bytes


class BrokerLog:
    """The broker's LogService on its mTLS peer port, read as a city (`reader`); every
    checkpoint checked against the broker's key."""

    def __init__(self, fed: sandbox.LocalFederation, reader: str = "aurora") -> None:
        tls = fed.root / "tls"
        peers = tomllib.loads(fed.broker_config.read_text())["peer_listen"]
        creds = client_credentials(
            fed.ca_cert.read_bytes(),
            (tls / f"{reader}.crt").read_bytes(),
            (tls / f"{reader}.key").read_bytes(),
        )
        self._channel = grpc.secure_channel(peers, creds, options=CHANNEL_OPTIONS)
        self._stub = audit_pb2_grpc.LogServiceStub(self._channel)
        self._origin = f"citybroker/broker/{fed.broker_id}"
        self._verifier = NoteVerifier.for_key(self._origin, fed.broker_signer.public)

    def close(self) -> None:
        self._channel.close()

    def checkpoint(self) -> Checkpoint:
        """The latest signed checkpoint, verified."""
        response = self._stub.GetCheckpoint(
            audit_pb2.GetCheckpointRequest(), timeout=10, wait_for_ready=True
        )
        origin, size, root = parse_checkpoint(verify_note(response.checkpoint, [self._verifier]))
        assert origin == self._origin
        return Checkpoint(size, root)

    def entries(self, size: int) -> list[bytes]:
        """The first `size` entries, in index order."""
        out: list[bytes] = []
        token = ""
        while len(out) < size:
            page = self._stub.ListEntries(
                audit_pb2.ListEntriesRequest(page_size=500, page_token=token),
                timeout=30,
                wait_for_ready=True,
            )
            out += [e.entry for e in page.entries]
            token = page.next_page_token
            if not token:
                break
        return out[:size]

    def check_extends(self, earlier: Checkpoint) -> Checkpoint:
        """The latest checkpoint, after checking that it extends `earlier` (a consistency proof
        from the log) and that the listed entries hash to its root. Returns it."""
        latest = self.checkpoint()
        if earlier.size:
            proof = self._stub.GetConsistencyProof(
                audit_pb2.GetConsistencyProofRequest(from_size=earlier.size, to_size=latest.size),
                timeout=10,
                wait_for_ready=True,
            )
            verify_consistency(
                earlier.size, latest.size, list(proof.hashes), earlier.root, latest.root
            )
        entries = self.entries(latest.size)
        assert len(entries) == latest.size
        assert root_from_leaf_hashes([leaf_hash(e) for e in entries]) == latest.root
        return latest

    def receipt_digests(self, size: int) -> set[str]:
        """The receipt_digest of every receipt among the first `size` entries."""
        found = set()
        for entry in self.entries(size):
            env = dsse.Envelope.from_json(entry)
            if env.payload_type == RECEIPT_TYPE:
                found.add(receipt_digest(json.loads(env.payload)))
        return found

    def missing(self, receipts: list[dict[str, Any]], size: int) -> list[dict[str, Any]]:
        """The receipts (as partners verified them) not among the first `size` entries."""
        logged = self.receipt_digests(size)
        return [r for r in receipts if receipt_digest(r) not in logged]


def receipt_digest(receipt: dict[str, Any]) -> str:
    """A receipt payload's digest, however it was parsed (canonical JSON)."""
    return statements.digest(dsse.canonical(receipt))


class CheckpointWatcher:
    """Polls the broker's checkpoint every `interval_s` and keeps the last one it saw: what the
    broker last published to a partner."""

    def __init__(self, log: BrokerLog, interval_s: float = 0.2) -> None:
        self.last = Checkpoint(0, b"")
        self._log, self._interval = log, interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            with suppress(grpc.RpcError):
                self.last = self._log.checkpoint()
            self._stop.wait(self._interval)

    def __enter__(self) -> CheckpointWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
