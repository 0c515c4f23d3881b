"""The error report of `citybroker node consent import`: created at the first failed row only."""

from __future__ import annotations

import csv
from pathlib import Path

from cli.main import _ErrorReport
from node.consent_import import ERROR_REPORT_COLUMNS, RowError


def test_a_clean_run_leaves_no_report(tmp_path: Path) -> None:
    report = _ErrorReport(tmp_path / "in.csv.errors.csv", ERROR_REPORT_COLUMNS)
    report.close()
    assert not report.path.exists()


def test_failed_rows_follow_the_header(tmp_path: Path) -> None:
    report = _ErrorReport(tmp_path / "in.csv.errors.csv", ERROR_REPORT_COLUMNS)
    report.add(RowError(3, "r-1", "PURPOSE_UNKNOWN", "purpose 'x' is not in the taxonomy"))
    report.add(RowError(9, "r-2", "TIMESTAMP_INVALID", "valid_from: bad, value"))
    report.close()
    with report.path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    assert rows == [
        list(ERROR_REPORT_COLUMNS),
        ["3", "r-1", "PURPOSE_UNKNOWN", "purpose 'x' is not in the taxonomy"],
        ["9", "r-2", "TIMESTAMP_INVALID", "valid_from: bad, value"],
    ]
