from citybroker.common.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PlanQueryRequest(_message.Message):
    __slots__ = ("signed_request",)
    SIGNED_REQUEST_FIELD_NUMBER: _ClassVar[int]
    signed_request: _common_pb2.Envelope
    def __init__(self, signed_request: _Optional[_Union[_common_pb2.Envelope, _Mapping]] = ...) -> None: ...

class PlanQueryResponse(_message.Message):
    __slots__ = ("plan",)
    PLAN_FIELD_NUMBER: _ClassVar[int]
    plan: _common_pb2.QueryPlan
    def __init__(self, plan: _Optional[_Union[_common_pb2.QueryPlan, _Mapping]] = ...) -> None: ...

class RunQueryRequest(_message.Message):
    __slots__ = ("signed_query",)
    SIGNED_QUERY_FIELD_NUMBER: _ClassVar[int]
    signed_query: _common_pb2.Envelope
    def __init__(self, signed_query: _Optional[_Union[_common_pb2.Envelope, _Mapping]] = ...) -> None: ...

class RunQueryResponse(_message.Message):
    __slots__ = ("signed_result", "log_index", "result_salt")
    SIGNED_RESULT_FIELD_NUMBER: _ClassVar[int]
    LOG_INDEX_FIELD_NUMBER: _ClassVar[int]
    RESULT_SALT_FIELD_NUMBER: _ClassVar[int]
    signed_result: _common_pb2.Envelope
    log_index: int
    result_salt: bytes
    def __init__(self, signed_result: _Optional[_Union[_common_pb2.Envelope, _Mapping]] = ..., log_index: _Optional[int] = ..., result_salt: _Optional[bytes] = ...) -> None: ...

class DescribeOfferRequest(_message.Message):
    __slots__ = ("signed_request",)
    SIGNED_REQUEST_FIELD_NUMBER: _ClassVar[int]
    signed_request: _common_pb2.Envelope
    def __init__(self, signed_request: _Optional[_Union[_common_pb2.Envelope, _Mapping]] = ...) -> None: ...

class DescribeOfferResponse(_message.Message):
    __slots__ = ("agreements",)
    AGREEMENTS_FIELD_NUMBER: _ClassVar[int]
    agreements: _containers.RepeatedCompositeFieldContainer[_common_pb2.Envelope]
    def __init__(self, agreements: _Optional[_Iterable[_Union[_common_pb2.Envelope, _Mapping]]] = ...) -> None: ...

class ConsentRecord(_message.Message):
    __slots__ = ("record_id", "resident_id", "purposes", "recipients", "data_categories", "valid_from", "valid_until", "state", "lawful_basis", "notice_url", "notice_hash", "language", "jurisdiction", "retention_days", "collection_method", "withdrawal_method")
    RECORD_ID_FIELD_NUMBER: _ClassVar[int]
    RESIDENT_ID_FIELD_NUMBER: _ClassVar[int]
    PURPOSES_FIELD_NUMBER: _ClassVar[int]
    RECIPIENTS_FIELD_NUMBER: _ClassVar[int]
    DATA_CATEGORIES_FIELD_NUMBER: _ClassVar[int]
    VALID_FROM_FIELD_NUMBER: _ClassVar[int]
    VALID_UNTIL_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    LAWFUL_BASIS_FIELD_NUMBER: _ClassVar[int]
    NOTICE_URL_FIELD_NUMBER: _ClassVar[int]
    NOTICE_HASH_FIELD_NUMBER: _ClassVar[int]
    LANGUAGE_FIELD_NUMBER: _ClassVar[int]
    JURISDICTION_FIELD_NUMBER: _ClassVar[int]
    RETENTION_DAYS_FIELD_NUMBER: _ClassVar[int]
    COLLECTION_METHOD_FIELD_NUMBER: _ClassVar[int]
    WITHDRAWAL_METHOD_FIELD_NUMBER: _ClassVar[int]
    record_id: str
    resident_id: str
    purposes: _containers.RepeatedScalarFieldContainer[str]
    recipients: _containers.RepeatedScalarFieldContainer[str]
    data_categories: _containers.RepeatedScalarFieldContainer[str]
    valid_from: str
    valid_until: str
    state: str
    lawful_basis: str
    notice_url: str
    notice_hash: str
    language: str
    jurisdiction: str
    retention_days: int
    collection_method: str
    withdrawal_method: str
    def __init__(self, record_id: _Optional[str] = ..., resident_id: _Optional[str] = ..., purposes: _Optional[_Iterable[str]] = ..., recipients: _Optional[_Iterable[str]] = ..., data_categories: _Optional[_Iterable[str]] = ..., valid_from: _Optional[str] = ..., valid_until: _Optional[str] = ..., state: _Optional[str] = ..., lawful_basis: _Optional[str] = ..., notice_url: _Optional[str] = ..., notice_hash: _Optional[str] = ..., language: _Optional[str] = ..., jurisdiction: _Optional[str] = ..., retention_days: _Optional[int] = ..., collection_method: _Optional[str] = ..., withdrawal_method: _Optional[str] = ...) -> None: ...

