"""One transport-free error tree: a base class with families, each carrying a canonical code and an
UPPER_SNAKE reason.

Raise these anywhere; the gRPC edge (edge.status) is the one place that turns a code into a gRPC
status with ErrorInfo. Messages are shown to callers, so they name what was wrong and never carry
internals. Codes are the canonical condition names of google.rpc.Code (AIP-193), which signed
refusals also carry, so they belong to the domain rather than to any transport.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class Code(StrEnum):
    """Canonical error conditions (google.rpc.Code names), independent of any transport."""

    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    NOT_FOUND = "NOT_FOUND"
    ALREADY_EXISTS = "ALREADY_EXISTS"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    ABORTED = "ABORTED"
    INTERNAL = "INTERNAL"
    UNAVAILABLE = "UNAVAILABLE"
    UNAUTHENTICATED = "UNAUTHENTICATED"


class CitybrokerError(Exception):
    """The base of every error citybroker raises on purpose; anything else is a bug (INTERNAL)."""

    code: Code = Code.INTERNAL
    default_reason = "INTERNAL"

    def __init__(self, message: str, reason: str | None = None, **metadata: str) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason
        self.metadata = {k: str(v) for k, v in metadata.items()}


class InvalidArgument(CitybrokerError):
    code = Code.INVALID_ARGUMENT
    default_reason = "INVALID_ARGUMENT"


class TooLarge(CitybrokerError):
    code = Code.RESOURCE_EXHAUSTED
    default_reason = "REQUEST_TOO_LARGE"


class RateLimited(CitybrokerError):
    """A partner asked more often, or more at once, than its limits allow; `retry_after_s` is how
    long it should wait before trying again (the edge sends it as google.rpc.RetryInfo)."""

    code = Code.RESOURCE_EXHAUSTED
    default_reason = "RATE_LIMITED"

    def __init__(self, message: str, retry_after_s: float, **metadata: str) -> None:
        super().__init__(message, None, **metadata)
        self.retry_after_s = retry_after_s


class CallerGone(CitybrokerError):
    """The caller stopped waiting (its deadline passed, or it cancelled): work whose result it
    can no longer receive is dropped before anything is signed or logged."""

    code = Code.DEADLINE_EXCEEDED
    default_reason = "CALLER_GONE"


class BudgetExhausted(CitybrokerError):
    """The agreement's differential-privacy budget cannot pay for this answer."""

    code = Code.RESOURCE_EXHAUSTED
    default_reason = "BUDGET_EXHAUSTED"


class Conflict(CitybrokerError):
    """Something this request relied on changed under it; trying again may succeed."""

    code = Code.ABORTED
    default_reason = "CONFLICT"


class AuthenticationError(CitybrokerError):
    code = Code.UNAUTHENTICATED
    default_reason = "UNAUTHENTICATED"


class PermissionDenied(CitybrokerError):
    """Agreement/policy family: the caller is known but no agreement in force allows this."""

    code = Code.PERMISSION_DENIED
    default_reason = "PERMISSION_DENIED"


class NotFound(CitybrokerError):
    code = Code.NOT_FOUND
    default_reason = "NOT_FOUND"


class AlreadyExists(CitybrokerError):
    code = Code.ALREADY_EXISTS
    default_reason = "ALREADY_EXISTS"


class FailedPrecondition(CitybrokerError):
    code = Code.FAILED_PRECONDITION
    default_reason = "FAILED_PRECONDITION"


class VerificationError(CitybrokerError):
    """A signature, envelope, proof or trust bundle did not verify. Fails closed."""

    code = Code.PERMISSION_DENIED
    default_reason = "SIGNATURE_INVALID"


class RemoteNodeError(CitybrokerError):
    """Remote family: another party of the federation did not answer as asked."""

    code = Code.UNAVAILABLE
    default_reason = "NODE_UNAVAILABLE"


class StoreError(CitybrokerError):
    code = Code.UNAVAILABLE
    default_reason = "STORE_UNAVAILABLE"


class ConfigError(CitybrokerError):
    """Bad configuration found at start-up; the CLI prints it and exits non-zero."""

    default_reason = "CONFIG_INVALID"


@dataclass(frozen=True)
class RemoteError:
    """What a failed call to another party said: code name, ErrorInfo reason (if any) and message."""

    code: str
    reason: str
    message: str
    metadata: dict[str, str] = field(default_factory=dict)


class CallFailed(RemoteNodeError):
    """Another party (broker, node) refused or failed a call; `error` is what it said."""

    default_reason = "CALL_FAILED"

    def __init__(self, error: RemoteError) -> None:
        super().__init__(
            f"{error.code} {error.reason}: {error.message}", reason=error.reason or None
        )
        self.error = error
