"""Rotation without downtime, on a running federation: a city's signing key (through a new trust
bundle version the node and the broker pick up without a restart), its TLS certificate, and
`keys check` warning about a certificate that ends soon."""

from __future__ import annotations

import base64
import json
import os
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography import x509
from grpc_health.v1 import health_pb2, health_pb2_grpc
from typer.testing import CliRunner

from audit.verifier import verify_bundle
from citybroker.broker.v1 import broker_pb2
from cli.main import app
from infra import trust_watch
from keys import trust
from keys.ca import IssuedCert
from keys.ed25519 import Signer
from tests.conftest import RunningFederation, start_federation, stop_federation
from tests.integration.conftest import Wire

CITY = "aurora"


@pytest.fixture
def rf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[RunningFederation]:
    monkeypatch.setattr(trust_watch, "POLL_INTERVAL_S", 0.2)
    running = start_federation(tmp_path / "federation", residents_per_city=120)
    yield running
    stop_federation(running)


def _eventually(condition: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def _cli(*args: str) -> str:
    done = CliRunner().invoke(app, list(args))
    assert done.exit_code == 0, done.output
    return done.output


def _answered_by_all(wire: Wire) -> None:
    response = wire.query()
    statuses = {c.city_id: (c.status, c.reason, c.message) for c in response.cities}
    assert set(statuses) == set(wire.fed.cities), statuses
    assert all(s == broker_pb2.CITY_STATUS_ANSWERED for s, _, _ in statuses.values()), statuses


def _replace(path: Path, data: bytes) -> None:
    """Replace `path` by rename, as an operator would (mode 600 for key files)."""
    tmp = path.with_name(path.name + ".new")
    tmp.write_bytes(data)
    tmp.chmod(0o600)
    os.replace(tmp, path)


def _entry_keyids(bundle_dir: Path) -> set[str]:
    """The key ids that signed the DSSE statements among a bundle's log entries."""
    keyids = set()
    for line in (bundle_dir / "entries.jsonl").read_text().splitlines():
        entry = base64.b64decode(json.loads(line)["entry"])
        try:
            envelope = json.loads(entry)
        except ValueError:
            continue
        if isinstance(envelope, dict):
            keyids.update(s["keyid"] for s in envelope.get("signatures", []))
    return keyids


def test_a_city_rotates_its_signing_key_without_a_restart(
    rf: RunningFederation, tmp_path: Path
) -> None:
    fed, node = rf.fed, rf.nodes[CITY]
    wire = Wire(rf)
    try:
        _answered_by_all(wire)  # logged under the old key
        old = node.city.rotation.keyid
        new_key = tmp_path / "aurora-2.key"
        _cli("keys", "generate", "--out", str(new_key))
        _cli(
            "trust", "add-key",
            "--bundle", str(fed.trust_bundle),
            "--authority-key", str(fed.root / "keys" / "authority.key"),
            "--party", CITY,
            "--key", str(new_key),
        )  # fmt: skip
        _eventually(lambda: node.city.trust.current.version == 2, "the node to take up v2")
        _eventually(lambda: rf.broker.rotation.version == 2, "the broker to take up v2")
        _replace(fed.root / "keys" / f"{CITY}.key", new_key.read_bytes())
        new = Signer.load(new_key).keyid
        _eventually(lambda: node.city.rotation.keyid == new, "the node to sign with the new key")
        assert new != old
        _answered_by_all(wire)  # the broker verifies the city's result under the new key
    finally:
        wire.close()

    out = tmp_path / "export"
    _cli("audit", "export", "--config", str(fed.cities[CITY].config), "--out", str(out))
    assert sorted(p.name for p in (out / "trust").iterdir()) == ["v1.json", "v2.json"]
    assert {old, new} <= _entry_keyids(out)
    authority = trust.load_authority_key(fed.authority_key)
    summary = verify_bundle(out, authority)
    assert summary.signatures_verified > 0


def test_an_older_or_forged_bundle_is_ignored(rf: RunningFederation) -> None:
    fed, node = rf.fed, rf.nodes[CITY]
    forged = trust.sign_bundle(
        trust.TrustBundle(fed.bundle.federation, 9, fed.bundle.issued_at, {}), Signer.generate()
    )
    _replace(fed.trust_bundle, forged.to_json())
    node.city.rotation.check()
    assert node.city.trust.current.version == 1
    assert node.city.trust.current.party(CITY) is not None


def _served_certificate(address: str, fed_root: Path, ca: Path) -> bytes:
    """The DER certificate a new TLS connection to `address` is shown (as the broker, over h2)."""
    context = ssl.create_default_context(cafile=str(ca))
    context.load_cert_chain(fed_root / "tls" / "broker-1.crt", fed_root / "tls" / "broker-1.key")
    context.set_alpn_protocols(["h2"])
    host, port = address.rsplit(":", 1)
    with (
        socket.create_connection((host, int(port)), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=host) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return der


def _der(pem: bytes) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding

    return x509.load_pem_x509_certificate(pem).public_bytes(Encoding.DER)


def test_a_city_rotates_its_tls_certificate_without_a_restart(rf: RunningFederation) -> None:
    fed = rf.fed
    layout = fed.cities[CITY]
    cert_path, key_path = fed.root / "tls" / f"{CITY}.crt", fed.root / "tls" / f"{CITY}.key"
    before = _served_certificate(layout.address, fed.root, fed.ca_cert)
    assert before == _der(cert_path.read_bytes())
    assert fed.ca is not None
    issued: IssuedCert = fed.ca.issue(CITY, days=30)
    _replace(key_path, issued.key_pem)  # for a moment the pair mismatches: the old one stays
    _replace(cert_path, issued.cert_pem)
    after = _served_certificate(layout.address, fed.root, fed.ca_cert)
    assert after == _der(issued.cert_pem) != before
    wire = Wire(rf)
    try:
        health = health_pb2_grpc.HealthStub(wire.channel(layout.address, fed.broker_id))
        status = health.Check(health_pb2.HealthCheckRequest(), timeout=10).status
        assert status == health_pb2.HealthCheckResponse.SERVING
        _answered_by_all(wire)
    finally:
        wire.close()


def test_keys_check_warns_of_a_certificate_ending_within_the_threshold(
    rf: RunningFederation, tmp_path: Path
) -> None:
    fed = rf.fed
    config = fed.cities[CITY].config
    ok = CliRunner().invoke(app, ["keys", "check", "--config", str(config), "--warn-days", "30"])
    assert ok.exit_code == 0, ok.output
    assert "ok" in ok.output and "OK" in ok.output

    assert fed.ca is not None
    cert, key = fed.ca.issue(CITY, days=10).write(tmp_path / "tls", "short")
    text = config.read_text()
    short = tmp_path / "short.toml"
    short.write_text(
        text.replace(str(fed.root / "tls" / f"{CITY}.crt"), str(cert)).replace(
            str(fed.root / "tls" / f"{CITY}.key"), str(key)
        )
    )
    warned = CliRunner().invoke(app, ["keys", "check", "--config", str(short), "--warn-days", "30"])
    assert warned.exit_code == 1, warned.output
    assert "expires soon" in warned.output
    quiet = CliRunner().invoke(app, ["keys", "check", "--config", str(short), "--warn-days", "5"])
    assert quiet.exit_code == 0, quiet.output
