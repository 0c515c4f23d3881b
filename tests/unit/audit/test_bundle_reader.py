"""Reading a bundle's files (audit.bundle_reader): one line at a time, each checked as read."""

from __future__ import annotations

from pathlib import Path

import pytest

from audit import bundle as layout
from audit.bundle_reader import canonical_lines, read_manifest, signed_files
from audit.checks import BundleError


def test_lines_are_numbered_from_zero_and_parsed(tmp_path: Path) -> None:
    path = tmp_path / layout.ENTRIES
    path.write_bytes(layout.line({"index": 0}) + layout.line({"index": 1}))
    assert list(canonical_lines(path, "entries")) == [(0, {"index": 0}), (1, {"index": 1})]


def test_a_bad_line_is_reported_after_the_good_ones_before_it(tmp_path: Path) -> None:
    path = tmp_path / layout.ENTRIES
    path.write_bytes(layout.line({"index": 0}) + b'{"index": 1}\n')
    lines = canonical_lines(path, "entries")
    assert next(lines) == (0, {"index": 0})
    with pytest.raises(BundleError) as e:
        next(lines)
    assert (e.value.reason, e.value.entry) == ("BUNDLE_LINE_MALFORMED", 1)


def test_missing_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(BundleError) as e:
        list(canonical_lines(tmp_path / layout.CHECKPOINTS, "checkpoints"))
    assert (e.value.reason, e.value.file) == ("BUNDLE_FILE_MISSING", tmp_path / layout.CHECKPOINTS)
    with pytest.raises(BundleError) as e:
        read_manifest(tmp_path / layout.MANIFEST)
    assert e.value.reason == "BUNDLE_FILE_MISSING"


def test_signed_files_come_in_name_order_and_none_without_the_directory(tmp_path: Path) -> None:
    assert list(signed_files(tmp_path / "absent", "*.json")) == []
    (tmp_path / "v2.json").write_bytes(b"2")
    (tmp_path / "v1.json").write_bytes(b"1")
    (tmp_path / "notes.txt").write_bytes(b"x")
    assert list(signed_files(tmp_path, "v*.json")) == [
        (tmp_path / "v1.json", b"1"),
        (tmp_path / "v2.json", b"2"),
    ]
