"""Bad input on the command line is a clear message and a non-zero exit, never a traceback."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest

from cli import sandbox
from tests.system.conftest import Cli


def _clean_failure(done: subprocess.CompletedProcess[str], *expected: str) -> str:
    out = done.stdout + done.stderr
    assert done.returncode != 0, out
    assert "Traceback" not in out, out
    for text in expected:
        assert text in out, out
    return out


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> sandbox.LocalFederation:
    """Keys, certificates and configs on disk; nothing running."""
    return sandbox.create(tmp_path_factory.mktemp("cli-errors"))


def _node_config(fed: sandbox.LocalFederation, tmp_path: Path, **replace: str) -> Path:
    """A copy of aurora's config, with top-level string values replaced."""
    text = fed.cities["aurora"].config.read_text()
    for key, value in replace.items():
        lines = [
            f"{key} = {json.dumps(value)}" if line.startswith(f"{key} = ") else line
            for line in text.splitlines()
        ]
        text = "\n".join(lines) + "\n"
    path = tmp_path / "node.toml"
    path.write_text(text)
    return path


def test_node_serve_with_a_missing_config(cli: Cli, tmp_path: Path) -> None:
    done = cli("node", "serve", "--config", str(tmp_path / "nowhere.toml"))
    _clean_failure(done, "cannot read config", "nowhere.toml")


def test_broker_serve_with_a_missing_config(cli: Cli, tmp_path: Path) -> None:
    done = cli("broker", "serve", "--config", str(tmp_path / "nowhere.toml"))
    _clean_failure(done, "cannot read config")