class GiveConsentRequest(_message.Message):
    __slots__ = ("record",)
    RECORD_FIELD_NUMBER: _ClassVar[int]
    record: ConsentRecord
    def __init__(self, record: _Optional[_Union[ConsentRecord, _Mapping]] = ...) -> None: ...

class GiveConsentResponse(_message.Message):
    __slots__ = ("receipt",)
    RECEIPT_FIELD_NUMBER: _ClassVar[int]
    receipt: _common_pb2.Envelope
    def __init__(self, receipt: _Optional[_Union[_common_pb2.Envelope, _Mapping]] = ...) -> None: ...

class RefuseConsentRequest(_message.Message):
    __slots__ = ("record",)
    RECORD_FIELD_NUMBER: _ClassVar[int]
    record: ConsentRecord
    def __init__(self, record: _Optional[_Union[ConsentRecord, _Mapping]] = ...) -> None: ...

class RefuseConsentResponse(_message.Message):
    __slots__ = ("receipt",)
    RECEIPT_FIELD_NUMBER: _ClassVar[int]
    receipt: _common_pb2.Envelope
    def __init__(self, receipt: _Optional[_Union[_common_pb2.Envelope, _Mapping]] = ...) -> None: ...

class RenewConsentRequest(_message.Message):
    __slots__ = ("record_id", "valid_until")
    RECORD_ID_FIELD_NUMBER: _ClassVar[int]
    VALID_UNTIL_FIELD_NUMBER: _ClassVar[int]
    record_id: str
    valid_until: str
    def __init__(self, record_id: _Optional[str] = ..., valid_until: _Optional[str] = ...) -> None: ...

class RenewConsentResponse(_message.Message):
    __slots__ = ("receipt",)
    RECEIPT_FIELD_NUMBER: _ClassVar[int]
    receipt: _common_pb2.Envelope
    def __init__(self, receipt: _Optional[_Union[_common_pb2.Envelope, _Mapping]] = ...) -> None: ...

class WithdrawConsentRequest(_message.Message):
    __slots__ = ("record_id",)
    RECORD_ID_FIELD_NUMBER: _ClassVar[int]
    record_id: str
    def __init__(self, record_id: _Optional[str] = ...) -> None: ...

class WithdrawConsentResponse(_message.Message):
    __slots__ = ("receipt",)
    RECEIPT_FIELD_NUMBER: _ClassVar[int]
    receipt: _common_pb2.Envelope
    def __init__(self, receipt: _Optional[_Union[_common_pb2.Envelope, _Mapping]] = ...) -> None: ...

class RevokeConsentRequest(_message.Message):
    __slots__ = ("record_id",)
    RECORD_ID_FIELD_NUMBER: _ClassVar[int]
    record_id: str
    def __init__(self, record_id: _Optional[str] = ...) -> None: ...

