"""The status mapping: a rate refusal carries google.rpc.RetryInfo beside its ErrorInfo."""

from __future__ import annotations

from google.rpc import error_details_pb2, status_pb2

from domain.errors import RateLimited
from edge.status import status_for


def test_a_rate_refusal_is_resource_exhausted_with_its_retry_delay() -> None:
    status = status_for(RateLimited("over the limit", 1.25, limit="burst"))
    assert status.code.name == "RESOURCE_EXHAUSTED"
    details = dict(status.trailing_metadata)["grpc-status-details-bin"]
    parsed = status_pb2.Status.FromString(details)
    info, retry = error_details_pb2.ErrorInfo(), error_details_pb2.RetryInfo()
    assert parsed.details[0].Unpack(info) and info.reason == "RATE_LIMITED"
    assert info.metadata["limit"] == "burst"
    assert parsed.details[1].Unpack(retry)
    assert retry.retry_delay.ToNanoseconds() == 1_250_000_000
