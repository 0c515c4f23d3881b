"""`citybroker demo` end to end, as processes: the one-shot demo, and a served federation that outside
clients (`token`, `query`, `describe`) use until SIGTERM stops it and every child it started."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import duckdb
import pytest

from keys import tokens, trust
from tests.system.conftest import Cli, command, environment


def _children(pid: int) -> list[int]:
    """Direct children of `pid` (Linux /proc); empty where that is not available."""
    found: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            text = Path(f"/proc/{pid}/task/{task}/children").read_text()
            found += [int(p) for p in text.split()]
    except OSError:
        pass
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie has exited; only its parent's wait is missing.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _refuses(address: str) -> bool:
    host, port = address.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=2):
            return False
    except OSError:
        return True


def _column(table: str, name: str) -> str:
    """The text of one column of a rich table, every line of it joined (cells fold over lines)."""
    lines = [line for line in table.splitlines() if line.startswith(("┃", "│"))]
    header = [h.strip() for h in re.split("[┃│]", lines[0])]
    at = header.index(name)
    return "".join(re.split("[┃│]", line)[at].strip() for line in lines[1:])


def _stop(proc: subprocess.Popen[str], children: list[int]) -> None:
    """Clean up whatever is still running, by pid: the demo, then any child it left."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    for pid in children:
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_demo_runs_the_three_examples(cli: Cli, tmp_path: Path) -> None:
    started = time.monotonic()
    done = cli("demo", "--dir", str(tmp_path / "demo"), timeout=150)
    elapsed = time.monotonic() - started
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-4000:]
    assert elapsed < 120
    assert "Traceback" not in out
    assert "1. Trips by mode across three cities" in out
    assert "2. The same question for direct marketing: refused by every city" in out
    assert "3a. Trips by district" in out and "3b." in out
    assert out.count("PURPOSE_NOT_IN_AGREEMENT") == 3
    assert "withheld" in out
    # Example 5: a burst beyond the partner's limit, refused with a retry delay.
    assert "5. 10 queries at once" in out and "RATE_LIMITED" in out
    assert re.search(r"RATE_LIMITED\s*│\s*\d+(\.\d+)? s", out), out[-3000:]
    m = re.search(r"Verified (\d+) signatures", out)
    assert m is not None, out[-2000:]
    assert int(m.group(1)) >= 10
    assert "All processes stopped." in out
    # The nodes answered from the default data source: a DuckDB file beside each SQLite node
    # database, which holds consents, agreements and the log but no datasets.
    for city in ("aurora", "borealis", "cascadia"):
        data_file = tmp_path / "demo" / "data" / f"{city}.duckdb"
        with duckdb.connect(str(data_file), read_only=True) as data:
            assert data.execute("SELECT count(*) FROM mobility_trips").fetchone() > (0,)
        with closing(sqlite3.connect(tmp_path / "demo" / "data" / f"{city}.db")) as node:
            tables = {r[0] for r in node.execute("SELECT name FROM sqlite_master")}
        assert "consent_scopes" in tables and "mobility_trips" not in tables


def test_demo_refuses_a_directory_that_is_not_empty(cli: Cli, tmp_path: Path) -> None:
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "something.txt").write_text("keep me\n")
    done = cli("demo", "--dir", str(tmp_path / "busy"))
    assert done.returncode != 0
    assert "not empty" in done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    assert (tmp_path / "busy" / "something.txt").read_text() == "keep me\n"


@pytest.fixture
def served_demo(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], dict[str, Any], Path]]:
    root = tmp_path / "served"
    log = (tmp_path / "demo.out").open("w")
    proc = subprocess.Popen(
        [*command(), "demo", "--serve", "--dir", str(root), "--residents", "100"],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        env=environment(),
    )
    children: list[int] = []
    try:
        info_path = root / "demo.json"
        deadline = time.monotonic() + 120
        info: dict[str, Any] | None = None
        while info is None:
            assert proc.poll() is None, (tmp_path / "demo.out").read_text()[-4000:]
            assert time.monotonic() < deadline, "demo.json did not appear in 120 s"
            try:
                info = json.loads(info_path.read_text())
            except (OSError, ValueError):
                time.sleep(0.2)
        children = _children(proc.pid)
        yield proc, info, tmp_path / "demo.out"
    finally:
        _stop(proc, children)
        log.close()


