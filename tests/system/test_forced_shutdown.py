"""A second SIGTERM (or SIGINT) during the shutdown grace: the process exits at once with status
128 + the signal's number, cutting the call in flight, and what it had committed is intact (the
restarted node opens its log, checked against its last checkpoint, and answers again).

The call in flight is held as in test_graceful_shutdown: the city's datasets are on PostgreSQL and
the test locks the trips table, so the node's scan waits.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import sqlalchemy as sa

from cli import sandbox
from edge.health import wait_serving
from edge.partner_client import Answer, PartnerClient
from edge.rpc import client_credentials
from infra import storage
from tests.system.conftest import environment
from tests.system.test_graceful_shutdown import (
    QUERY,
    _configure,
    _died,
    _partner,
    _prepare,
    _start,
    _wait_blocked,
)

GRACE_S = 60.0  # far longer than the test waits: only the second signal can end the process


def _wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _messages(out: Path) -> list[str]:
    lines = out.read_text().splitlines()
    return [json.loads(line)["message"] for line in lines if line.startswith("{")]


def _answered(partner: PartnerClient) -> bool:
    answer = partner.query(QUERY, 60.0)
    return [(c.city, c.status) for c in answer.cities] == [("aurora", "answered")]


def _stopping(out: Path) -> Callable[[], bool]:
    return lambda: any(m.startswith("stopping") for m in _messages(out))


@pytest.mark.postgres
def test_a_second_sigterm_mid_query_exits_at_once_and_leaves_the_log_intact(
    tmp_path: Path, postgres_url: str
) -> None:
    fed = sandbox.create(tmp_path / "fed")
    _configure(fed, postgres_url)
    layout = fed.cities["aurora"]
    node_config = tomllib.loads(layout.config.read_text())
    sandbox.write_toml(layout.config, {**node_config, "shutdown_grace_s": GRACE_S})
    ca = fed.ca_cert.read_bytes()
    operator = client_credentials(
        ca, layout.operator_cert.read_bytes(), layout.operator_key.read_bytes()
    )
    node_out, broker_out = tmp_path / "node.log", tmp_path / "broker.log"
    node = _start(["node", "serve", "--config", str(layout.config)], node_out)
    broker = _start(["broker", "serve", "--config", str(fed.broker_config)], broker_out)
    data = storage.create_engine(postgres_url)
    try:
        wait_serving(
            layout.address, operator, lambda: None if node.poll() is None else _died(node_out)
        )
        wait_serving(fed.broker_address, client_credentials(ca), lambda: None)
        _prepare(fed)
        with _partner(fed) as partner, ThreadPoolExecutor(1) as pool, data.connect() as lock:
            lock.execute(sa.text("LOCK TABLE mobility_trips IN ACCESS EXCLUSIVE MODE"))
            asked = pool.submit(partner.query, QUERY, 60.0)
            _wait_blocked(data)
            node.send_signal(signal.SIGTERM)
            _wait_for(_stopping(node_out), "the node to start stopping")
            time.sleep(0.3)
            assert node.poll() is None  # the grace: the query in flight is waited for
            node.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            assert node.wait(10) == 128 + signal.SIGTERM, node_out.read_text()[-3000:]
            assert time.monotonic() - signalled < 5.0
            answer: Answer = asked.result(30)  # the broker reports the cut call; it is not lost
            lock.rollback()
        assert [(c.city, c.status) for c in answer.cities] == [("aurora", "failed")]
        messages = _messages(node_out)
        assert messages[-1] == "second signal: exiting now"
        assert "stopped" not in messages

        # Restarted, the node opens its log (checked against its last checkpoint) and answers.
        node = _start(["node", "serve", "--config", str(layout.config)], node_out)
        wait_serving(
            layout.address, operator, lambda: None if node.poll() is None else _died(node_out)
        )
        # The broker's channel may still be in its reconnect back-off (at most 2 s, see
        # edge.city_gateway) from calls made while the node was down, so a first query may fail.
        with _partner(fed) as partner:
            _wait_for(lambda: _answered(partner), "the restarted node to answer", 30.0)
    finally:
        data.dispose()
        for proc in (node, broker):
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


# until_signalled alone, in a process whose stop never ends, so that only the second signal can.
_SERVE = """
import time
from cli.serving import prepare, until_signalled
from infra.logs import LogFormat

heap = prepare(LogFormat.JSON)
until_signalled(lambda: None, lambda grace: time.sleep(grace), 600.0, "test server", heap)
"""


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_second_signal_during_the_grace_exits_with_128_plus_its_number(
    tmp_path: Path, signum: signal.Signals
) -> None:
    out = tmp_path / "serve.log"
    with out.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-c", _SERVE],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=environment(),
            cwd=Path(__file__).parents[2],
        )
    try:
        _wait_for(lambda: bool(_messages(out)), "the process to start")
        proc.send_signal(signum)
        _wait_for(_stopping(out), "the process to start stopping")
        proc.send_signal(signum)
        assert proc.wait(5) == 128 + signum == (130 if signum == signal.SIGINT else 143)
        assert _messages(out)[-1] == "second signal: exiting now"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
