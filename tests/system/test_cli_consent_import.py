"""`citybroker node consent import` as a process, on a sandbox federation's node config."""

from __future__ import annotations

import csv
import json
import sqlite3
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from cli import sandbox
from keys import timefmt
from tests.system.conftest import environment

NOW = timefmt.now()
FROM = timefmt.fmt(NOW - timedelta(days=1))
UNTIL = timefmt.fmt(NOW + timedelta(days=365))
HEADER = ["event", "record_id", "resident_id", "purposes", "recipients", "data_categories",
          "valid_from", "valid_until"]  # fmt: skip


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> sandbox.LocalFederation:
    return sandbox.create(tmp_path_factory.mktemp("consent-import"))


def import_(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli.main", "node", "consent", "import", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=environment(),
        stdin=subprocess.DEVNULL,
    )


def count(database: Path, table: str) -> int:
    with sqlite3.connect(database) as conn:
        return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


def write_events(path: Path, residents: int, partner: str) -> int:
    """Residents' consents (with some withdrawn and renewed) and two bad rows; returns the
    number of good rows."""
    good = 0
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(HEADER)
        for i in range(residents):
            w.writerow(["given", f"c-{i}", f"aurora-r{i:06d}", "urban-mobility-planning",
                        partner, "mobility;location", FROM, UNTIL])  # fmt: skip
            good += 1
            if i % 10 == 9:
                w.writerow(["withdrawn", f"c-{i - 5}", "", "", "", "", "", ""])
                w.writerow(["renewed", f"c-{i - 4}", "", "", "", "", "", ""])
                good += 2
        w.writerow(["given", "c-bad", "aurora-r9", "selling-data", partner, "mobility", FROM, ""])
        w.writerow(["withdrawn", "c-unknown", "", "", "", "", "", ""])
    return good


def test_import_reports_bad_rows_and_a_second_run_changes_nothing(
    fed: sandbox.LocalFederation, tmp_path: Path
) -> None:
    city = fed.cities["aurora"]
    events = tmp_path / "events.csv"
    good = write_events(events, 300, fed.partner_id)
    # Small batches, so the file takes several and the workers start.
    done = import_(str(events), "--config", str(city.config), "--batch-size", "100")
    out = done.stdout + done.stderr
    assert done.returncode == 1, out
    assert "Traceback" not in out
    assert "applied" in done.stdout and f"{good:,}" in done.stdout
    assert "PURPOSE_UNKNOWN" in done.stdout and "CONSENT_NOT_FOUND" in done.stdout
    report = events.with_name("events.csv.errors.csv")
    with report.open(newline="") as f:
        rows = list(csv.reader(f))
    last = good + 1  # the header is line 1
    assert rows == [
        ["row", "record_id", "reason", "message"],
        [str(last + 1), "c-bad", "PURPOSE_UNKNOWN", "unknown purpose 'selling-data'"],
        [str(last + 2), "c-unknown", "CONSENT_NOT_FOUND", "no consent record 'c-unknown'"],
    ]
    assert count(city.database, "consent_records") == 300
    assert count(city.database, "consent_events") == good
    # One signed statement per batch of 100 rows covers its events, each in the log.
    batches = -(-(good + 2) // 100)
    assert count(city.database, "consent_batches") == batches
    assert count(city.database, "log_entries") == batches

    report.unlink()
    again = import_(str(events), "--config", str(city.config), "--errors", str(tmp_path / "r.csv"))
    assert again.returncode == 1, again.stdout + again.stderr
    assert "Traceback" not in again.stdout + again.stderr
    assert (tmp_path / "r.csv").exists() and not report.exists()
    assert count(city.database, "consent_events") == good
    assert count(city.database, "log_entries") == batches

    # The auditor's verifier checks the node's log with its batch statements, offline.
    bundle = tmp_path / "bundle"
    exported = subprocess.run(
        [sys.executable, "-m", "cli.main", "audit", "export"]
        + ["--config", str(city.config), "--out", str(bundle)],
        capture_output=True, text=True, timeout=120, env=environment(), stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert exported.returncode == 0, exported.stdout + exported.stderr
    verified = subprocess.run(
        [sys.executable, "-m", "cli.main", "audit", "verify", str(bundle)]
        + ["--authority-key", str(fed.authority_key), "--party", "aurora"],
        capture_output=True, text=True, timeout=120, env=environment(), stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_a_clean_jsonl_import_exits_zero_and_writes_no_report(
    fed: sandbox.LocalFederation, tmp_path: Path
) -> None:
    city = fed.cities["borealis"]
    events = tmp_path / "events.txt"
    lines = [
        {
            "event": "given",
            "record_id": f"j-{i}",
            "resident_id": f"borealis-r{i:06d}",
            "purposes": ["urban-mobility-planning"],
            "recipients": [fed.partner_id],
            "data_categories": ["mobility"],
            "valid_from": FROM,
            "actor": "portal import",
        }
        for i in range(20)
    ]
    events.write_text("".join(json.dumps(x) + "\n" for x in lines))
    done = import_(str(events), "--config", str(city.config), "--format", "jsonl")
    assert done.returncode == 0, done.stdout + done.stderr
    assert not events.with_name("events.txt.errors.csv").exists()
    assert count(city.database, "consent_events") == 20
    with sqlite3.connect(city.database) as conn:
        actors = {r[0] for r in conn.execute("SELECT actor FROM consent_events")}
    assert actors == {"portal import"}


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("missing.csv", None, "cannot read"),
        ("header.csv", "event,record,colour\n", "unknown column(s) 'record', 'colour'"),
        ("empty.csv", "", "is empty"),
        ("events.xml", "<events/>", "cannot tell the format"),
    ],
)
def test_unusable_input_exits_2_with_a_clear_message(
    fed: sandbox.LocalFederation, tmp_path: Path, name: str, content: str | None, expected: str
) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    done = import_(str(path), "--config", str(fed.cities["cascadia"].config))
    out = done.stdout + done.stderr
    assert done.returncode == 2, out
    assert "Traceback" not in out
    assert expected in out
    assert not fed.cities["cascadia"].database.exists()  # nothing was opened


def test_a_missing_config_exits_2(tmp_path: Path) -> None:
    events = tmp_path / "e.csv"
    events.write_text("event,record_id\n")
    done = import_(str(events), "--config", str(tmp_path / "nowhere.toml"))
    assert done.returncode == 2 and "Traceback" not in done.stdout + done.stderr
    assert "cannot read config" in done.stderr
