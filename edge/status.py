"""The one place where the error tree meets gRPC: each canonical code becomes a grpc.StatusCode, each
error a rich status with google.rpc.ErrorInfo (domain "citybroker"), and a failed call's status
becomes a transport-free RemoteError again."""

from __future__ import annotations

from typing import cast

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from domain.errors import CitybrokerError, Code, RateLimited, RemoteError

DOMAIN = "citybroker"

GRPC_CODES: dict[Code, grpc.StatusCode] = {code: grpc.StatusCode[code.value] for code in Code}


def grpc_code(err: CitybrokerError) -> grpc.StatusCode:
    """The gRPC status code of an error's family."""
    return GRPC_CODES[err.code]


def status_for(err: CitybrokerError) -> grpc.Status:
    """The rich status a CitybrokerError becomes: its code, message and ErrorInfo reason."""
    info = error_details_pb2.ErrorInfo(reason=err.reason, domain=DOMAIN, metadata=err.metadata)
    detail = any_pb2.Any()
    detail.Pack(info)
    details = [detail]
    if isinstance(err, RateLimited):
        details.append(_retry_info(err.retry_after_s))
    status = status_pb2.Status(code=grpc_code(err).value[0], message=err.message, details=details)
    return cast(grpc.Status, rpc_status.to_status(status))


# What remote_error puts in a RemoteError's metadata when the status carried a RetryInfo.
RETRY_AFTER_KEY = "retry_after_s"


def _retry_info(seconds: float) -> any_pb2.Any:
    """google.rpc.RetryInfo: how long the caller should wait before trying again."""
    delay = duration_pb2.Duration()
    delay.FromNanoseconds(round(seconds * 1e9))
    packed = any_pb2.Any()
    packed.Pack(error_details_pb2.RetryInfo(retry_delay=delay))
    return packed


INTERNAL_STATUS = rpc_status.to_status(
    status_pb2.Status(code=code_pb2.INTERNAL, message="internal error")
)


def remote_error(err: grpc.RpcError) -> RemoteError:
    """What a failed call said, read from its status and ErrorInfo; a RetryInfo's delay becomes
    the metadata `retry_after_s` (seconds)."""
    code = err.code() if isinstance(err, grpc.Call) else grpc.StatusCode.UNKNOWN
    reason = ""
    metadata: dict[str, str] = {}
    message = err.details() if isinstance(err, grpc.Call) else str(err)
    try:
        st = rpc_status.from_call(err) if isinstance(err, grpc.Call) else None
    except ValueError:
        st = None
    if st is not None:
        for d in st.details:
            info, retry = error_details_pb2.ErrorInfo(), error_details_pb2.RetryInfo()
            if d.Unpack(info):
                reason, metadata = info.reason, {**dict(info.metadata), **metadata}
            elif d.Unpack(retry):
                seconds = retry.retry_delay.ToNanoseconds() / 1e9
                metadata[RETRY_AFTER_KEY] = f"{seconds:g}"
    return RemoteError(code.name, reason, message or "", metadata)
