"""The node's gRPC servicers: protobuf in, domain calls, protobuf out."""

from __future__ import annotations

from datetime import datetime

import grpc

from audit.log import MerkleLog
from citybroker.node.v1 import node_pb2, node_pb2_grpc
from federation.errors import InvalidArgument
from federation.rpc import peer_common_names
from federation.wire import envelope_from_pb, envelope_to_pb
from keys import dsse, timefmt
from node.agreements import AgreementRegister
from node.answering import Answerer
from node.consent import ConsentRecord, ConsentRegistry

QUERY_SERVICE = node_pb2.DESCRIPTOR.services_by_name["QueryService"].full_name
CONSENT_SERVICE = node_pb2.DESCRIPTOR.services_by_name["ConsentService"].full_name
AGREEMENT_SERVICE = node_pb2.DESCRIPTOR.services_by_name["AgreementService"].full_name


def _actor(context: grpc.ServicerContext) -> str:
    return ",".join(peer_common_names(context)) or "unknown"


class QueryServicer(node_pb2_grpc.QueryServiceServicer):
    def __init__(self, answerer: Answerer) -> None:
        self._answerer = answerer

    def RunQuery(
        self, request: node_pb2.RunQueryRequest, context: grpc.ServicerContext
    ) -> node_pb2.RunQueryResponse:
        result, index = self._answerer.run_query(
            envelope_from_pb(request.signed_query), peer_common_names(context)
        )
        return node_pb2.RunQueryResponse(signed_result=envelope_to_pb(result), log_index=index)

    def DescribeOffer(
        self, request: node_pb2.DescribeOfferRequest, context: grpc.ServicerContext
    ) -> node_pb2.DescribeOfferResponse:
        found = self._answerer.describe_offer(
            envelope_from_pb(request.signed_request), peer_common_names(context)
        )
        return node_pb2.DescribeOfferResponse(agreements=[envelope_to_pb(e) for e in found])


def _time(text: str, field: str, default: datetime | None = None) -> datetime | None:
    if not text:
        return default
    try:
        return timefmt.parse(text)
    except ValueError as e:
        raise InvalidArgument(f"{field}: {e}", reason="TIMESTAMP_INVALID", field=field) from None


def _record_pb(r: ConsentRecord) -> node_pb2.ConsentRecord:
    return node_pb2.ConsentRecord(
        record_id=r.record_id,
        resident_id=r.resident_id,
        purpose=r.purpose,
        recipient=r.recipient,
        data_category=r.data_category,
        valid_from=timefmt.fmt(r.valid_from),
        valid_until=timefmt.fmt(r.valid_until) if r.valid_until else "",
        state=r.state,
    )


class ConsentServicer(node_pb2_grpc.ConsentServiceServicer):
    """Each consent event's signed receipt is also committed to the node's log before the reply:
    it is the evidence that consent existed when a later result used it."""

    def __init__(self, registry: ConsentRegistry, log: MerkleLog) -> None:
        self._registry, self._log = registry, log

    def GiveConsent(
        self, request: node_pb2.GiveConsentRequest, context: grpc.ServicerContext
    ) -> node_pb2.GiveConsentResponse:
        r = request.record
        valid_from = _time(r.valid_from, "valid_from", timefmt.now())
        assert valid_from is not None
        record = ConsentRecord(
            record_id=r.record_id,
            resident_id=r.resident_id,
            purpose=r.purpose,
            recipient=r.recipient,
            data_category=r.data_category,
            valid_from=valid_from,
            valid_until=_time(r.valid_until, "valid_until"),
        )
        receipt = self._registry.give(record, _actor(context))
        self._log.append(receipt, kind="consent")
        return node_pb2.GiveConsentResponse(
            receipt=envelope_to_pb(dsse.Envelope.from_json(receipt))
        )

    def WithdrawConsent(
        self, request: node_pb2.WithdrawConsentRequest, context: grpc.ServicerContext
    ) -> node_pb2.WithdrawConsentResponse:
        receipt = self._registry.withdraw(request.record_id, _actor(context))
        self._log.append(receipt, kind="consent")
        return node_pb2.WithdrawConsentResponse(
            receipt=envelope_to_pb(dsse.Envelope.from_json(receipt))
        )

    def GetConsent(
        self, request: node_pb2.GetConsentRequest, context: grpc.ServicerContext
    ) -> node_pb2.GetConsentResponse:
        return node_pb2.GetConsentResponse(record=_record_pb(self._registry.get(request.record_id)))


class AgreementServicer(node_pb2_grpc.AgreementServiceServicer):
    def __init__(self, register: AgreementRegister, log: MerkleLog) -> None:
        self._register, self._log = register, log

    def ActivateAgreement(
        self, request: node_pb2.ActivateAgreementRequest, context: grpc.ServicerContext
    ) -> node_pb2.ActivateAgreementResponse:
        envelope = envelope_from_pb(request.agreement)
        a = self._register.activate(envelope)
        self._log.append(envelope.to_json(), kind="agreement")
        return node_pb2.ActivateAgreementResponse(agreement_id=a.agreement_id, version=a.version)

    def GetAgreement(
        self, request: node_pb2.GetAgreementRequest, context: grpc.ServicerContext
    ) -> node_pb2.GetAgreementResponse:
        a = self._register.get(request.agreement_id)
        return node_pb2.GetAgreementResponse(agreement=envelope_to_pb(a.envelope), status=a.status)

    def ListAgreements(
        self, request: node_pb2.ListAgreementsRequest, context: grpc.ServicerContext
    ) -> node_pb2.ListAgreementsResponse:
        items, token = self._register.page(request.page_size, request.page_token)
        return node_pb2.ListAgreementsResponse(
            agreements=[
                node_pb2.GetAgreementResponse(agreement=envelope_to_pb(a.envelope), status=a.status)
                for a in items
            ],
            next_page_token=token,
        )
