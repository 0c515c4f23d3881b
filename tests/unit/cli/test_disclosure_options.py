"""`citybroker node agreement propose` with disclosure options, against a fake operator client:
the terms it sends, and bad values refused in one line, exit status 2, with nothing sent."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from cli import agreements
from cli.main import app
from domain.agreement import Agreement, Regime
from domain.errors import VerificationError
from keys import dsse
from keys.ed25519 import Signer


class RecordingClient:
    """Stands in for OperatorClient and keeps the terms it was asked to propose."""

    proposed: list[Agreement] = []

    def __init__(self, address: str, ca_cert: Path, cert: Path, key: Path) -> None:
        self.address = address

    def __enter__(self) -> RecordingClient:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def propose_agreement(self, terms: Agreement) -> dsse.Envelope:
        RecordingClient.proposed.append(terms)
        return dsse.sign("agreement", terms.to_payload(), Signer.generate())


@pytest.fixture
def operator(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(agreements, "OperatorClient", RecordingClient)
    monkeypatch.setattr(RecordingClient, "proposed", [])
    path = tmp_path / "operator.toml"
    path.write_text(
        'city = "aurora"\nnode = "127.0.0.1:1"\nca_cert = "ca"\ncert = "c"\nkey = "k"\n'
    )
    return path


def propose(operator: Path, tmp_path: Path, *extra: str) -> Any:
    args = [
        "node", "agreement", "propose", "--operator", str(operator),
        "--provider", "aurora", "--consumer", "northwind",
        "--purpose", "urban-mobility-planning", "--dataset", "mobility",
        "--field", "mode=raw", "--field", "distance_km=aggregate_only",
        "--field", "trip_date=generalised:month",
        "--out", str(tmp_path / "proposal.json"), *extra,
    ]  # fmt: skip
    return CliRunner().invoke(app, args)


def test_cell_key_dominance_and_extremes_are_proposed(operator: Path, tmp_path: Path) -> None:
    done = propose(
        operator, tmp_path,
        "--regime", "cell_key",
        "--cell-key-max-perturbation", "3", "--cell-key-small-cell-threshold", "4",
        "--dominance-n", "3", "--dominance-percent", "90",
        "--extremes", "trip_date",
    )  # fmt: skip
    assert done.exit_code == 0, done.output
    (terms,) = RecordingClient.proposed
    d = terms.disclosure_terms
    assert d.regime is Regime.CELL_KEY
    assert d.cell_key is not None
    assert (d.cell_key.max_perturbation, d.cell_key.small_cell_threshold) == (3, 4)
    assert (d.dominance.n, d.dominance.percent) == (3, 90.0)
    assert terms.datasets["mobility"]["trip_date"].extremes
    assert not terms.datasets["mobility"]["distance_km"].extremes
    assert "cell_key" in done.output and "min/max allowed on trip_date" in done.output


def test_no_disclosure_option_keeps_the_old_meaning(operator: Path, tmp_path: Path) -> None:
    assert propose(operator, tmp_path).exit_code == 0
    (terms,) = RecordingClient.proposed
    assert terms.disclosure is None and terms.disclosure_terms.regime is Regime.EXACT
    assert "disclosure" not in terms.to_payload()


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        (["--regime", "laplace"], "DISCLOSURE_REGIME_UNKNOWN"),
        (["--regime", "cell_key", "--cell-key-max-perturbation", "0"], "CELL_KEY_TERMS_INVALID"),
        (["--regime", "cell_key", "--cell-key-max-perturbation", "21"], "CELL_KEY_TERMS_INVALID"),
        (
            ["--regime", "cell_key", "--cell-key-small-cell-threshold", "0"],
            "CELL_KEY_TERMS_INVALID",
        ),
        (["--cell-key-max-perturbation", "2"], "CELL_KEY_TERMS_INVALID"),  # exact regime
        (["--dominance-n", "0"], "DOMINANCE_TERMS_INVALID"),
        (["--dominance-n", "101"], "DOMINANCE_TERMS_INVALID"),
        (["--dominance-percent", "0"], "DOMINANCE_TERMS_INVALID"),
        (["--dominance-percent", "100.5"], "DOMINANCE_TERMS_INVALID"),
        (["--regime", "dp"], "DISCLOSURE_REGIME_MISMATCH"),  # no dp terms
        (["--extremes", "distance_km"], "aggregate_only"),
        (["--extremes", "speed"], "not a --field"),
    ],
)
def test_bad_values_are_refused_before_anything_is_sent(
    operator: Path, tmp_path: Path, extra: list[str], says: str
) -> None:
    done = propose(operator, tmp_path, *extra)
    assert done.exit_code == 2, done.output
    assert says in done.output
    assert "Traceback" not in done.output
    assert RecordingClient.proposed == []
    assert not (tmp_path / "proposal.json").exists()


def test_a_received_agreement_never_allows_extremes_on_aggregate_only() -> None:
    payload: dict[str, Any] = {
        "agreement_id": "a", "version": 1, "provider": "aurora", "consumer": "northwind",
        "purposes": ["urban-mobility-planning"],
        "datasets": {"mobility": {"distance_km": {"appearance": "aggregate_only", "extremes": True}}},
        "valid_from": "2026-01-01T00:00:00Z", "valid_until": "2027-01-01T00:00:00Z",
    }  # fmt: skip
    with pytest.raises(VerificationError) as e:
        Agreement.from_payload(payload)
    assert e.value.reason == "EXTREMES_INVALID"
