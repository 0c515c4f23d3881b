"""The one place where the error tree meets gRPC: each canonical code becomes a grpc.StatusCode, each
error a rich status with google.rpc.ErrorInfo (domain "citybroker"), and a failed call's status
becomes a transport-free RemoteError again."""

from __future__ import annotations

from typing import cast

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from domain.errors import CitybrokerError, Code, RemoteError

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
    status = status_pb2.Status(code=grpc_code(err).value[0], message=err.message, details=[detail])
    return cast(grpc.Status, rpc_status.to_status(status))


INTERNAL_STATUS = rpc_status.to_status(
    status_pb2.Status(code=code_pb2.INTERNAL, message="internal error")
)


def remote_error(err: grpc.RpcError) -> RemoteError:
    """What a failed call said, read from its status and ErrorInfo."""
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
            info = error_details_pb2.ErrorInfo()
            if d.Unpack(info):
                reason, metadata = info.reason, dict(info.metadata)
    return RemoteError(code.name, reason, message or "", metadata)