def test_node_serve_with_bad_toml(cli: Cli, tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('city = "aurora"\nlisten = [unclosed\n')
    _clean_failure(cli("node", "serve", "--config", str(bad)), "not valid TOML", "bad.toml")


def test_node_serve_with_a_config_missing_a_key(cli: Cli, tmp_path: Path) -> None:
    config = tmp_path / "incomplete.toml"
    config.write_text('listen = "127.0.0.1:0"\n')
    _clean_failure(
        cli("node", "serve", "--config", str(config)), "incomplete.toml", "CONFIG_INVALID"
    )


def test_node_serve_with_a_wrong_type(
    cli: Cli, fed: sandbox.LocalFederation, tmp_path: Path
) -> None:
    config = _node_config(fed, tmp_path)
    config.write_text(config.read_text().replace("k_floor = 5", 'k_floor = "five"'))
    _clean_failure(cli("node", "serve", "--config", str(config)), "k_floor", "integer")


@pytest.fixture
def open_key(fed: sandbox.LocalFederation) -> Iterator[Path]:
    key = fed.root / "keys" / "aurora.key"
    key.chmod(0o644)
    yield key
    key.chmod(0o600)


def test_node_serve_refuses_a_private_key_readable_by_others(
    cli: Cli, fed: sandbox.LocalFederation, open_key: Path
) -> None:
    done = cli("node", "serve", "--config", str(fed.cities["aurora"].config))
    _clean_failure(done, "readable by group or others", "chmod 600")


def test_token_refuses_a_private_key_readable_by_others(
    cli: Cli, fed: sandbox.LocalFederation
) -> None:
    fed.partner_key.chmod(0o640)
    try:
        done = cli(
            "token",
            "--key",
            str(fed.partner_key),
            "--issuer",
            fed.partner_id,
            "--audience",
            fed.broker_id,
        )
    finally:
        fed.partner_key.chmod(0o600)
    _clean_failure(done, "readable by group or others")
    assert done.stdout.strip() == ""  # no token printed


def test_token_with_a_file_that_is_not_a_key(cli: Cli, tmp_path: Path) -> None:
    junk = tmp_path / "junk.key"
    junk.write_text("not a key\n")
    junk.chmod(0o600)
    done = cli("token", "--key", str(junk), "--issuer", "p", "--audience", "b")
    _clean_failure(done, "junk.key")


def test_token_with_too_long_a_lifetime(cli: Cli, fed: sandbox.LocalFederation) -> None:
    done = cli(
        "token",
        "--key",
        str(fed.partner_key),
        "--issuer",
        fed.partner_id,
        "--audience",
        fed.broker_id,
        "--lifetime",
        "3600",
    )
    _clean_failure(done, "lifetime")


def test_node_serve_on_an_address_in_use(
    cli: Cli, fed: sandbox.LocalFederation, tmp_path: Path
) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        address = f"127.0.0.1:{busy.getsockname()[1]}"
        config = _node_config(fed, tmp_path, listen=address)
        done = cli("node", "serve", "--config", str(config))
    _clean_failure(done, "cannot listen on", address)


def test_node_serve_on_a_foreign_address(
    cli: Cli, fed: sandbox.LocalFederation, tmp_path: Path
) -> None:
    config = _node_config(fed, tmp_path, listen="192.0.2.1:7100")  # TEST-NET-1, not ours
    _clean_failure(cli("node", "serve", "--config", str(config)), "cannot listen on")


def _with_data(fed: sandbox.LocalFederation, tmp_path: Path, data: Path) -> Path:
    """A copy of aurora's config with its datasets in `data` (a DuckDB file)."""
    path = tmp_path / "node.toml"
    path.write_text(f'data = "duckdb:///{data}"\n' + fed.cities["aurora"].config.read_text())
    return path


def test_node_serve_without_its_data_file(
    cli: Cli, fed: sandbox.LocalFederation, tmp_path: Path
) -> None:
    config = _with_data(fed, tmp_path, tmp_path / "missing.duckdb")
    _clean_failure(
        cli("node", "serve", "--config", str(config)),
        "missing.duckdb does not exist",
        "DATA_SOURCE_MISSING",
    )


def test_node_serve_with_data_of_the_wrong_shape(
    cli: Cli, fed: sandbox.LocalFederation, tmp_path: Path
) -> None:
    data = tmp_path / "other.duckdb"
    with duckdb.connect(str(data)) as conn:
        conn.execute("CREATE TABLE mobility_trips (resident_id VARCHAR, mode VARCHAR)")
    _clean_failure(
        cli("node", "serve", "--config", str(_with_data(fed, tmp_path, data))),
        "dataset mobility",
        "'mobility_trips'",
        "'distance_km'",
        "DATA_SCHEMA_MISMATCH",
    )


def test_node_serve_while_a_loader_writes_its_data_file(
    cli: Cli, fed: sandbox.LocalFederation, tmp_path: Path
) -> None:
    data = tmp_path / "loading.duckdb"
    shutil.copy(fed.cities["aurora"].data, data)
    with duckdb.connect(str(data)):  # this process writes: DuckDB locks the file against others
        done = cli("node", "serve", "--config", str(_with_data(fed, tmp_path, data)))
    _clean_failure(done, "loading.duckdb is in use by another process", "DATA_SOURCE_LOCKED")


QUERY = ["query", "--dataset", "mobility", "--purpose", "urban-mobility-planning"]


@pytest.mark.parametrize("measure", ["bogus", "median:distance_km", ""])
def test_query_with_a_bad_measure(cli: Cli, tmp_path: Path, measure: str) -> None:
    done = cli(*QUERY, "--measure", measure, "--demo", str(tmp_path / "demo.json"))
    _clean_failure(done, "measure", "count_records")


def test_query_with_a_measure_missing_its_field(cli: Cli, tmp_path: Path) -> None:
    done = cli(*QUERY, "--measure", "sum", "--demo", str(tmp_path / "demo.json"))
    _clean_failure(done, "needs a field")


def test_query_with_a_bad_filter(cli: Cli, tmp_path: Path) -> None:
    done = cli(
        *QUERY, "--measure", "count_records", "--filter", "mode", "--demo", str(tmp_path / "x")
    )
    _clean_failure(done, "FIELD=VALUE")


def test_query_with_too_many_measures(cli: Cli, tmp_path: Path) -> None:
    measures = [a for i in range(20) for a in ("--measure", f"sum:f{i}")]
    done = cli(*QUERY, *measures, "--demo", str(tmp_path / "demo.json"))
    _clean_failure(done, "at most 8 measures")


def test_query_without_connection_details(cli: Cli) -> None:
    done = cli(*QUERY, "--measure", "count_records")
    _clean_failure(done, "missing --broker")


def test_query_with_a_missing_demo_file(cli: Cli, tmp_path: Path) -> None:
    done = cli(*QUERY, "--measure", "count_records", "--demo", str(tmp_path / "demo.json"))
    _clean_failure(done, "cannot read", "demo.json")


def test_query_when_the_broker_is_not_running(
    cli: Cli, fed: sandbox.LocalFederation, tmp_path: Path
) -> None:
    demo_json = tmp_path / "demo.json"
    demo_json.write_text(json.dumps(fed.demo_json()))
    done = cli(*QUERY, "--measure", "count_records", "--demo", str(demo_json))
    _clean_failure(done, "UNAVAILABLE")


def test_describe_when_the_broker_is_not_running(
    cli: Cli, fed: sandbox.LocalFederation, tmp_path: Path
) -> None:
    demo_json = tmp_path / "demo.json"
    demo_json.write_text(json.dumps(fed.demo_json()))
    _clean_failure(cli("describe", "--demo", str(demo_json)), "UNAVAILABLE")


def test_unknown_command(cli: Cli) -> None:
    _clean_failure(cli("frobnicate"), "frobnicate")