class RevokeConsentResponse(_message.Message):
    __slots__ = ("receipt",)
    RECEIPT_FIELD_NUMBER: _ClassVar[int]
    receipt: _common_pb2.Envelope
    def __init__(self, receipt: _Optional[_Union[_common_pb2.Envelope, _Mapping]] = ...) -> None: ...

class InvalidateConsentRequest(_message.Message):
    __slots__ = ("record_id",)
    RECORD_ID_FIELD_NUMBER: _ClassVar[int]
    record_id: str
    def __init__(self, record_id: _Optional[str] = ...) -> None: ...

class InvalidateConsentResponse(_message.Message):
    __slots__ = ("receipt",)
    RECEIPT_FIELD_NUMBER: _ClassVar[int]
    receipt: _common_pb2.Envelope
    def __init__(self, receipt: _Optional[_Union[_common_pb2.Envelope, _Mapping]] = ...) -> None: ...

class GetConsentRequest(_message.Message):
    __slots__ = ("record_id",)
    RECORD_ID_FIELD_NUMBER: _ClassVar[int]
    record_id: str
    def __init__(self, record_id: _Optional[str] = ...) -> None: ...

class GetConsentResponse(_message.Message):
    __slots__ = ("record",)
    RECORD_FIELD_NUMBER: _ClassVar[int]
    record: ConsentRecord
    def __init__(self, record: _Optional[_Union[ConsentRecord, _Mapping]] = ...) -> None: ...

