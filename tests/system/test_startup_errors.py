"""`node serve` and `broker serve` refuse to start on bad input with one clear line naming the
problem and a non-zero exit, never a traceback: an unknown key, a missing file, a wrong type, an
unreadable or open-mode key file (signing and TLS), an expired certificate."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from cli import sandbox
from tests.system.conftest import Cli


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> sandbox.LocalFederation:
    """Keys, certificates and configs on disk; nothing running."""
    return sandbox.create(tmp_path_factory.mktemp("startup-errors"))


def _config(fed: sandbox.LocalFederation, role: str) -> Path:
    return fed.cities["aurora"].config if role == "node" else fed.broker_config


def _edited(fed: sandbox.LocalFederation, role: str, tmp_path: Path, old: str, new: str) -> Path:
    """A copy of the node's or broker's config with `old` replaced by `new` (which must occur)."""
    text = _config(fed, role).read_text()
    assert old in text, f"{old!r} not in the {role} config"
    path = tmp_path / f"{role}.toml"
    path.write_text(text.replace(old, new, 1))
    return path


def _with_path(
    fed: sandbox.LocalFederation, role: str, tmp_path: Path, key: str, value: Path
) -> Path:
    """A copy of the config whose line `key = "…"` (the first) names `value` instead."""
    lines = _config(fed, role).read_text().splitlines()
    i = next(n for n, line in enumerate(lines) if line.startswith(f"{key} = "))
    lines[i] = f"{key} = {json.dumps(str(value))}"
    path = tmp_path / f"{role}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _refused(cli: Cli, role: str, config: Path, *expected: str) -> None:
    """The serve command exits non-zero with exactly one error line holding `expected`."""
    done: subprocess.CompletedProcess[str] = cli(role, "serve", "--config", str(config))
    out = done.stdout + done.stderr
    assert done.returncode != 0, out
    assert "Traceback" not in out, out
    errors = [line for line in out.splitlines() if line.strip()]
    assert len(errors) == 1, out
    assert errors[0].startswith("error: "), out
    for text in expected:
        assert text in errors[0], out


ROLES = pytest.mark.parametrize("role", ["node", "broker"])


@ROLES
def test_an_unknown_key(cli: Cli, fed: sandbox.LocalFederation, tmp_path: Path, role: str) -> None:
    config = _edited(fed, role, tmp_path, "listen = ", "lissten = ")
    _refused(cli, role, config, "lissten is not a known option", "did you mean listen?")


def test_an_unknown_key_in_a_table(cli: Cli, fed: sandbox.LocalFederation, tmp_path: Path) -> None:
    config = _edited(fed, "broker", tmp_path, "[tls]\n", "[tls]\ncrt = 'x.pem'\n")
    _refused(cli, "broker", config, "tls.crt is not a known option", "did you mean tls.cert?")


@ROLES
@pytest.mark.parametrize("key", ["signing_key", "cert", "bundle"])
def test_a_missing_file(
    cli: Cli, fed: sandbox.LocalFederation, tmp_path: Path, role: str, key: str
) -> None:
    missing = tmp_path / "nowhere" / f"{key}.pem"
    _refused(cli, role, _with_path(fed, role, tmp_path, key, missing), str(missing), "cannot read")


@ROLES
def test_a_wrong_type(cli: Cli, fed: sandbox.LocalFederation, tmp_path: Path, role: str) -> None:
    old, new, key = (
        ("k_floor = 5", 'k_floor = "five"', "k_floor")
        if role == "node"
        else ("city_timeout_s = 5.0", "city_timeout_s = [5]", "city_timeout_s")
    )
    _refused(cli, role, _edited(fed, role, tmp_path, old, new), key, "must be")


@ROLES
@pytest.mark.parametrize("key", ["signing_key", "key"])
def test_an_unreadable_key_file(
    cli: Cli, fed: sandbox.LocalFederation, tmp_path: Path, role: str, key: str
) -> None:
    # A directory where the key should be: unreadable even to root, whose mode bits pass.
    directory = tmp_path / "a-directory.key"
    directory.mkdir(mode=0o700)
    config = _with_path(fed, role, tmp_path, key, directory)
    _refused(cli, role, config, "cannot read", str(directory))


@ROLES
@pytest.mark.parametrize("key", ["signing_key", "key"])
def test_an_open_mode_key_file(
    cli: Cli, fed: sandbox.LocalFederation, tmp_path: Path, role: str, key: str
) -> None:
    party = "aurora" if role == "node" else fed.broker_id
    source = fed.root / ("keys" if key == "signing_key" else "tls") / f"{party}.key"
    copy = tmp_path / "open.key"
    copy.write_bytes(source.read_bytes())
    copy.chmod(0o644)
    config = _with_path(fed, role, tmp_path, key, copy)
    _refused(cli, role, config, "readable by group or others", f"chmod 600 {copy}")


@ROLES
def test_an_expired_certificate(
    cli: Cli, fed: sandbox.LocalFederation, tmp_path: Path, role: str
) -> None:
    assert fed.ca is not None
    party = "aurora" if role == "node" else fed.broker_id
    cert, key = fed.ca.issue(party, days=0).write(tmp_path / "tls", "expired")
    config = _with_path(fed, role, tmp_path, "cert", cert)
    config.write_text(
        config.read_text().replace(str(fed.root / "tls" / f"{party}.key"), str(key), 1)
    )
    _refused(cli, role, config, f"TLS certificate {cert} expired on", "CERTIFICATE_EXPIRED")


def test_a_certificate_with_someone_elses_key(
    cli: Cli, fed: sandbox.LocalFederation, tmp_path: Path
) -> None:
    config = _with_path(fed, "node", tmp_path, "key", fed.root / "tls" / "borealis.key")
    _refused(cli, "node", config, "does not hold the private key")
