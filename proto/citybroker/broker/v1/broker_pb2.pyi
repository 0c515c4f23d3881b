from citybroker.common.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CityStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CITY_STATUS_UNSPECIFIED: _ClassVar[CityStatus]
    CITY_STATUS_ANSWERED: _ClassVar[CityStatus]
    CITY_STATUS_REFUSED: _ClassVar[CityStatus]
    CITY_STATUS_FAILED: _ClassVar[CityStatus]
    CITY_STATUS_TIMED_OUT: _ClassVar[CityStatus]
    CITY_STATUS_UNVERIFIED: _ClassVar[CityStatus]
CITY_STATUS_UNSPECIFIED: CityStatus
CITY_STATUS_ANSWERED: CityStatus
CITY_STATUS_REFUSED: CityStatus
CITY_STATUS_FAILED: CityStatus
CITY_STATUS_TIMED_OUT: CityStatus
CITY_STATUS_UNVERIFIED: CityStatus

class QueryRequest(_message.Message):
    __slots__ = ("query", "negotiate")
    QUERY_FIELD_NUMBER: _ClassVar[int]
    NEGOTIATE_FIELD_NUMBER: _ClassVar[int]
    query: _common_pb2.Query
    negotiate: bool
    def __init__(self, query: _Optional[_Union[_common_pb2.Query, _Mapping]] = ..., negotiate: _Optional[bool] = ...) -> None: ...

class PlanQueryRequest(_message.Message):
    __slots__ = ("query",)
    QUERY_FIELD_NUMBER: _ClassVar[int]
    query: _common_pb2.Query
    def __init__(self, query: _Optional[_Union[_common_pb2.Query, _Mapping]] = ...) -> None: ...

class CityPlan(_message.Message):
    __slots__ = ("city_id", "outcome", "plan")
    CITY_ID_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    PLAN_FIELD_NUMBER: _ClassVar[int]
    city_id: str
    outcome: CityOutcome
    plan: _common_pb2.QueryPlan
    def __init__(self, city_id: _Optional[str] = ..., outcome: _Optional[_Union[CityOutcome, _Mapping]] = ..., plan: _Optional[_Union[_common_pb2.QueryPlan, _Mapping]] = ...) -> None: ...

class PlanQueryResponse(_message.Message):
    __slots__ = ("negotiated", "notes", "cities")
    NEGOTIATED_FIELD_NUMBER: _ClassVar[int]
    NOTES_FIELD_NUMBER: _ClassVar[int]
    CITIES_FIELD_NUMBER: _ClassVar[int]
    negotiated: _common_pb2.Query
    notes: _containers.RepeatedScalarFieldContainer[str]
    cities: _containers.RepeatedCompositeFieldContainer[CityPlan]
    def __init__(self, negotiated: _Optional[_Union[_common_pb2.Query, _Mapping]] = ..., notes: _Optional[_Iterable[str]] = ..., cities: _Optional[_Iterable[_Union[CityPlan, _Mapping]]] = ...) -> None: ...

class CityOutcome(_message.Message):
    __slots__ = ("city_id", "status", "code", "reason", "message", "signed_result", "log_index", "result_salt")
    CITY_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    SIGNED_RESULT_FIELD_NUMBER: _ClassVar[int]
    LOG_INDEX_FIELD_NUMBER: _ClassVar[int]
    RESULT_SALT_FIELD_NUMBER: _ClassVar[int]
    city_id: str
    status: CityStatus
    code: str
    reason: str
    message: str
    signed_result: _common_pb2.Envelope
    log_index: int
    result_salt: bytes
    def __init__(self, city_id: _Optional[str] = ..., status: _Optional[_Union[CityStatus, str]] = ..., code: _Optional[str] = ..., reason: _Optional[str] = ..., message: _Optional[str] = ..., signed_result: _Optional[_Union[_common_pb2.Envelope, _Mapping]] = ..., log_index: _Optional[int] = ..., result_salt: _Optional[bytes] = ...) -> None: ...

