"""A client for a city's own operators (its data team, its residents' portal backend).

It authenticates with the operator's mTLS certificate; the node admits only the operator identities in
its config to ConsentService and AgreementService.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc

from citybroker.node.v1 import node_pb2, node_pb2_grpc
from domain.agreement import Agreement
from domain.commitment import Opening
from domain.errors import CallFailed
from edge.rpc import CHANNEL_OPTIONS, client_credentials
from edge.status import remote_error
from edge.wire import agreement_terms_to_json, envelope_from_pb, envelope_to_pb
from keys import dsse, timefmt

AGREEMENT_TIMEOUT_S = 15.0


@dataclass(frozen=True)
class NodeAgreement:
    """An agreement as the node holds it: the envelope as signed (not verified by this client) and
    its status there (proposed, countersigned, active, superseded, revoked or expired)."""

    envelope: dsse.Envelope
    status: str


def _call(method: Callable[..., Any], request: Any, timeout_s: float) -> Any:
    try:
        return method(request, timeout=timeout_s)
    except grpc.RpcError as e:
        raise CallFailed(remote_error(e)) from None


@dataclass(frozen=True)
class ResidentErased:
    """What the node erased for one resident."""

    records: int
    events: int
    statements: int
    batch_members: int


class OperatorClient:
    """The agreement methods raise CallFailed with what the node said; the consent methods, which
    tests and the demo use to drive load, let grpc.RpcError through."""

    def __init__(self, address: str, ca_cert: Path, cert: Path, key: Path) -> None:
        creds = client_credentials(ca_cert.read_bytes(), cert.read_bytes(), key.read_bytes())
        self.channel = grpc.secure_channel(address, creds, options=CHANNEL_OPTIONS)
        self.consent = node_pb2_grpc.ConsentServiceStub(self.channel)
        self.agreements = node_pb2_grpc.AgreementServiceStub(self.channel)

    def close(self) -> None:
        """Close the channel; calls still in flight are cancelled."""
        self.channel.close()

    def __enter__(self) -> OperatorClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

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
        """Withdraw a resident's consent; the node's signed receipt."""
        response = self.consent.WithdrawConsent(
            node_pb2.WithdrawConsentRequest(record_id=record_id), timeout=10
        )
        return envelope_from_pb(response.receipt)

    def erase_resident(self, resident_id: str, timeout_s: float = 60.0) -> ResidentErased:
        """Erase a resident at the node (GDPR Art. 17); CallFailed with the node's reason (such
        as RESIDENT_UNKNOWN) if it refuses."""
        request = node_pb2.EraseResidentRequest(resident_id=resident_id)
        r = _call(self.consent.EraseResident, request, timeout_s)
        return ResidentErased(
            r.records_erased, r.events_erased, r.statements_erased, r.batch_members_erased
        )

    def consent_evidence(self, record_id: str, timeout_s: float = 30.0) -> list[Opening]:
        """A record's committed statements as the node opens them (statement, salt, log index,
        and for an imported event its payload and salt); CallFailed if the node refuses."""
        request = node_pb2.GetConsentEvidenceRequest(record_id=record_id)
        r = _call(self.consent.GetConsentEvidence, request, timeout_s)
        return [
            Opening(e.log_index, e.statement, e.salt, e.member_payload, e.member_salt)
            for e in r.evidence
        ]

    def propose_agreement(
        self, terms: Agreement, timeout_s: float = AGREEMENT_TIMEOUT_S
    ) -> dsse.Envelope:
        """The proposal of `terms`, signed by this city, for the other party to countersign."""
        request = node_pb2.ProposeAgreementRequest(terms_json=agreement_terms_to_json(terms))
        response = _call(self.agreements.ProposeAgreement, request, timeout_s)
        return envelope_from_pb(response.agreement)

    def countersign_agreement(
        self, proposal: dsse.Envelope, timeout_s: float = AGREEMENT_TIMEOUT_S
    ) -> NodeAgreement:
        """The proposal with this city's signature added; active at once if this city provides."""
        request = node_pb2.CountersignAgreementRequest(agreement=envelope_to_pb(proposal))
        response = _call(self.agreements.CountersignAgreement, request, timeout_s)
        return NodeAgreement(envelope_from_pb(response.agreement), response.status)

    def activate_agreement(
        self, envelope: dsse.Envelope, timeout_s: float = AGREEMENT_TIMEOUT_S
    ) -> tuple[str, int]:
        """Put in force an agreement both parties signed; its id and version."""
        request = node_pb2.ActivateAgreementRequest(agreement=envelope_to_pb(envelope))
        response = _call(self.agreements.ActivateAgreement, request, timeout_s)
        return response.agreement_id, response.version

    def revoke_agreement(
        self,
        agreement_id: str,
        reason: str = "",
        revocation: dsse.Envelope | None = None,
        timeout_s: float = AGREEMENT_TIMEOUT_S,
    ) -> dsse.Envelope:
        """End an agreement now, by this city or by the consumer's signed `revocation`; the node's
        signed revocation."""
        request = node_pb2.RevokeAgreementRequest(agreement_id=agreement_id, reason=reason)
        if revocation is not None:
            request.revocation.CopyFrom(envelope_to_pb(revocation))
        response = _call(self.agreements.RevokeAgreement, request, timeout_s)
        return envelope_from_pb(response.revocation)

    def get_agreement(
        self, agreement_id: str, timeout_s: float = AGREEMENT_TIMEOUT_S
    ) -> NodeAgreement:
        """The newest version of an agreement and its status."""
        request = node_pb2.GetAgreementRequest(agreement_id=agreement_id)
        response = _call(self.agreements.GetAgreement, request, timeout_s)
        return NodeAgreement(envelope_from_pb(response.agreement), response.status)

    def list_agreements(
        self, page_size: int = 100, timeout_s: float = AGREEMENT_TIMEOUT_S
    ) -> list[NodeAgreement]:
        """Every agreement of this city, all pages, in the node's order."""
        found: list[NodeAgreement] = []
        token = ""
        while True:
            request = node_pb2.ListAgreementsRequest(page_size=page_size, page_token=token)
            page = _call(self.agreements.ListAgreements, request, timeout_s)
            found += [
                NodeAgreement(envelope_from_pb(a.agreement), a.status) for a in page.agreements
            ]
            token = page.next_page_token
            if not token:
                return found

    def agreement_odrl(self, agreement_id: str, timeout_s: float = AGREEMENT_TIMEOUT_S) -> str:
        """An agreement as an ODRL policy: the node's JSON-LD text, as it wrote it."""
        request = node_pb2.ExportAgreementOdrlRequest(agreement_id=agreement_id)
        response = _call(self.agreements.ExportAgreementOdrl, request, timeout_s)
        odrl_json: str = response.odrl_json
        return odrl_json


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
