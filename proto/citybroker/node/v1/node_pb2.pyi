from citybroker.common.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RunQueryRequest(_message.Message):
    __slots__ = ("signed_query",)
    SIGNED_QUERY_FIELD_NUMBER: _ClassVar[int]
    signed_query: _common_pb2.Envelope
    def __init__(self, signed_query: _Optional[_Union[_common_pb2.Envelope, _Mapping]] = ...) -> None: ...

class RunQueryResponse(_message.Message):
    __slots__ = ("signed_result", "log_index")
    SIGNED_RESULT_FIELD_NUMBER: _ClassVar[int]
    LOG_INDEX_FIELD_NUMBER: _ClassVar[int]
    signed_result: _common_pb2.Envelope
    log_index: int
    def __init__(self, signed_result: _Optional[_Union[_common_pb2.Envelope, _Mapping]] = ..., log_index: _Optional[int] = ...) -> None: ...

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
    __slots__ = ("record_id", "resident_id", "purpose", "recipient", "data_category", "valid_from", "valid_until", "state")
    RECORD_ID_FIELD_NUMBER: _ClassVar[int]
    RESIDENT_ID_FIELD_NUMBER: _ClassVar[int]
    PURPOSE_FIELD_NUMBER: _ClassVar[int]
    RECIPIENT_FIELD_NUMBER: _ClassVar[int]
    DATA_CATEGORY_FIELD_NUMBER: _ClassVar[int]
    VALID_FROM_FIELD_NUMBER: _ClassVar[int]
    VALID_UNTIL_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    record_id: str
    resident_id: str
    purpose: str
    recipient: str
    data_category: str
    valid_from: str
    valid_until: str
    state: str
    def __init__(self, record_id: _Optional[str] = ..., resident_id: _Optional[str] = ..., purpose: _Optional[str] = ..., recipient: _Optional[str] = ..., data_category: _Optional[str] = ..., valid_from: _Optional[str] = ..., valid_until: _Optional[str] = ..., state: _Optional[str] = ...) -> None: ...

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
