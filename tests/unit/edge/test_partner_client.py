"""The partner client's own checks on what a broker lists, with no network: a channel to nowhere is
never used by these calls."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest

from citybroker.broker.v1 import broker_pb2
from cli import sandbox
from domain import agreement as agreement_doc
from edge.partner_client import PartnerClient
from edge.wire import envelope_to_pb
from keys import dsse


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> sandbox.LocalFederation:
    return sandbox.create(tmp_path_factory.mktemp("federation"))


@pytest.fixture
def client(fed: sandbox.LocalFederation) -> Iterator[PartnerClient]:
    channel = grpc.insecure_channel("127.0.0.1:9")  # never dialled: no call is made
    with PartnerClient(channel, fed.broker_id, fed.partner_id, fed.partner_signer, fed.bundle) as c:
        yield c


def _offer(city: str, *envelopes: dsse.Envelope) -> broker_pb2.CityOffer:
    summaries = [broker_pb2.AgreementSummary(signed_agreement=envelope_to_pb(e)) for e in envelopes]
    return broker_pb2.CityOffer(
        city_id=city,
        name=city.title(),
        jurisdiction="EU",
        outcome=broker_pb2.CityOutcome(status=broker_pb2.CITY_STATUS_ANSWERED, code="OK"),
        agreements=summaries,
    )


def test_an_offer_keeps_only_agreements_that_verify_and_bind_the_city_to_this_partner(
    fed: sandbox.LocalFederation, client: PartnerClient
) -> None:
    aurora = fed.cities["aurora"].signer
    good = agreement_doc.sign(fed.agreement("aurora"), aurora, fed.partner_signer)
    only_city_signed = agreement_doc.sign(fed.agreement("aurora", version=2), aurora)
    other_city = agreement_doc.sign(
        fed.agreement("borealis"), fed.cities["borealis"].signer, fed.partner_signer
    )
    offer = client._verified_offer(_offer("aurora", good, only_city_signed, other_city))
    assert [(a.agreement_id, a.version) for a, _ in offer.agreements] == [
        (f"aurora--{fed.partner_id}", 1)
    ]
    assert offer.agreements[0][1] == good
    assert (offer.city, offer.outcome.status) == ("aurora", "answered")
