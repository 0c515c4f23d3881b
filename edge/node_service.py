"""The node's gRPC servicers: protobuf in, domain calls, protobuf out."""

from __future__ import annotations

import json

import grpc

from citybroker.common.v1 import common_pb2
from citybroker.node.v1 import node_pb2, node_pb2_grpc
from domain.errors import FailedPrecondition
from domain.odrl import to_odrl
from edge.resident_privacy import (
    ResidentPrivacy,
    consent_evidence_response,
    erase_resident_response,
)
from edge.rpc import peer_common_names
from edge.wire import (
    agreement_terms_from_json,
    consent_event_to_pb,
    consent_record_from_pb,
    consent_record_to_pb,
    envelope_from_pb,
    envelope_to_pb,
    plan_to_pb,
    receipt_to_pb,
    resident_exchange_to_pb,
    stored_agreement_to_pb,
    time_from_pb,
)
from keys import timefmt
from node.agreements import AgreementRegister
from node.answering import Answerer
from node.consent import ConsentRegistry
from node.kantara import from_signed_receipt as kantara_receipt
from node.transparency import ExchangeRecorder

QUERY_SERVICE = node_pb2.DESCRIPTOR.services_by_name["QueryService"].full_name
CONSENT_SERVICE = node_pb2.DESCRIPTOR.services_by_name["ConsentService"].full_name
AGREEMENT_SERVICE = node_pb2.DESCRIPTOR.services_by_name["AgreementService"].full_name


def _actor(on_behalf_of: str, context: grpc.ServicerContext) -> str:
    return f"{on_behalf_of} via {','.join(peer_common_names(context)) or 'unknown'}"


class QueryServicer(node_pb2_grpc.QueryServiceServicer):
    def __init__(self, answerer: Answerer) -> None:
        self._answerer = answerer

    def RunQuery(
        self, request: node_pb2.RunQueryRequest, context: grpc.ServicerContext
    ) -> node_pb2.RunQueryResponse:
        result, index, salt = self._answerer.run_query(
            envelope_from_pb(request.signed_query),
            peer_common_names(context),
            # The broker's deadline passed or it cancelled: release nothing it cannot receive.
            cancelled=lambda: not context.is_active(),
        )
        return node_pb2.RunQueryResponse(
            signed_result=envelope_to_pb(result), log_index=index, result_salt=salt
        )

    def PlanQuery(
        self, request: node_pb2.PlanQueryRequest, context: grpc.ServicerContext
    ) -> node_pb2.PlanQueryResponse:
        plan = self._answerer.plan(
            envelope_from_pb(request.signed_request), peer_common_names(context)
        )
        return node_pb2.PlanQueryResponse(plan=plan_to_pb(plan))

    def DescribeOffer(
        self, request: node_pb2.DescribeOfferRequest, context: grpc.ServicerContext
    ) -> node_pb2.DescribeOfferResponse:
        found = self._answerer.describe_offer(
            envelope_from_pb(request.signed_request), peer_common_names(context)
        )
        return node_pb2.DescribeOfferResponse(agreements=[envelope_to_pb(e) for e in found])


