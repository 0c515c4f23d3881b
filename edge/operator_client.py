"""A client for a city's own operators (its data team, its residents' portal backend).

It authenticates with the operator's mTLS certificate; the node admits only the operator identities in
its config to ConsentService and AgreementService.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import grpc

from citybroker.node.v1 import node_pb2, node_pb2_grpc
from edge.rpc import CHANNEL_OPTIONS, client_credentials
from edge.wire import envelope_from_pb, envelope_to_pb
from keys import dsse, timefmt


class OperatorClient:
    def __init__(self, address: str, ca_cert: Path, cert: Path, key: Path) -> None:
        creds = client_credentials(ca_cert.read_bytes(), cert.read_bytes(), key.read_bytes())
        self.channel = grpc.secure_channel(address, creds, options=CHANNEL_OPTIONS)
        self.consent = node_pb2_grpc.ConsentServiceStub(self.channel)
        self.agreements = node_pb2_grpc.AgreementServiceStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def give_consents(
        self, records: list[node_pb2.ConsentRecord], timeout_s: float = 30.0, in_flight: int = 32
    ) -> list[dsse.Envelope]:
        """Give many consents, one call each as a portal would, `in_flight` at a time."""
        receipts = []
        for start in range(0, len(records), in_flight):
            calls = [
                self.consent.GiveConsent.future(
                    node_pb2.GiveConsentRequest(record=r), timeout=timeout_s
                )
                for r in records[start : start + in_flight]
            ]
            receipts += [envelope_from_pb(c.result().receipt) for c in calls]
        return receipts

    def withdraw(self, record_id: str) -> dsse.Envelope:
        response = self.consent.WithdrawConsent(
            node_pb2.WithdrawConsentRequest(record_id=record_id), timeout=10
        )
        return envelope_from_pb(response.receipt)

    def activate_agreement(self, envelope: dsse.Envelope) -> tuple[str, int]:
        response = self.agreements.ActivateAgreement(
            node_pb2.ActivateAgreementRequest(agreement=envelope_to_pb(envelope)), timeout=10
        )
        return response.agreement_id, response.version


def consent_record(
    record_id: str,
    resident_id: str,
    purpose: str,
    recipient: str,
    data_category: str,
    valid_from: datetime | None = None,
) -> node_pb2.ConsentRecord:
    """The simplest record: one purpose, one recipient, one data category."""
    return node_pb2.ConsentRecord(
        record_id=record_id,
        resident_id=resident_id,
        purposes=[purpose],
        recipients=[recipient],
        data_categories=[data_category],
        valid_from=timefmt.fmt(valid_from or timefmt.now()),
    )
