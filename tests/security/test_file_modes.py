"""Private files stay private: a TLS private key others can read is refused as a signing key is, and
what the node, the demo and the exporter write is readable by its owner only (0600, dirs 0700)."""

from __future__ import annotations

import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from cli import sandbox
from edge.node_server import NodeServer
from infra import storage
from keys.errors import KeyFileError
from node.config import NodeConfig
from tests.system.conftest import command, environment


@pytest.fixture
def default_umask() -> Iterator[None]:
    """The umask most shells give (022), so that only our own code can make files private."""
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def _open_to_others(root: Path) -> list[str]:
    """Everything under `root` (itself included) that group or others may access."""
    found = []
    for path in [root, *root.rglob("*")]:
        mode = stat.S_IMODE(path.lstat().st_mode)
        if path.is_symlink():
            continue
        if mode & 0o077:
            found.append(f"{path.relative_to(root.parent)} {mode:o}")
    return found


def _run(*args: str, cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*command(), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=environment(),
        cwd=cwd,
        stdin=subprocess.DEVNULL,
    )


def test_serving_with_a_world_readable_tls_key_is_refused(
    tmp_path: Path, default_umask: None
) -> None:
    fed = sandbox.create(tmp_path / "fed")
    config = fed.cities["aurora"].config
    key = NodeConfig.load(config).tls.key
    key.chmod(0o644)
    with pytest.raises(KeyFileError) as info:
        NodeServer(NodeConfig.load(config))
    assert "chmod 600" in info.value.message
    done = _run("node", "serve", "--config", str(config), cwd=tmp_path, timeout=60)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert f"TLS private key {key} is readable by group or others (mode 644)" in lines[0]
    assert "KEY_FILE_INVALID" in lines[0]


def test_the_demo_and_an_audit_export_write_owner_only_files(
    tmp_path: Path, default_umask: None
) -> None:
    root = tmp_path / "demo"
    done = _run("demo", "--dir", str(root), "--residents", "50", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert {p.name for p in (root / "data").iterdir()} >= {"aurora.db", "aurora.duckdb"}
    assert _open_to_others(root) == []
    export = tmp_path / "export"
    config = root / "node-aurora.toml"
    done = _run("audit", "export", "--config", str(config), "--out", str(export), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert any(export.iterdir())
    assert _open_to_others(export) == []


def test_databases_a_process_creates_are_owner_only_whatever_its_umask(
    tmp_path: Path, default_umask: None
) -> None:
    """Without the command line's umask (a node embedded in another program, or tests): SQLite
    files, their -wal and -shm, and DuckDB files are still created 0600, their directories 0700."""
    db = tmp_path / "state" / "node.db"
    engine = storage.create_engine(f"sqlite:///{db}")
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE t (x INTEGER)"))
        conn.execute(sa.text("INSERT INTO t VALUES (1)"))
        assert Path(f"{db}-wal").exists() and Path(f"{db}-shm").exists()
        assert _open_to_others(tmp_path / "state") == []
    engine.dispose()
    data = tmp_path / "data.duckdb"
    duck = storage.create_engine(f"duckdb:///{data}")
    with duck.begin() as conn:
        conn.execute(sa.text("CREATE TABLE t (x INTEGER)"))
    duck.dispose()
    assert stat.S_IMODE(data.stat().st_mode) == 0o600