class QueryResponse(_message.Message):
    __slots__ = ("query_id", "cells", "cities", "signed_query", "receipt", "negotiation_notes", "records", "query_salt")
    QUERY_ID_FIELD_NUMBER: _ClassVar[int]
    CELLS_FIELD_NUMBER: _ClassVar[int]
    CITIES_FIELD_NUMBER: _ClassVar[int]
    SIGNED_QUERY_FIELD_NUMBER: _ClassVar[int]
    RECEIPT_FIELD_NUMBER: _ClassVar[int]
    NEGOTIATION_NOTES_FIELD_NUMBER: _ClassVar[int]
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    QUERY_SALT_FIELD_NUMBER: _ClassVar[int]
    query_id: str
    cells: _containers.RepeatedCompositeFieldContainer[_common_pb2.Cell]
    cities: _containers.RepeatedCompositeFieldContainer[CityOutcome]
    signed_query: _common_pb2.Envelope
    receipt: _common_pb2.Envelope
    negotiation_notes: _containers.RepeatedScalarFieldContainer[str]
    records: _containers.RepeatedCompositeFieldContainer[_common_pb2.ReleasedRecord]
    query_salt: bytes
    def __init__(self, query_id: _Optional[str] = ..., cells: _Optional[_Iterable[_Union[_common_pb2.Cell, _Mapping]]] = ..., cities: _Optional[_Iterable[_Union[CityOutcome, _Mapping]]] = ..., signed_query: _Optional[_Union[_common_pb2.Envelope, _Mapping]] = ..., receipt: _Optional[_Union[_common_pb2.Envelope, _Mapping]] = ..., negotiation_notes: _Optional[_Iterable[str]] = ..., records: _Optional[_Iterable[_Union[_common_pb2.ReleasedRecord, _Mapping]]] = ..., query_salt: _Optional[bytes] = ...) -> None: ...

class DescribeFederationRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class FieldTerms(_message.Message):
    __slots__ = ("field", "appearance", "generalisations")
    FIELD_FIELD_NUMBER: _ClassVar[int]
    APPEARANCE_FIELD_NUMBER: _ClassVar[int]
    GENERALISATIONS_FIELD_NUMBER: _ClassVar[int]
    field: str
    appearance: str
    generalisations: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, field: _Optional[str] = ..., appearance: _Optional[str] = ..., generalisations: _Optional[_Iterable[str]] = ...) -> None: ...

class DatasetTerms(_message.Message):
    __slots__ = ("dataset", "fields")
    DATASET_FIELD_NUMBER: _ClassVar[int]
    FIELDS_FIELD_NUMBER: _ClassVar[int]
    dataset: str
    fields: _containers.RepeatedCompositeFieldContainer[FieldTerms]
    def __init__(self, dataset: _Optional[str] = ..., fields: _Optional[_Iterable[_Union[FieldTerms, _Mapping]]] = ...) -> None: ...

class AgreementSummary(_message.Message):
    __slots__ = ("agreement_id", "version", "purposes", "datasets", "min_cell_size", "valid_from", "valid_until", "signed_agreement")
    AGREEMENT_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PURPOSES_FIELD_NUMBER: _ClassVar[int]
    DATASETS_FIELD_NUMBER: _ClassVar[int]
    MIN_CELL_SIZE_FIELD_NUMBER: _ClassVar[int]
    VALID_FROM_FIELD_NUMBER: _ClassVar[int]
    VALID_UNTIL_FIELD_NUMBER: _ClassVar[int]
    SIGNED_AGREEMENT_FIELD_NUMBER: _ClassVar[int]
    agreement_id: str
    version: int
    purposes: _containers.RepeatedScalarFieldContainer[str]
    datasets: _containers.RepeatedCompositeFieldContainer[DatasetTerms]
    min_cell_size: int
    valid_from: str
    valid_until: str
    signed_agreement: _common_pb2.Envelope
    def __init__(self, agreement_id: _Optional[str] = ..., version: _Optional[int] = ..., purposes: _Optional[_Iterable[str]] = ..., datasets: _Optional[_Iterable[_Union[DatasetTerms, _Mapping]]] = ..., min_cell_size: _Optional[int] = ..., valid_from: _Optional[str] = ..., valid_until: _Optional[str] = ..., signed_agreement: _Optional[_Union[_common_pb2.Envelope, _Mapping]] = ...) -> None: ...

class CityOffer(_message.Message):
    __slots__ = ("city_id", "name", "jurisdiction", "agreements", "outcome")
    CITY_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    JURISDICTION_FIELD_NUMBER: _ClassVar[int]
    AGREEMENTS_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    city_id: str
    name: str
    jurisdiction: str
    agreements: _containers.RepeatedCompositeFieldContainer[AgreementSummary]
    outcome: CityOutcome
    def __init__(self, city_id: _Optional[str] = ..., name: _Optional[str] = ..., jurisdiction: _Optional[str] = ..., agreements: _Optional[_Iterable[_Union[AgreementSummary, _Mapping]]] = ..., outcome: _Optional[_Union[CityOutcome, _Mapping]] = ...) -> None: ...

class DescribeFederationResponse(_message.Message):
    __slots__ = ("cities",)
    CITIES_FIELD_NUMBER: _ClassVar[int]
    cities: _containers.RepeatedCompositeFieldContainer[CityOffer]
    def __init__(self, cities: _Optional[_Iterable[_Union[CityOffer, _Mapping]]] = ...) -> None: ...
