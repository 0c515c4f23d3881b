from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class MeasureKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MEASURE_KIND_UNSPECIFIED: _ClassVar[MeasureKind]
    MEASURE_KIND_COUNT_RECORDS: _ClassVar[MeasureKind]
    MEASURE_KIND_COUNT_RESIDENTS: _ClassVar[MeasureKind]
    MEASURE_KIND_SUM: _ClassVar[MeasureKind]
    MEASURE_KIND_AVG: _ClassVar[MeasureKind]
    MEASURE_KIND_MIN: _ClassVar[MeasureKind]
    MEASURE_KIND_MAX: _ClassVar[MeasureKind]

class FilterOperator(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FILTER_OPERATOR_UNSPECIFIED: _ClassVar[FilterOperator]
    FILTER_OPERATOR_EQUALS: _ClassVar[FilterOperator]
    FILTER_OPERATOR_IN: _ClassVar[FilterOperator]
    FILTER_OPERATOR_AT_LEAST: _ClassVar[FilterOperator]
    FILTER_OPERATOR_AT_MOST: _ClassVar[FilterOperator]

class QueryKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    QUERY_KIND_UNSPECIFIED: _ClassVar[QueryKind]
    QUERY_KIND_AGGREGATE: _ClassVar[QueryKind]
    QUERY_KIND_ATTRIBUTE_CHECK: _ClassVar[QueryKind]
    QUERY_KIND_RECORD_RELEASE: _ClassVar[QueryKind]
MEASURE_KIND_UNSPECIFIED: MeasureKind
MEASURE_KIND_COUNT_RECORDS: MeasureKind
MEASURE_KIND_COUNT_RESIDENTS: MeasureKind
MEASURE_KIND_SUM: MeasureKind
MEASURE_KIND_AVG: MeasureKind
MEASURE_KIND_MIN: MeasureKind
MEASURE_KIND_MAX: MeasureKind
FILTER_OPERATOR_UNSPECIFIED: FilterOperator
FILTER_OPERATOR_EQUALS: FilterOperator
FILTER_OPERATOR_IN: FilterOperator
FILTER_OPERATOR_AT_LEAST: FilterOperator
FILTER_OPERATOR_AT_MOST: FilterOperator
QUERY_KIND_UNSPECIFIED: QueryKind
QUERY_KIND_AGGREGATE: QueryKind
QUERY_KIND_ATTRIBUTE_CHECK: QueryKind
QUERY_KIND_RECORD_RELEASE: QueryKind

class Envelope(_message.Message):
    __slots__ = ("payload_type", "payload", "signatures")
    PAYLOAD_TYPE_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    SIGNATURES_FIELD_NUMBER: _ClassVar[int]
    payload_type: str
    payload: bytes
    signatures: _containers.RepeatedCompositeFieldContainer[Signature]
    def __init__(self, payload_type: _Optional[str] = ..., payload: _Optional[bytes] = ..., signatures: _Optional[_Iterable[_Union[Signature, _Mapping]]] = ...) -> None: ...

class Signature(_message.Message):
    __slots__ = ("keyid", "sig")
    KEYID_FIELD_NUMBER: _ClassVar[int]
    SIG_FIELD_NUMBER: _ClassVar[int]
    keyid: str
    sig: bytes
    def __init__(self, keyid: _Optional[str] = ..., sig: _Optional[bytes] = ...) -> None: ...

class Measure(_message.Message):
    __slots__ = ("kind", "field")
    KIND_FIELD_NUMBER: _ClassVar[int]
    FIELD_FIELD_NUMBER: _ClassVar[int]
    kind: MeasureKind
    field: str
    def __init__(self, kind: _Optional[_Union[MeasureKind, str]] = ..., field: _Optional[str] = ...) -> None: ...

class Dimension(_message.Message):
    __slots__ = ("field", "generalisation")
    FIELD_FIELD_NUMBER: _ClassVar[int]
    GENERALISATION_FIELD_NUMBER: _ClassVar[int]
    field: str
    generalisation: str
    def __init__(self, field: _Optional[str] = ..., generalisation: _Optional[str] = ...) -> None: ...

class Filter(_message.Message):
    __slots__ = ("field", "operator", "values", "generalisation")
    FIELD_FIELD_NUMBER: _ClassVar[int]
    OPERATOR_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    GENERALISATION_FIELD_NUMBER: _ClassVar[int]
    field: str
    operator: FilterOperator
    values: _containers.RepeatedScalarFieldContainer[str]
    generalisation: str
    def __init__(self, field: _Optional[str] = ..., operator: _Optional[_Union[FilterOperator, str]] = ..., values: _Optional[_Iterable[str]] = ..., generalisation: _Optional[str] = ...) -> None: ...

class Query(_message.Message):
    __slots__ = ("dataset", "purpose", "measures", "group_by", "filters", "cities", "kind", "subject")
    DATASET_FIELD_NUMBER: _ClassVar[int]
    PURPOSE_FIELD_NUMBER: _ClassVar[int]
    MEASURES_FIELD_NUMBER: _ClassVar[int]
    GROUP_BY_FIELD_NUMBER: _ClassVar[int]
    FILTERS_FIELD_NUMBER: _ClassVar[int]
    CITIES_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    dataset: str
    purpose: str
    measures: _containers.RepeatedCompositeFieldContainer[Measure]
    group_by: _containers.RepeatedCompositeFieldContainer[Dimension]
    filters: _containers.RepeatedCompositeFieldContainer[Filter]
    cities: _containers.RepeatedScalarFieldContainer[str]
    kind: QueryKind
    subject: str
    def __init__(self, dataset: _Optional[str] = ..., purpose: _Optional[str] = ..., measures: _Optional[_Iterable[_Union[Measure, _Mapping]]] = ..., group_by: _Optional[_Iterable[_Union[Dimension, _Mapping]]] = ..., filters: _Optional[_Iterable[_Union[Filter, _Mapping]]] = ..., cities: _Optional[_Iterable[str]] = ..., kind: _Optional[_Union[QueryKind, str]] = ..., subject: _Optional[str] = ...) -> None: ...

class ReleasedRecord(_message.Message):
    __slots__ = ("city_id", "pseudonym", "fields")
    class FieldsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    CITY_ID_FIELD_NUMBER: _ClassVar[int]
    PSEUDONYM_FIELD_NUMBER: _ClassVar[int]
    FIELDS_FIELD_NUMBER: _ClassVar[int]
    city_id: str
    pseudonym: str
    fields: _containers.ScalarMap[str, str]
    def __init__(self, city_id: _Optional[str] = ..., pseudonym: _Optional[str] = ..., fields: _Optional[_Mapping[str, str]] = ...) -> None: ...

class FieldPlan(_message.Message):
    __slots__ = ("field", "appearance", "generalisations")
    FIELD_FIELD_NUMBER: _ClassVar[int]
    APPEARANCE_FIELD_NUMBER: _ClassVar[int]
    GENERALISATIONS_FIELD_NUMBER: _ClassVar[int]
    field: str
    appearance: str
    generalisations: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, field: _Optional[str] = ..., appearance: _Optional[str] = ..., generalisations: _Optional[_Iterable[str]] = ...) -> None: ...