class ConsentServicer(node_pb2_grpc.ConsentServiceServicer):
    """Each consent event's signed receipt is also committed to the node's log before the reply:
    it is the evidence that consent existed when a later result used it.

    Callers are the city's operators; residents act through them (the portal), so the recorded
    actor names both: "resident via <operator>" or "city via <operator>".
    """

    def __init__(
        self,
        registry: ConsentRegistry,
        exchanges: ExchangeRecorder,
        controller_name: str,
        privacy: ResidentPrivacy | None = None,
    ) -> None:
        self._registry, self._exchanges = registry, exchanges
        self._controller = controller_name
        self._privacy = privacy

    def _logged(self, receipt: bytes) -> common_pb2.Envelope:
        # The registry has committed the receipt to the log (node.consent_evidence).
        return receipt_to_pb(receipt)

    def GiveConsent(
        self, request: node_pb2.GiveConsentRequest, context: grpc.ServicerContext
    ) -> node_pb2.GiveConsentResponse:
        receipt = self._registry.give(
            consent_record_from_pb(request.record), _actor("resident", context)
        )
        return node_pb2.GiveConsentResponse(receipt=self._logged(receipt))

    def RefuseConsent(
        self, request: node_pb2.RefuseConsentRequest, context: grpc.ServicerContext
    ) -> node_pb2.RefuseConsentResponse:
        receipt = self._registry.refuse(
            consent_record_from_pb(request.record), _actor("resident", context)
        )
        return node_pb2.RefuseConsentResponse(receipt=self._logged(receipt))

    def RenewConsent(
        self, request: node_pb2.RenewConsentRequest, context: grpc.ServicerContext
    ) -> node_pb2.RenewConsentResponse:
        receipt = self._registry.renew(
            request.record_id,
            time_from_pb(request.valid_until, "valid_until"),
            _actor("resident", context),
        )
        return node_pb2.RenewConsentResponse(receipt=self._logged(receipt))

    def WithdrawConsent(
        self, request: node_pb2.WithdrawConsentRequest, context: grpc.ServicerContext
    ) -> node_pb2.WithdrawConsentResponse:
        receipt = self._registry.withdraw(request.record_id, _actor("resident", context))
        return node_pb2.WithdrawConsentResponse(receipt=self._logged(receipt))

    def RevokeConsent(
        self, request: node_pb2.RevokeConsentRequest, context: grpc.ServicerContext
    ) -> node_pb2.RevokeConsentResponse:
        receipt = self._registry.revoke(request.record_id, _actor("city", context))
        return node_pb2.RevokeConsentResponse(receipt=self._logged(receipt))

    def InvalidateConsent(
        self, request: node_pb2.InvalidateConsentRequest, context: grpc.ServicerContext
    ) -> node_pb2.InvalidateConsentResponse:
        receipt = self._registry.invalidate(request.record_id, _actor("city", context))
        return node_pb2.InvalidateConsentResponse(receipt=self._logged(receipt))

    def GetConsent(
        self, request: node_pb2.GetConsentRequest, context: grpc.ServicerContext
    ) -> node_pb2.GetConsentResponse:
        record = self._registry.get(request.record_id)
        return node_pb2.GetConsentResponse(record=consent_record_to_pb(record))

    def ListResidentConsents(
        self, request: node_pb2.ListResidentConsentsRequest, context: grpc.ServicerContext
    ) -> node_pb2.ListResidentConsentsResponse:
        page = self._registry.list_by_resident(
            request.resident_id, request.page_size, request.page_token
        )
        return node_pb2.ListResidentConsentsResponse(
            records=[consent_record_to_pb(r) for r in page.records],
            next_page_token=page.next_page_token,
        )

    def GetConsentHistory(
        self, request: node_pb2.GetConsentHistoryRequest, context: grpc.ServicerContext
    ) -> node_pb2.GetConsentHistoryResponse:
        history = self._registry.history(request.record_id)
        return node_pb2.GetConsentHistoryResponse(events=[consent_event_to_pb(e) for e in history])

    def ExportConsentReceipt(
        self, request: node_pb2.ExportConsentReceiptRequest, context: grpc.ServicerContext
    ) -> node_pb2.ExportConsentReceiptResponse:
        latest = self._registry.history(request.record_id)[-1]
        kantara = json.dumps(kantara_receipt(latest.receipt, self._controller), indent=2)
        return node_pb2.ExportConsentReceiptResponse(
            kantara_json=kantara, receipt=receipt_to_pb(latest.receipt)
        )

    def ListResidentExchanges(
        self, request: node_pb2.ListResidentExchangesRequest, context: grpc.ServicerContext
    ) -> node_pb2.ListResidentExchangesResponse:
        items, token = self._exchanges.for_resident(
            request.resident_id, request.page_size, request.page_token
        )
        return node_pb2.ListResidentExchangesResponse(
            exchanges=[resident_exchange_to_pb(e) for e in items], next_page_token=token
        )

    def GetConsentEvidence(
        self, request: node_pb2.GetConsentEvidenceRequest, context: grpc.ServicerContext
    ) -> node_pb2.GetConsentEvidenceResponse:
        return consent_evidence_response(self._resident_privacy(), request.record_id)

    def EraseResident(
        self, request: node_pb2.EraseResidentRequest, context: grpc.ServicerContext
    ) -> node_pb2.EraseResidentResponse:
        return erase_resident_response(self._resident_privacy(), request.resident_id)

    def _resident_privacy(self) -> ResidentPrivacy:
        if self._privacy is None:
            raise FailedPrecondition(
                "this server keeps no resident-level openings", reason="EVIDENCE_UNAVAILABLE"
            )
        return self._privacy


