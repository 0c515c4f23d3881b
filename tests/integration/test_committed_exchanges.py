"""Exchanges about single residents, committed in the logs, as an outside auditor verifies them.

A partner asks an attribute check (answered, and one refused for want of consent) and a record
release on a real federation (gRPC, mTLS). The node logs those exchanges' statements as salted
commitments, the broker the attribute checks' queries, and the receipts name them by commitment.
Exported by default (`citybroker audit export`), the node's and the broker's bundles hold no
resident's id nor released record; the verifier reconciles receipts with results by commitment
and log index and reports the exchanges as committed. Exported with personal data for an auditor
(`--include-personal-data`), every opening is checked as the statement logged whole would be.
"""

from __future__ import annotations

import base64
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

from audit.verifier import Report, verify_bundles
from cli.main import app
from domain import agreement as agreement_doc
from domain.agreement import Appearance, FieldTerms
from domain.query import Dimension, Filter, FilterOp, Query, QueryKind
from edge.operator_client import consent_record
from keys.trust import load_authority_key
from tests.conftest import RunningFederation, start_federation, stop_federation

CITY = "aurora"
AUDITOR = "external-auditor-1"
ELIGIBILITY = "eligibility-check"


@dataclass(frozen=True)
class Exported:
    node: Path
    broker: Path
    node_personal: Path
    broker_personal: Path
    authority_key: Path
    parties: list[str]
    subject: str
    erased: str
    pseudonyms: list[str]
    request_ids: list[str]


def _cli(*args: str) -> None:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output


def _check(subject: str) -> Query:
    return Query(
        "residents",
        ELIGIBILITY,
        (),
        filters=(Filter("age", FilterOp.AT_LEAST, ("0",)),),
        cities=(CITY,),
        kind=QueryKind.ATTRIBUTE_CHECK,
        subject=subject,
    )


def _exchanges(rf: RunningFederation) -> tuple[list[str], list[str], list[str]]:
    """Attribute checks (answered, refused, and one about a resident erased afterwards) and a
    record release; their subjects, the released pseudonyms and the request ids."""
    fed = rf.fed
    terms = dataclasses.replace(
        fed.agreement(CITY),
        agreement_id="single-residents",
        purposes=frozenset({ELIGIBILITY}),
        datasets={
            "residents": {
                "age": FieldTerms(Appearance.RAW),
                "district": FieldTerms(Appearance.RAW),
            }
        },
        query_kinds=frozenset({"attribute_check", "record_release"}),
    )
    operator = rf.operators[CITY]
    operator.activate_agreement(
        agreement_doc.sign(terms, fed.cities[CITY].signer, fed.partner_signer)
    )
    residents = [r.resident_id for r in rf.consenting[CITY][:12]]
    operator.give_consents(
        [consent_record(f"{r}-elig", r, ELIGIBILITY, fed.partner_id, "age") for r in residents]
    )
    stranger = rf.consenting[CITY][12].resident_id  # no consent for this purpose: refused
    release = Query(
        "residents",
        ELIGIBILITY,
        (),
        group_by=(Dimension("district"),),
        cities=(CITY,),
        kind=QueryKind.RECORD_RELEASE,
    )
    with rf.partner() as client:
        answers = [client.query(_check(r)) for r in (residents[0], stranger, residents[1])]
        released = client.query(release)
    assert answers[1].cities[0].reason == "CONSENT_MISSING"
    operator.erase_resident(residents[1])
    ids = [a.query_id for a in [*answers, released]]
    return [residents[0], stranger, residents[1]], [r["pseudonym"] for r in released.records], ids


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Exported:
    root = tmp_path_factory.mktemp("committed-exchanges")
    rf = start_federation(root / "federation", residents_per_city=30)
    try:
        subjects, pseudonyms, ids = _exchanges(rf)
        fed = rf.fed
        out = {}
        for name, config in (("node", fed.cities[CITY].config), ("broker", fed.broker_config)):
            out[name] = root / name
            _cli("audit", "export", "--config", str(config), "--out", str(out[name]))
            out[f"{name}_personal"] = root / f"{name}-personal"
            _cli(
                "audit", "export", "--config", str(config), "--out",
                str(out[f"{name}_personal"]), "--include-personal-data", AUDITOR,
            )  # fmt: skip
        return Exported(
            out["node"],
            out["broker"],
            out["node_personal"],
            out["broker_personal"],
            fed.authority_key,
            [CITY, fed.broker_id],
            subjects[0],
            subjects[2],
            pseudonyms,
            ids,
        )
    finally:
        stop_federation(rf)


def _verify(exported: Exported, *bundles: Path) -> Report:
    return verify_bundles(
        list(bundles), load_authority_key(exported.authority_key), parties=exported.parties
    )


def test_default_bundles_hold_no_resident_and_reconcile_as_committed(exported: Exported) -> None:
    for bundle in (exported.node, exported.broker):
        assert not (bundle / "openings.jsonl").exists()
        text = (bundle / "entries.jsonl").read_bytes()
        decoded = b"".join(
            base64.b64decode(json.loads(line)["entry"]) for line in text.splitlines()
        )
        for secret in [exported.subject, exported.erased, *exported.pseudonyms]:
            assert secret.encode() not in decoded, f"{bundle.name} names {secret}"
    report = _verify(exported, exported.node, exported.broker)
    node, broker = report.bundles
    # At the node: the three checks' outcomes and the release; at the broker, their receipts.
    assert node.committed_exchanges == 4
    assert broker.committed_exchanges == 4
    # The erased subject: their two consent receipts, and their check's query and result.
    assert node.erased_entries == 4
    assert node.openings_verified == broker.openings_verified == 0


def test_personal_data_exports_open_every_committed_exchange(exported: Exported) -> None:
    report = _verify(exported, exported.node_personal, exported.broker_personal)
    node, broker = report.bundles
    assert node.personal_data_for == broker.personal_data_for == AUDITOR
    # The node opens the query and outcome of each exchange but the erased one's (and its
    # consent receipts); the broker the queries of the three attribute checks (it erases none).
    assert node.openings_verified >= 6
    assert broker.openings_verified == 3
