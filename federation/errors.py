"""One error base class with families, each mapped once to a gRPC status code and an ErrorInfo reason.

Raise these anywhere; the gRPC edge (federation.rpc) turns them into a rich status. Messages are shown
to callers, so they name what was wrong and never carry internals.
"""

from __future__ import annotations

import grpc


class CitybrokerError(Exception):
    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    default_reason = "INTERNAL"

    def __init__(self, message: str, reason: str | None = None, **metadata: str) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason
        self.metadata = {k: str(v) for k, v in metadata.items()}


class InvalidArgument(CitybrokerError):
    code = grpc.StatusCode.INVALID_ARGUMENT
    default_reason = "INVALID_ARGUMENT"


class TooLarge(CitybrokerError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    default_reason = "REQUEST_TOO_LARGE"


class BudgetExhausted(CitybrokerError):
    """The agreement's differential-privacy budget cannot pay for this answer."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    default_reason = "BUDGET_EXHAUSTED"


class Conflict(CitybrokerError):
    """Something this request relied on changed under it; trying again may succeed."""

    code = grpc.StatusCode.ABORTED
    default_reason = "CONFLICT"


class AuthenticationError(CitybrokerError):
    code = grpc.StatusCode.UNAUTHENTICATED
    default_reason = "UNAUTHENTICATED"


class PermissionDenied(CitybrokerError):
    """Agreement/policy family: the caller is known but no agreement in force allows this."""

    code = grpc.StatusCode.PERMISSION_DENIED
    default_reason = "PERMISSION_DENIED"


class NotFound(CitybrokerError):
    code = grpc.StatusCode.NOT_FOUND
    default_reason = "NOT_FOUND"


class AlreadyExists(CitybrokerError):
    code = grpc.StatusCode.ALREADY_EXISTS
    default_reason = "ALREADY_EXISTS"


class FailedPrecondition(CitybrokerError):
    code = grpc.StatusCode.FAILED_PRECONDITION
    default_reason = "FAILED_PRECONDITION"


class VerificationError(CitybrokerError):
    """A signature, envelope, proof or trust bundle did not verify. Fails closed."""

    code = grpc.StatusCode.PERMISSION_DENIED
    default_reason = "SIGNATURE_INVALID"


class RemoteNodeError(CitybrokerError):
    code = grpc.StatusCode.UNAVAILABLE
    default_reason = "NODE_UNAVAILABLE"


class StoreError(CitybrokerError):
    code = grpc.StatusCode.UNAVAILABLE
    default_reason = "STORE_UNAVAILABLE"


class ConfigError(CitybrokerError):
    """Bad configuration found at start-up; the CLI prints it and exits non-zero."""

    default_reason = "CONFIG_INVALID"