def _bound_token_answers_a_raw_query(
    cli: Cli, info: dict[str, Any], directory: Path, bundle: trust.TrustBundle
) -> None:
    """As the README's buf curl example: a token from --query-json FILE is bound to that request
    body, which the broker answers with it, and refuses with a token for another query."""
    import grpc
    from google.protobuf import json_format

    from citybroker.broker.v1 import broker_pb2, broker_pb2_grpc
    from domain.query import query_digest
    from edge.partner_client import query_of_request_json
    from edge.status import remote_error

    body = directory / "by-mode.json"
    body.write_text(
        json.dumps(
            {
                "query": {
                    "dataset": "mobility",
                    "purpose": "urban-mobility-planning",
                    "measures": [{"kind": "MEASURE_KIND_COUNT_RECORDS"}],
                    "groupBy": [{"field": "mode"}],
                    "cities": ["aurora", "borealis"],
                }
            }
        )
    )
    partner = (
        *("--key", info["partner"]["private_key"], "--issuer", info["partner"]["id"]),
        *("--audience", info["broker"]["id"]),
    )
    done = cli("token", *partner, "--query-json", str(body))
    assert done.returncode == 0, done.stderr
    token = done.stdout.strip()
    grant = tokens.verify(token, bundle, audience=info["broker"]["id"]).grant
    asked, _ = query_of_request_json(body.read_text())
    assert (grant.call, grant.query_digest, grant.cities) == (
        tokens.Call.QUERY,
        query_digest(asked),
        ("aurora", "borealis"),
    )
    # The same query from the `query` options gives the same binding.
    done = cli(
        "token",
        *partner,
        *("--dataset", "mobility", "--purpose", "urban-mobility-planning"),
        *("--measure", "count_records", "--group-by", "mode", "--city", "aurora"),
        *("--city", "borealis"),
    )
    assert done.returncode == 0, done.stderr
    other_token = done.stdout.strip()
    assert tokens.verify(other_token, bundle, info["broker"]["id"]).grant == grant
    request = json_format.Parse(body.read_text(), broker_pb2.QueryRequest())
    credentials = grpc.ssl_channel_credentials(Path(info["ca_cert"]).read_bytes())
    with grpc.secure_channel(info["broker"]["address"], credentials) as channel:
        stub = broker_pb2_grpc.BrokerServiceStub(channel)
        response = stub.Query(request, metadata=[("authorization", f"Bearer {token}")], timeout=30)
        assert [c.city_id for c in response.cities] == ["aurora", "borealis"]
        request.query.cities.append("cascadia")
        with pytest.raises(grpc.RpcError) as refused:
            stub.Query(request, metadata=[("authorization", f"Bearer {other_token}")], timeout=30)
    e = remote_error(refused.value)
    assert (e.code, e.reason) == ("PERMISSION_DENIED", "TOKEN_QUERY_MISMATCH")


def test_served_demo_answers_outside_clients_and_stops_cleanly(
    cli: Cli, served_demo: tuple[subprocess.Popen[str], dict[str, Any], Path]
) -> None:
    proc, info, out_path = served_demo
    demo_json = str(Path(info["trust_bundle"]).parent / "demo.json")
    children = _children(proc.pid)
    assert len(children) == 4  # three nodes and a broker

    # A token from the CLI verifies against the trust bundle.
    done = cli(
        "token",
        "--key",
        info["partner"]["private_key"],
        "--issuer",
        info["partner"]["id"],
        "--audience",
        info["broker"]["id"],
    )
    assert done.returncode == 0, done.stderr
    token = done.stdout.strip()
    bundle = trust.load_bundle(
        Path(info["trust_bundle"]), trust.load_authority_key(Path(info["authority_key"]))
    )
    verified = tokens.verify(token, bundle, audience=info["broker"]["id"])
    assert verified.issuer == info["partner"]["id"]
    assert 0 < verified.expires_at - verified.issued_at <= tokens.MAX_LIFETIME_S
    # Without a query it authorises DescribeFederation only.
    assert verified.grant == tokens.Grant(tokens.Call.DESCRIBE)
    _bound_token_answers_a_raw_query(cli, info, out_path.parent, bundle)

    # A query from the CLI is answered by all three cities and fully verified.
    by_mode = (
        *("query", "--demo", demo_json, "--dataset", "mobility"),
        *("--purpose", "urban-mobility-planning", "--measure", "count_records"),
        *("--group-by", "mode"),
    )
    done = cli(*by_mode, "--json")
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["signatures_verified"] == 5
    assert [c["status"] for c in answer["cities"]] == ["answered"] * 3
    assert {c["key"]["mode"] for c in answer["cells"]} <= {"bus", "tram", "bike", "walk", "car"}
    assert all(c["values"]["count_records"] > 0 for c in answer["cells"] if not c["withheld"])

    # A refused purpose is an answer too (each city says why), not a CLI failure.
    done = cli(
        "query",
        "--demo",
        demo_json,
        "--dataset",
        "mobility",
        "--purpose",
        "direct-marketing",
        "--measure",
        "count_records",
        "--json",
    )
    assert done.returncode == 0, done.stderr
    assert [c["reason"] for c in json.loads(done.stdout)["cities"]] == [
        "PURPOSE_NOT_IN_AGREEMENT"
    ] * 3

    # A dry run: the broker's PlanQueryResponse as protobuf JSON, and as a table.
    done = cli(*by_mode, "--dry-run", "--json")
    assert done.returncode == 0, done.stderr
    plan = json.loads(done.stdout)
    assert [c["cityId"] for c in plan["cities"]] == list(info["cities"])
    assert all(c["plan"]["allowed"] for c in plan["cities"]), plan
    assert plan["negotiated"]["dataset"] == "mobility"
    done = cli(*by_mode, "--dry-run")
    assert done.returncode == 0, done.stderr
    assert "Plan (dry run)" in done.stdout
    for city in info["cities"]:
        assert city in done.stdout

    done = cli("describe", "--demo", demo_json)
    assert done.returncode == 0, done.stderr
    assert "What you may ask" in done.stdout
    for city in info["cities"]:
        assert city in done.stdout
    # Cells fold at the table width; nothing of an id or purpose code may be cut off.
    assert "…" not in done.stdout
    assert "urban-mobility-planning" in _column(done.stdout, "purposes"), done.stdout
    agreements = _column(done.stdout, "agreement")
    for city in info["cities"]:
        # The demo puts the last city's agreement under cell_key: its version 2 (cli.demo_regimes).
        version = 2 if city == list(info["cities"])[-1] else 1
        assert f"{city}--{info['partner']['id']} v{version}" in agreements, done.stdout

    # SIGTERM stops the demo and every process it started; every port is closed.
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0, out_path.read_text()[-4000:]
    output = out_path.read_text()
    assert "All processes stopped." in output
    assert "Traceback" not in output
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in children if _alive(pid)]
    for address in [info["broker"]["address"], *info["cities"].values()]:
        assert _refuses(address), f"{address} still accepts connections"
