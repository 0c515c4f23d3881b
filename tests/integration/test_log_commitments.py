"""Committed consent evidence end to end on a real federation (gRPC, mTLS), driven with the CLI
as an operator would: residents consent through the API and in a bulk import, two are erased
(`citybroker node consent erase`), and the city's log is exported for an outside auditor with
and without personal data (`citybroker audit export [--include-personal-data AUDITOR]`).

The verifier reports the erased entries as erased (not missing), checks every opening an export
carries, and a bundle exported by default holds no resident's id at all.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import json
import shutil
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from audit.checks import BundleSummary
from audit.verifier import BundleError, verify_bundle
from cli.main import app
from domain import commitment
from keys import dsse, timefmt
from keys.trust import load_authority_key
from tests.conftest import PURPOSE, RunningFederation, start_federation, stop_federation

CITY = "aurora"
AUDITOR = "external-auditor-1"
IMPORTED = [f"{CITY}-imp-{i:03d}" for i in range(12)]


@dataclass(frozen=True)
class Exported:
    default: Path
    personal: Path
    authority_key: Path
    erased_api: str  # a resident who consented through the API
    erased_imported: str  # a resident imported with two events
    residents: list[str]
    outputs: dict[str, str]
    imported_evidence: list[commitment.Opening]


def _cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


def _write_import(path: Path, partner: str) -> None:
    start = timefmt.fmt(timefmt.now() - timedelta(days=1))
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["event", "record_id", "resident_id", "purposes", "recipients",
                    "data_categories", "valid_from", "valid_until"])  # fmt: skip
        for i, resident in enumerate(IMPORTED):
            w.writerow(["given", f"imp-{i}", resident, PURPOSE, partner, "mobility", start, ""])
        w.writerow(["withdrawn", "imp-0", "", "", "", "", "", ""])


def _scenario(rf: RunningFederation, root: Path) -> Exported:
    fed = rf.fed
    layout = fed.cities[CITY]
    operator = fed.root / f"operator-{CITY}.toml"
    events = root / "events.csv"
    _write_import(events, fed.partner_id)
    code, out = _cli("node", "consent", "import", str(events), "--config", str(layout.config))
    assert code == 0, out
    imported_evidence = rf.operators[CITY].consent_evidence("imp-1")
    erased_api = rf.consenting[CITY][0].resident_id
    outputs = {}
    for name, args in {
        "unconfirmed": [erased_api],
        "unknown": ["nobody-known-here", "--yes"],
        "api": [erased_api, "--yes"],
        "imported": [IMPORTED[0], "--yes"],
    }.items():
        code, out = _cli("node", "consent", "erase", *args, "--operator", str(operator))
        outputs[name] = f"{code}:{out}"
    default, personal = root / "default", root / "personal"
    code, out = _cli("audit", "export", "--config", str(layout.config), "--out", str(default))
    assert code == 0, out
    code, out = _cli(
        "audit", "export", "--config", str(layout.config), "--out", str(personal),
        "--include-personal-data", AUDITOR,
    )  # fmt: skip
    assert code == 0, out
    residents = [r.resident_id for r in rf.consenting[CITY]] + IMPORTED
    return Exported(
        default,
        personal,
        fed.authority_key,
        erased_api,
        IMPORTED[0],
        residents,
        outputs,
        imported_evidence,
    )


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Exported:
    root = tmp_path_factory.mktemp("log-commitments")
    rf = start_federation(root / "federation", residents_per_city=30)
    try:
        return _scenario(rf, root)
    finally:
        stop_federation(rf)


def _verify(bundle: Path, exported: Exported) -> BundleSummary:
    return verify_bundle(bundle, load_authority_key(exported.authority_key))


def test_erase_needs_confirmation_and_refuses_an_unknown_resident(exported: Exported) -> None:
    code, out = exported.outputs["unconfirmed"].split(":", 1)
    assert code == "2" and "--yes" in out
    code, out = exported.outputs["unknown"].split(":", 1)
    assert code == "1" and "RESIDENT_UNKNOWN" in out and "NOT_FOUND" in out
    code, out = exported.outputs["api"].split(":", 1)
    assert code == "0" and "1 consent records" in out and "1 logged receipts" in out
    code, out = exported.outputs["imported"].split(":", 1)
    assert code == "0" and "2 imported events unlinked" in out


def test_default_export_holds_commitments_only_and_reports_erasures(exported: Exported) -> None:
    bundle = exported.default
    assert not (bundle / "openings.jsonl").exists()
    assert not (bundle / "personal-data.json").exists()
    for path in bundle.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            if path.suffix == ".jsonl":  # entries are base64: look inside too
                data += b"".join(
                    base64.b64decode(v)
                    for line in data.splitlines()
                    for v in json.loads(line).values()
                    if isinstance(v, str) and len(v) > 40 and _b64(v)
                )
            assert not [r for r in exported.residents if r.encode() in data], path
    summary = _verify(bundle, exported)
    # Each API consent, the import's single batch statement, and the import's own entries.
    assert summary.commitments >= len(exported.residents) - len(IMPORTED) + 1
    assert (summary.erased_entries, summary.erased_members) == (1, 2)
    assert summary.openings_verified == 0 and summary.personal_data_for == ""
    assert summary.to_json()["erased_entries"] == 1


def _b64(text: str) -> bool:
    try:
        base64.b64decode(text, validate=True)
        return True
    except ValueError:
        return False


def test_export_for_an_auditor_opens_every_commitment_not_erased(exported: Exported) -> None:
    bundle = exported.personal
    auditor = json.loads((bundle / "personal-data.json").read_bytes())
    assert auditor == {"auditor": AUDITOR}
    summary = _verify(bundle, exported)
    assert summary.personal_data_for == AUDITOR
    # Every commitment but the erased receipt is opened, plus the batch's 11 events still kept.
    assert summary.openings_verified == summary.commitments - 1 + len(IMPORTED) - 1
    opened = (bundle / "openings.jsonl").read_bytes()
    statements = b"".join(_opened(json.loads(line)) for line in opened.splitlines())
    assert exported.residents[1].encode() in statements
    assert exported.erased_api.encode() not in statements
    assert exported.erased_imported.encode() not in statements


def _opened(line: dict[str, object]) -> bytes:
    """What an openings.jsonl line discloses: a statement's payload, or a member's payload."""
    if "statement" in line:
        return dsse.Envelope.from_json(base64.b64decode(str(line["statement"]))).payload
    return base64.b64decode(str(line["member"]))


def _copy(bundle: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(bundle, tmp_path / bundle.name))


def _rewrite(path: Path, change: int, edit: dict[str, object] | None) -> None:
    lines = path.read_bytes().splitlines(keepends=True)
    if edit is None:
        del lines[change]
    else:
        obj = json.loads(lines[change])
        obj.update(edit)
        lines[change] = json.dumps(obj, sort_keys=True, separators=(",", ":")).encode() + b"\n"
    path.write_bytes(b"".join(lines))


def test_a_wrong_salt_or_a_missing_opening_fails(exported: Exported, tmp_path: Path) -> None:
    bad = _copy(exported.personal, tmp_path / "salt")
    _rewrite(bad / "openings.jsonl", 0, {"salt": base64.b64encode(bytes(32)).decode()})
    with pytest.raises(BundleError) as wrong:
        _verify(bad, exported)
    assert wrong.value.reason == "OPENING_INVALID"

    missing = _copy(exported.personal, tmp_path / "missing")
    _rewrite(missing / "openings.jsonl", 0, None)
    with pytest.raises(BundleError) as gone:
        _verify(missing, exported)
    assert gone.value.reason == "OPENING_MISSING"

    unnamed = _copy(exported.personal, tmp_path / "unnamed")
    (unnamed / "personal-data.json").unlink()
    with pytest.raises(BundleError) as anonymous:
        _verify(unnamed, exported)
    assert anonymous.value.reason == "BUNDLE_FILE_MALFORMED"


def test_an_erasure_must_name_a_commitment(exported: Exported, tmp_path: Path) -> None:
    bad = _copy(exported.default, tmp_path / "erasure")
    entries = [json.loads(x) for x in (bad / "entries.jsonl").read_bytes().splitlines()]
    other = next(e["index"] for e in entries if e["kind"] != "consent")
    (bad / "erasures.jsonl").write_bytes(
        (bad / "erasures.jsonl").read_bytes()
        + json.dumps({"index": other, "members": None}, separators=(",", ":")).encode()
        + b"\n"
    )
    with pytest.raises(BundleError) as wrong:
        _verify(bad, exported)
    assert wrong.value.reason == "ERASURE_INVALID"


def test_an_imported_event_is_opened_for_its_resident(exported: Exported) -> None:
    (evidence,) = exported.imported_evidence
    assert evidence.member_payload and evidence.member_salt
    payload = json.loads(evidence.member_payload)
    assert payload["resident_id"] == IMPORTED[1]
    statement = json.loads(dsse.Envelope.from_json(evidence.statement).payload)
    # The statement lists salted digests: the payload's plain digest is not there.
    plain = "sha256:" + hashlib.sha256(evidence.member_payload).hexdigest()
    assert plain not in statement["receipts"]
    claims = {
        "statement": "consent-batch",
        "commitment": commitment.digest(evidence.salt, evidence.statement),
    }
    assert commitment.opening_problem(claims, evidence) is None
