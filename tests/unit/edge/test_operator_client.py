"""The operator client without a node: a stub in place of AgreementService, so each method's
request, its domain result and the CallFailed a refusal becomes can be checked."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import grpc
import pytest

from citybroker.node.v1 import node_pb2
from domain.agreement import Agreement, Appearance, FieldTerms
from domain.errors import CallFailed
from edge import wire
from edge.operator_client import NodeAgreement, OperatorClient
from keys import dsse, timefmt
from keys.ca import FederationCA
from keys.ed25519 import Signer

NOW = timefmt.parse(timefmt.fmt(timefmt.now()))
TERMS = Agreement(
    agreement_id="aurora--northwind",
    version=1,
    provider="aurora",
    consumer="northwind",
    purposes=frozenset({"research"}),
    datasets={"mobility": {"district": FieldTerms(Appearance.RAW)}},
    min_cell_size=10,
    valid_from=NOW,
    valid_until=NOW + timedelta(days=30),
    retention_days=90,
)
ENVELOPE = dsse.sign("agreement", {"agreement_id": "a"}, Signer.generate(), Signer.generate())


class Refused(grpc.RpcError):
    def __str__(self) -> str:
        return "the node said no"


class Stub:
    """Answers with canned responses and records every request (a request of None is refused)."""

    def __init__(self, **responses: Any) -> None:
        self.responses = {k: list(v) if isinstance(v, list) else [v] for k, v in responses.items()}
        self.requests: list[tuple[str, Any, float]] = []

    def __getattr__(self, method: str) -> Any:
        def call(request: Any, timeout: float) -> Any:
            self.requests.append((method, request, timeout))
            response = self.responses[method].pop(0)
            if response is None:
                raise Refused()
            return response

        return call


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    tls = tmp_path_factory.mktemp("tls")
    ca = FederationCA.create("test")
    (tls / "ca.crt").write_bytes(ca.cert_pem)
    cert, key = ca.issue("aurora.operator").write(tls, "aurora.operator")
    with OperatorClient("127.0.0.1:1", tls / "ca.crt", cert, key) as op:  # never connected
        yield op


def test_propose_sends_the_terms_json(client: OperatorClient) -> None:
    client.agreements = Stub(
        ProposeAgreement=node_pb2.ProposeAgreementResponse(agreement=wire.envelope_to_pb(ENVELOPE))
    )
    assert client.propose_agreement(TERMS) == ENVELOPE
    [(_, request, timeout)] = client.agreements.requests
    assert wire.agreement_terms_from_json(request.terms_json) == TERMS
    assert timeout == 15.0


def test_list_follows_every_page(client: OperatorClient) -> None:
    item = node_pb2.GetAgreementResponse(agreement=wire.envelope_to_pb(ENVELOPE), status="active")
    client.agreements = Stub(
        ListAgreements=[
            node_pb2.ListAgreementsResponse(agreements=[item, item], next_page_token="p2"),
            node_pb2.ListAgreementsResponse(agreements=[item]),
        ]
    )
    assert client.list_agreements() == [NodeAgreement(ENVELOPE, "active")] * 3
    tokens = [r.page_token for _, r, _ in client.agreements.requests]
    assert tokens == ["", "p2"]


def test_revoke_sends_the_consumers_revocation_only_when_given(client: OperatorClient) -> None:
    response = node_pb2.RevokeAgreementResponse(revocation=wire.envelope_to_pb(ENVELOPE))
    client.agreements = Stub(RevokeAgreement=[response, response])
    client.revoke_agreement("a", "done")
    client.revoke_agreement("a", "", ENVELOPE)
    [(_, by_city, _), (_, by_consumer, _)] = client.agreements.requests
    assert not by_city.HasField("revocation") and by_city.reason == "done"
    assert wire.envelope_from_pb(by_consumer.revocation) == ENVELOPE


@pytest.mark.parametrize(
    ("method", "call"),
    [
        ("ProposeAgreement", lambda c: c.propose_agreement(TERMS)),
        ("CountersignAgreement", lambda c: c.countersign_agreement(ENVELOPE)),
        ("ActivateAgreement", lambda c: c.activate_agreement(ENVELOPE)),
        ("RevokeAgreement", lambda c: c.revoke_agreement("a")),
        ("GetAgreement", lambda c: c.get_agreement("a")),
        ("ListAgreements", lambda c: c.list_agreements()),
        ("ExportAgreementOdrl", lambda c: c.agreement_odrl("a")),
    ],
)
def test_a_refusal_is_call_failed(client: OperatorClient, method: str, call: Any) -> None:
    client.agreements = Stub(**{method: None})
    with pytest.raises(CallFailed) as e:
        call(client)
    assert (e.value.error.code, e.value.error.message) == ("UNKNOWN", "the node said no")