class AgreementServicer(node_pb2_grpc.AgreementServiceServicer):
    """Agreements in force and their revocations are logged (by the register, in the transaction
    that makes the change) before the reply; proposals, signed by one party only, are not evidence
    of anything yet."""

    def __init__(self, register: AgreementRegister) -> None:
        self._register = register

    def ProposeAgreement(
        self, request: node_pb2.ProposeAgreementRequest, context: grpc.ServicerContext
    ) -> node_pb2.ProposeAgreementResponse:
        envelope = self._register.propose(agreement_terms_from_json(request.terms_json))
        return node_pb2.ProposeAgreementResponse(agreement=envelope_to_pb(envelope))

    def CountersignAgreement(
        self, request: node_pb2.CountersignAgreementRequest, context: grpc.ServicerContext
    ) -> node_pb2.CountersignAgreementResponse:
        envelope, agreement = self._register.countersign(envelope_from_pb(request.agreement))
        in_force_here = agreement.provider == self._register.city  # activated and logged
        return node_pb2.CountersignAgreementResponse(
            agreement=envelope_to_pb(envelope),
            status="active" if in_force_here else "countersigned",
        )

    def ActivateAgreement(
        self, request: node_pb2.ActivateAgreementRequest, context: grpc.ServicerContext
    ) -> node_pb2.ActivateAgreementResponse:
        envelope = envelope_from_pb(request.agreement)
        a = self._register.activate(envelope)  # logged in the same transaction
        return node_pb2.ActivateAgreementResponse(agreement_id=a.agreement_id, version=a.version)

    def RevokeAgreement(
        self, request: node_pb2.RevokeAgreementRequest, context: grpc.ServicerContext
    ) -> node_pb2.RevokeAgreementResponse:
        given = envelope_from_pb(request.revocation) if request.HasField("revocation") else None
        revocation = self._register.revoke(request.agreement_id, request.reason, given)
        return node_pb2.RevokeAgreementResponse(revocation=envelope_to_pb(revocation))

    def GetAgreement(
        self, request: node_pb2.GetAgreementRequest, context: grpc.ServicerContext
    ) -> node_pb2.GetAgreementResponse:
        return stored_agreement_to_pb(self._register.get(request.agreement_id), timefmt.now())

    def ListAgreements(
        self, request: node_pb2.ListAgreementsRequest, context: grpc.ServicerContext
    ) -> node_pb2.ListAgreementsResponse:
        items, token = self._register.page(request.page_size, request.page_token)
        now = timefmt.now()
        return node_pb2.ListAgreementsResponse(
            agreements=[stored_agreement_to_pb(a, now) for a in items], next_page_token=token
        )

    def ExportAgreementOdrl(
        self, request: node_pb2.ExportAgreementOdrlRequest, context: grpc.ServicerContext
    ) -> node_pb2.ExportAgreementOdrlResponse:
        a = self._register.get(request.agreement_id)
        return node_pb2.ExportAgreementOdrlResponse(
            odrl_json=json.dumps(to_odrl(a.verified), indent=2)
        )
