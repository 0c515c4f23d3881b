"""The broker's SQLite store on a small tmpfs that fills up: partners get UNAVAILABLE with a reason
(not INTERNAL), nothing committed is damaged (the log still verifies against the checkpoint
published before), and service resumes once the file system has room again."""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from domain.errors import CallFailed
from tests.faults.harness import (
    BrokerLog,
    ProcessFederation,
    outcomes,
    process_federation,
    timed_query,
    wait_until,
)

pytestmark = pytest.mark.faults

SMALL, ROOMY = "4m", "64m"


def _mount(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["mount", *args], capture_output=True, text=True, timeout=30)


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs of SMALL bytes this test mounts (and unmounts, whatever happens)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    where = tmp_path / "small-fs"
    where.mkdir()
    made = _mount("-t", "tmpfs", "-o", f"size={SMALL},mode=0700", "tmpfs", str(where))
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True, timeout=30)


@pytest.fixture
def rf(tmp_path: Path, small_fs: Path) -> Iterator[ProcessFederation]:
    broker = {"database": f"sqlite:///{small_fs / 'broker.db'}"}
    with process_federation(tmp_path / "full-disk", broker=broker) as running:
        yield running


def _fill(directory: Path) -> Path:
    """Write a file into `directory` until its file system has no byte left; the file."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for size in (1 << 20, 1 << 16, 1 << 12, 1 << 9, 1):  # big writes, then what is left
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError as e:
                assert e.errno == errno.ENOSPC
    finally:
        os.close(fd)
    return filler


def test_a_full_disk_is_a_clear_error_and_service_resumes(
    rf: ProcessFederation, small_fs: Path
) -> None:
    client = rf.partner()
    log = BrokerLog(rf.fed)
    receipts = [timed_query(client)[0].receipt for _ in range(3)]
    before = log.checkpoint()
    _fill(small_fs)
    refused: CallFailed | None = None
    for _ in range(200):  # the SQLite WAL may still have room for a few exchanges
        try:
            receipts.append(timed_query(client)[0].receipt)
        except CallFailed as e:
            refused = e
            break
    assert refused is not None, "the broker kept answering on a full disk"
    print(f"refused on a full disk: {refused.error}")
    assert refused.error.code == "UNAVAILABLE"
    assert refused.error.reason in {"STORE_FULL", "STORE_UNAVAILABLE"}
    assert rf.process("broker").poll() is None
    # Still full: still refused clearly, still serving reads of what is committed.
    with pytest.raises(CallFailed) as again:
        timed_query(client)
    assert again.value.error.code == "UNAVAILABLE"
    latest = log.check_extends(before)
    assert not log.missing(receipts, latest.size)
    # Room again: the broker answers without a restart, and the log goes on from where it was.
    grown = _mount("-o", f"remount,size={ROOMY}", str(small_fs))
    assert grown.returncode == 0, grown.stderr
    wait_until(
        "the broker answers again",
        lambda: {s for s, _ in outcomes(timed_query(client)[0]).values()} == {"answered"},
    )
    log.check_extends(latest)
    log.close()