class QueryPlan(_message.Message):
    __slots__ = ("allowed", "code", "reason", "message", "agreement_id", "agreement_version", "fields", "min_cell_size", "epsilon_per_query")
    ALLOWED_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    AGREEMENT_ID_FIELD_NUMBER: _ClassVar[int]
    AGREEMENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    FIELDS_FIELD_NUMBER: _ClassVar[int]
    MIN_CELL_SIZE_FIELD_NUMBER: _ClassVar[int]
    EPSILON_PER_QUERY_FIELD_NUMBER: _ClassVar[int]
    allowed: bool
    code: str
    reason: str
    message: str
    agreement_id: str
    agreement_version: int
    fields: _containers.RepeatedCompositeFieldContainer[FieldPlan]
    min_cell_size: int
    epsilon_per_query: float
    def __init__(self, allowed: _Optional[bool] = ..., code: _Optional[str] = ..., reason: _Optional[str] = ..., message: _Optional[str] = ..., agreement_id: _Optional[str] = ..., agreement_version: _Optional[int] = ..., fields: _Optional[_Iterable[_Union[FieldPlan, _Mapping]]] = ..., min_cell_size: _Optional[int] = ..., epsilon_per_query: _Optional[float] = ...) -> None: ...

class Cell(_message.Message):
    __slots__ = ("key", "values", "withheld", "contributing_cities", "withholding_cities")
    class KeyEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class ValuesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    WITHHELD_FIELD_NUMBER: _ClassVar[int]
    CONTRIBUTING_CITIES_FIELD_NUMBER: _ClassVar[int]
    WITHHOLDING_CITIES_FIELD_NUMBER: _ClassVar[int]
    key: _containers.ScalarMap[str, str]
    values: _containers.ScalarMap[str, float]
    withheld: bool
    contributing_cities: _containers.RepeatedScalarFieldContainer[str]
    withholding_cities: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, key: _Optional[_Mapping[str, str]] = ..., values: _Optional[_Mapping[str, float]] = ..., withheld: _Optional[bool] = ..., contributing_cities: _Optional[_Iterable[str]] = ..., withholding_cities: _Optional[_Iterable[str]] = ...) -> None: ...