class ListResidentConsentsRequest(_message.Message):
    __slots__ = ("resident_id", "page_size", "page_token")
    RESIDENT_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    resident_id: str
    page_size: int
    page_token: str
    def __init__(self, resident_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListResidentConsentsResponse(_message.Message):
    __slots__ = ("records", "next_page_token")
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedCompositeFieldContainer[ConsentRecord]
    next_page_token: str
    def __init__(self, records: _Optional[_Iterable[_Union[ConsentRecord, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetConsentHistoryRequest(_message.Message):
    __slots__ = ("record_id",)
    RECORD_ID_FIELD_NUMBER: _ClassVar[int]
    record_id: str
    def __init__(self, record_id: _Optional[str] = ...) -> None: ...

class ConsentEvent(_message.Message):
    __slots__ = ("event", "actor", "at", "receipt")
    EVENT_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    RECEIPT_FIELD_NUMBER: _ClassVar[int]
    event: str
    actor: str
    at: str
    receipt: _common_pb2.Envelope
    def __init__(self, event: _Optional[str] = ..., actor: _Optional[str] = ..., at: _Optional[str] = ..., receipt: _Optional[_Union[_common_pb2.Envelope, _Mapping]] = ...) -> None: ...

class GetConsentHistoryResponse(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[ConsentEvent]
    def __init__(self, events: _Optional[_Iterable[_Union[ConsentEvent, _Mapping]]] = ...) -> None: ...

class ExportConsentReceiptRequest(_message.Message):
    __slots__ = ("record_id",)
    RECORD_ID_FIELD_NUMBER: _ClassVar[int]
    record_id: str
    def __init__(self, record_id: _Optional[str] = ...) -> None: ...

class ExportConsentReceiptResponse(_message.Message):
    __slots__ = ("kantara_json", "receipt")
    KANTARA_JSON_FIELD_NUMBER: _ClassVar[int]
    RECEIPT_FIELD_NUMBER: _ClassVar[int]
    kantara_json: str
    receipt: _common_pb2.Envelope
    def __init__(self, kantara_json: _Optional[str] = ..., receipt: _Optional[_Union[_common_pb2.Envelope, _Mapping]] = ...) -> None: ...

class ListResidentExchangesRequest(_message.Message):
    __slots__ = ("resident_id", "page_size", "page_token")
    RESIDENT_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    resident_id: str
    page_size: int
    page_token: str
    def __init__(self, resident_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ResidentExchange(_message.Message):
    __slots__ = ("request_id", "partner", "purpose", "dataset", "agreement_id", "agreement_version", "released_at", "log_index")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PARTNER_FIELD_NUMBER: _ClassVar[int]
    PURPOSE_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    AGREEMENT_ID_FIELD_NUMBER: _ClassVar[int]
    AGREEMENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    RELEASED_AT_FIELD_NUMBER: _ClassVar[int]
    LOG_INDEX_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    partner: str
    purpose: str
    dataset: str
    agreement_id: str
    agreement_version: int
    released_at: str
    log_index: int
    def __init__(self, request_id: _Optional[str] = ..., partner: _Optional[str] = ..., purpose: _Optional[str] = ..., dataset: _Optional[str] = ..., agreement_id: _Optional[str] = ..., agreement_version: _Optional[int] = ..., released_at: _Optional[str] = ..., log_index: _Optional[int] = ...) -> None: ...

class ListResidentExchangesResponse(_message.Message):
    __slots__ = ("exchanges", "next_page_token")
    EXCHANGES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    exchanges: _containers.RepeatedCompositeFieldContainer[ResidentExchange]
    next_page_token: str
    def __init__(self, exchanges: _Optional[_Iterable[_Union[ResidentExchange, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetConsentEvidenceRequest(_message.Message):
    __slots__ = ("record_id",)
    RECORD_ID_FIELD_NUMBER: _ClassVar[int]
    record_id: str
    def __init__(self, record_id: _Optional[str] = ...) -> None: ...

class ConsentEvidence(_message.Message):
    __slots__ = ("statement", "salt", "log_index", "tree_size", "inclusion_proof", "checkpoint", "member_payload", "member_salt")
    STATEMENT_FIELD_NUMBER: _ClassVar[int]
    SALT_FIELD_NUMBER: _ClassVar[int]
    LOG_INDEX_FIELD_NUMBER: _ClassVar[int]
    TREE_SIZE_FIELD_NUMBER: _ClassVar[int]
    INCLUSION_PROOF_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    MEMBER_PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    MEMBER_SALT_FIELD_NUMBER: _ClassVar[int]
    statement: bytes
    salt: bytes
    log_index: int
    tree_size: int
    inclusion_proof: _containers.RepeatedScalarFieldContainer[bytes]
    checkpoint: str
    member_payload: bytes
    member_salt: bytes
    def __init__(self, statement: _Optional[bytes] = ..., salt: _Optional[bytes] = ..., log_index: _Optional[int] = ..., tree_size: _Optional[int] = ..., inclusion_proof: _Optional[_Iterable[bytes]] = ..., checkpoint: _Optional[str] = ..., member_payload: _Optional[bytes] = ..., member_salt: _Optional[bytes] = ...) -> None: ...

class GetConsentEvidenceResponse(_message.Message):
    __slots__ = ("evidence",)
    EVIDENCE_FIELD_NUMBER: _ClassVar[int]
    evidence: _containers.RepeatedCompositeFieldContainer[ConsentEvidence]
    def __init__(self, evidence: _Optional[_Iterable[_Union[ConsentEvidence, _Mapping]]] = ...) -> None: ...

class EraseResidentRequest(_message.Message):
    __slots__ = ("resident_id",)
    RESIDENT_ID_FIELD_NUMBER: _ClassVar[int]
    resident_id: str
    def __init__(self, resident_id: _Optional[str] = ...) -> None: ...

class EraseResidentResponse(_message.Message):
    __slots__ = ("records_erased", "events_erased", "statements_erased", "batch_members_erased")
    RECORDS_ERASED_FIELD_NUMBER: _ClassVar[int]
    EVENTS_ERASED_FIELD_NUMBER: _ClassVar[int]
    STATEMENTS_ERASED_FIELD_NUMBER: _ClassVar[int]
    BATCH_MEMBERS_ERASED_FIELD_NUMBER: _ClassVar[int]
    records_erased: int
    events_erased: int
    statements_erased: int
    batch_members_erased: int
    def __init__(self, records_erased: _Optional[int] = ..., events_erased: _Optional[int] = ..., statements_erased: _Optional[int] = ..., batch_members_erased: _Optional[int] = ...) -> None: ...

class ProposeAgreementRequest(_message.Message):
    __slots__ = ("terms_json",)
    TERMS_JSON_FIELD_NUMBER: _ClassVar[int]
    terms_json: str
    def __init__(self, terms_json: _Optional[str] = ...) -> None: ...

class ProposeAgreementResponse(_message.Message):
    __slots__ = ("agreement",)
    AGREEMENT_FIELD_NUMBER: _ClassVar[int]
    agreement: _common_pb2.Envelope
    def __init__(self, agreement: _Optional[_Union[_common_pb2.Envelope, _Mapping]] = ...) -> None: ...

class CountersignAgreementRequest(_message.Message):
    __slots__ = ("agreement",)
    AGREEMENT_FIELD_NUMBER: _ClassVar[int]
    agreement: _common_pb2.Envelope
    def __init__(self, agreement: _Optional[_Union[_common_pb2.Envelope, _Mapping]] = ...) -> None: ...

class CountersignAgreementResponse(_message.Message):
    __slots__ = ("agreement", "status")
    AGREEMENT_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    agreement: _common_pb2.Envelope
    status: str
    def __init__(self, agreement: _Optional[_Union[_common_pb2.Envelope, _Mapping]] = ..., status: _Optional[str] = ...) -> None: ...

class ActivateAgreementRequest(_message.Message):
    __slots__ = ("agreement",)
    AGREEMENT_FIELD_NUMBER: _ClassVar[int]
    agreement: _common_pb2.Envelope
    def __init__(self, agreement: _Optional[_Union[_common_pb2.Envelope, _Mapping]] = ...) -> None: ...

class ActivateAgreementResponse(_message.Message):
    __slots__ = ("agreement_id", "version")
    AGREEMENT_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    agreement_id: str
    version: int
    def __init__(self, agreement_id: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class RevokeAgreementRequest(_message.Message):
    __slots__ = ("agreement_id", "reason", "revocation")
    AGREEMENT_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    REVOCATION_FIELD_NUMBER: _ClassVar[int]
    agreement_id: str
    reason: str
    revocation: _common_pb2.Envelope
    def __init__(self, agreement_id: _Optional[str] = ..., reason: _Optional[str] = ..., revocation: _Optional[_Union[_common_pb2.Envelope, _Mapping]] = ...) -> None: ...

class RevokeAgreementResponse(_message.Message):
    __slots__ = ("revocation",)
    REVOCATION_FIELD_NUMBER: _ClassVar[int]
    revocation: _common_pb2.Envelope
    def __init__(self, revocation: _Optional[_Union[_common_pb2.Envelope, _Mapping]] = ...) -> None: ...

class GetAgreementRequest(_message.Message):
    __slots__ = ("agreement_id",)
    AGREEMENT_ID_FIELD_NUMBER: _ClassVar[int]
    agreement_id: str
    def __init__(self, agreement_id: _Optional[str] = ...) -> None: ...

class GetAgreementResponse(_message.Message):
    __slots__ = ("agreement", "status")
    AGREEMENT_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    agreement: _common_pb2.Envelope
    status: str
    def __init__(self, agreement: _Optional[_Union[_common_pb2.Envelope, _Mapping]] = ..., status: _Optional[str] = ...) -> None: ...

class ListAgreementsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListAgreementsResponse(_message.Message):
    __slots__ = ("agreements", "next_page_token")
    AGREEMENTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    agreements: _containers.RepeatedCompositeFieldContainer[GetAgreementResponse]
    next_page_token: str
    def __init__(self, agreements: _Optional[_Iterable[_Union[GetAgreementResponse, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ExportAgreementOdrlRequest(_message.Message):
    __slots__ = ("agreement_id",)
    AGREEMENT_ID_FIELD_NUMBER: _ClassVar[int]
    agreement_id: str
    def __init__(self, agreement_id: _Optional[str] = ...) -> None: ...

class ExportAgreementOdrlResponse(_message.Message):
    __slots__ = ("odrl_json",)
    ODRL_JSON_FIELD_NUMBER: _ClassVar[int]
    odrl_json: str
    def __init__(self, odrl_json: _Optional[str] = ...) -> None: ...
