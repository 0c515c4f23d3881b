"""`citybroker node agreement …` and `citybroker agreement …` as processes, against a served demo
federation: propose, countersign offline as the partner, activate, list, show (ODRL), revoke; and
bad input ending in one line of error, never a traceback."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from domain import agreement as doc
from keys import dsse
from tests.system.conftest import Cli, command, environment

AGREEMENT_ID = "aurora--research"


def _children(pid: int) -> list[int]:
    found: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            found += [int(p) for p in Path(f"/proc/{pid}/task/{task}/children").read_text().split()]
    except OSError:
        pass
    return found


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, Any]]]:
    """`citybroker demo --serve` in its own process; always stopped (with its children)."""
    base = tmp_path_factory.mktemp("served-agreements")
    root = base / "demo"
    out = (base / "demo.out").open("w")
    proc = subprocess.Popen(
        [*command(), "demo", "--serve", "--dir", str(root), "--residents", "60"],
        stdout=out,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        env=environment(),
    )
    children: list[int] = []
    try:
        deadline = time.monotonic() + 120
        info: dict[str, Any] | None = None
        while info is None:
            assert proc.poll() is None, (base / "demo.out").read_text()[-4000:]
            assert time.monotonic() < deadline, "demo.json did not appear in 120 s"
            try:
                info = json.loads((root / "demo.json").read_text())
            except (OSError, ValueError):
                time.sleep(0.2)
        children = _children(proc.pid)
        yield root, info
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        for pid in children:  # the demo stops its children; kill any it left behind
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        out.close()


def ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "Traceback" not in done.stdout + done.stderr
    return done.stdout


def one_line_error(done: subprocess.CompletedProcess[str], *expected: str) -> str:
    assert done.returncode != 0, done.stdout
    text = done.stdout + done.stderr
    assert "Traceback" not in text, text
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error:"), lines[0]
    for word in expected:
        assert word in lines[0], lines[0]
    return lines[0]


def status_row(listing: str, agreement_id: str) -> str:
    rows = [line for line in listing.splitlines() if f" {agreement_id} " in line]
    assert len(rows) == 1, listing
    return rows[0]


def test_agreement_lifecycle_through_the_cli(
    cli: Cli, served: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    root, info = served
    operator = str(root / "operator-aurora.toml")
    partner_key = info["partner"]["private_key"]
    proposal, signed = tmp_path / "proposal.json", tmp_path / "signed.json"

    out = ok(
        cli(
            "node", "agreement", "propose",
            "--operator", operator,
            "--provider", "aurora",
            "--consumer", info["partner"]["id"],
            "--purpose", "scientific-research",
            "--dataset", "mobility",
            "--field", "district=raw",
            "--field", "trip_date=generalised:month,year",
            "--field", "distance_km=aggregate_only",
            "--id", AGREEMENT_ID,
            "--k", "15",
            "--out", str(proposal),
        )
    )  # fmt: skip
    assert "proposed" in out and info["partner"]["id"] in out
    terms = doc.unverified_terms(dsse.Envelope.from_json(proposal.read_bytes()))
    assert (terms.agreement_id, terms.purposes, terms.min_cell_size) == (
        AGREEMENT_ID,
        frozenset({"scientific-research"}),
        15,
    )
    assert "status" not in json.loads(proposal.read_bytes())  # the file is the signed envelope
    listing = ok(cli("node", "agreement", "list", "--operator", operator))
    assert "proposed" in status_row(listing, AGREEMENT_ID)

    out = ok(cli("agreement", "sign", str(proposal), "--key", partner_key, "--out", str(signed)))
    assert "aurora" in out
    assert len(dsse.Envelope.from_json(signed.read_bytes()).signatures) == 2

    out = ok(cli("node", "agreement", "activate", "--operator", operator, str(signed)))
    assert f"{AGREEMENT_ID} v1 is in force" in out
    listing = ok(cli("node", "agreement", "list", "--operator", operator))
    assert "active" in status_row(listing, AGREEMENT_ID)
    assert "active" in status_row(listing, f"aurora--{info['partner']['id']}")

    odrl = json.loads(
        ok(cli("node", "agreement", "show", "--operator", operator, "--id", AGREEMENT_ID, "--odrl"))
    )
    assert odrl["@type"] == "Agreement"
    assert odrl["uid"].endswith(f"{AGREEMENT_ID}:v1")
    [permission] = odrl["permission"]
    constraints = {c["leftOperand"]: c["rightOperand"] for c in permission["constraint"]}
    assert constraints["purpose"] == ["scientific-research"]
    assert constraints["cb:minCellSize"] == 15
    shown = ok(cli("node", "agreement", "show", "--operator", operator, "--id", AGREEMENT_ID))
    assert "active" in shown and "scientific-research" in shown

    out = ok(
        cli(
            "node", "agreement", "revoke",
            "--operator", operator,
            "--id", AGREEMENT_ID,
            "--reason", "study finished",
        )
    )  # fmt: skip
    assert "revoked" in out
    listing = ok(cli("node", "agreement", "list", "--operator", operator))
    assert "revoked" in status_row(listing, AGREEMENT_ID)
    assert "active" in status_row(listing, f"aurora--{info['partner']['id']}")

    # Revoking again: the node refuses, in one line.
    done = cli("node", "agreement", "revoke", "--operator", operator, "--id", AGREEMENT_ID)
    one_line_error(done, "AGREEMENT_NOT_FOUND")


def test_bad_input_is_one_line_and_no_traceback(
    cli: Cli, served: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    root, info = served
    operator = str(root / "operator-aurora.toml")
    propose = [
        "node", "agreement", "propose",
        "--operator", operator,
        "--provider", "aurora",
        "--consumer", info["partner"]["id"],
        "--purpose", "scientific-research",
        "--dataset", "mobility",
        "--out", str(tmp_path / "p.json"),
    ]  # fmt: skip
    for bad in ("district=bogus", "district", "trip_date=generalised", "district=raw:month"):
        one_line_error(cli(*propose, "--field", bad), "--field")
    field = ["--field", "district=raw", "--field", "distance_km=aggregate_only"]
    for dp in (
        ["--dp-epsilon", "0.5"],  # no total
        ["--dp-epsilon", "2", "--dp-total", "1"],  # more per query than in all
        ["--dp-epsilon", "0.5", "--dp-total", "1", "--dp-bound", "distance_km=5:1"],
        ["--dp-epsilon", "0.5", "--dp-total", "1", "--dp-bound", "distance_km"],
        ["--dp-bound", "distance_km=0:30"],  # bounds without DP
    ):
        one_line_error(cli(*propose, *field, *dp), "dp")
    assert not (tmp_path / "p.json").exists()
    dp_terms = ["--dp-epsilon", "0.5", "--dp-total", "2", "--dp-bound", "distance_km=0:30"]
    proposed = ok(
        cli(*propose, *field, *dp_terms, "--dp-records-per-resident", "3", "--id", "aurora--dp")
    )
    assert "at most 3 record(s) per resident" in proposed
    payload = json.loads(dsse.Envelope.from_json((tmp_path / "p.json").read_bytes()).payload)
    assert payload["dp"] == {
        "epsilon_per_query": 0.5,
        "total_epsilon": 2.0,
        "bounds": {"distance_km": [0.0, 30.0]},
        "records_per_resident": 3,
    }
    (tmp_path / "p.json").unlink()

    missing = tmp_path / "missing.json"
    one_line_error(
        cli("node", "agreement", "activate", "--operator", operator, str(missing)),
        "cannot read",
        str(missing),
    )
    garbage = tmp_path / "garbage.json"
    garbage.write_text("{not json")
    one_line_error(
        cli("node", "agreement", "activate", "--operator", operator, str(garbage)), str(garbage)
    )
    one_line_error(
        cli("agreement", "odrl", str(missing)),
        "cannot read",
    )
    one_line_error(
        cli(
            "agreement", "sign", str(missing),
            "--key", info["partner"]["private_key"],
            "--out", str(tmp_path / "s.json"),
        ),
        "cannot read",
    )  # fmt: skip
    one_line_error(
        cli("node", "agreement", "list", "--operator", str(tmp_path / "no-operator.toml")),
        "no-operator.toml",
    )
    # A proposal the partner never signed cannot be put in force.
    ok(cli(*propose, "--field", "district=raw", "--id", "aurora--unsigned"))
    one_line_error(
        cli("node", "agreement", "activate", "--operator", operator, str(tmp_path / "p.json")),
        "AGREEMENT_SIGNATURE_INVALID",
    )
    # An unknown purpose is refused by the node.
    one_line_error(
        cli(
            *[a if a != "scientific-research" else "astrology" for a in propose],
            "--field",
            "district=raw",
        ),
        "PURPOSE_UNKNOWN",
    )
