"""System tests run the `citybroker` command as a separate process, as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent / "citybroker"

Cli = Callable[..., subprocess.CompletedProcess[str]]


def command() -> list[str]:
    """The installed console script, or the module if the venv has none."""
    return [str(BIN)] if BIN.exists() else [sys.executable, "-m", "cli.main"]


def environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CITYBROKER_")}
    env["PYTHONUNBUFFERED"] = "1"
    env["COLUMNS"] = "200"
    return env


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    """Run `citybroker ARGS…` to completion; returns the CompletedProcess (text output)."""

    def run(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*command(), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=environment(),
            cwd=tmp_path,
            stdin=subprocess.DEVNULL,
        )

    return run
