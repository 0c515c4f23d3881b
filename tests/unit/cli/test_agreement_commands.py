"""`citybroker node agreement …` against a fake operator client: what it prints, its exit status,
and that the CLI reaches the node only through edge.operator_client."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from cli import agreements
from cli.main import app
from domain.errors import CallFailed, RemoteError
from edge.operator_client import NodeAgreement
from keys import dsse
from keys.ed25519 import Signer

CLI = Path(agreements.__file__).parent
ENVELOPE = dsse.sign("agreement", {"agreement_id": "a"}, Signer.generate(), Signer.generate())


class FakeClient:
    """Stands in for OperatorClient; `refuse` makes every call fail as the node would."""

    refuse: RemoteError | None = None
    closed = 0

    def __init__(self, address: str, ca_cert: Path, cert: Path, key: Path) -> None:
        self.address = address

    def __enter__(self) -> FakeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        FakeClient.closed += 1

    def activate_agreement(self, envelope: dsse.Envelope) -> tuple[str, int]:
        if self.refuse:
            raise CallFailed(self.refuse)
        return "aurora--research", 3

    def list_agreements(self) -> list[NodeAgreement]:
        if self.refuse:
            raise CallFailed(self.refuse)
        return []


@pytest.fixture
def operator(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(agreements, "OperatorClient", FakeClient)
    monkeypatch.setattr(FakeClient, "refuse", None)
    monkeypatch.setattr(FakeClient, "closed", 0)
    path = tmp_path / "operator.toml"
    path.write_text(
        'city = "aurora"\nnode = "127.0.0.1:1"\nca_cert = "ca"\ncert = "c"\nkey = "k"\n'
    )
    return path


def run(*args: Any) -> Any:
    return CliRunner().invoke(app, [str(a) for a in args])


def test_activate_prints_what_is_in_force(operator: Path, tmp_path: Path) -> None:
    signed = tmp_path / "signed.json"
    signed.write_bytes(ENVELOPE.to_json())
    done = run("node", "agreement", "activate", "--operator", operator, signed)
    assert done.exit_code == 0, done.output
    assert "agreement aurora--research v3 is in force" in done.output
    assert FakeClient.closed == 1


def test_a_refusal_is_one_line_and_exit_status_1(operator: Path) -> None:
    FakeClient.refuse = RemoteError("NOT_FOUND", "AGREEMENT_NOT_FOUND", "no such agreement")
    done = run("node", "agreement", "list", "--operator", operator)
    assert done.exit_code == 1
    assert "the node refused: NOT_FOUND AGREEMENT_NOT_FOUND: no such agreement" in done.output
    assert FakeClient.closed == 1


def test_an_unreadable_agreement_file_is_exit_status_2(operator: Path, tmp_path: Path) -> None:
    done = run("node", "agreement", "activate", "--operator", operator, tmp_path / "missing")
    assert done.exit_code == 2
    assert "cannot read" in done.output


# cli/demo.py still health-checks the servers it starts with gRPC directly.
@pytest.mark.parametrize("name", ["agreements.py", "main.py", "output.py", "sandbox.py"])
def test_the_cli_imports_neither_grpc_nor_generated_protobuf(name: str) -> None:
    for node in ast.walk(ast.parse((CLI / name).read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or "", *(f"{node.module}.{a.name}" for a in node.names)]
        else:
            continue
        for name in names:
            assert not name.startswith("grpc") and not name.endswith(("_pb2", "_pb2_grpc")), name
