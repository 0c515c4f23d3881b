"""The suite's temporary files are on tmpfs where the machine has one with room and nobody chose a
temporary directory (tests/conftest.py, TMPFS): on a disk, the stores' fsyncs made the suite slow."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from tests.conftest import TMPFS, tmpfs_chosen


def test_temporary_files_are_on_tmpfs_unless_a_directory_was_chosen(tmp_path: Path) -> None:
    if not tmpfs_chosen():
        pytest.skip(f"TMPDIR, TEMP or TMP set, or no room on {TMPFS}: temporary files stay put")
    assert Path(tempfile.gettempdir()) == TMPFS
    assert tmp_path.resolve().is_relative_to(TMPFS.resolve()), tmp_path
