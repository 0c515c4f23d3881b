"""Every call counted, timed and logged once: the outermost interceptor of every server.

It sees each call's final status, including the refusals the inner interceptors make (undecodable
requests, failed authentication, mapped errors), and reads the ErrorInfo reason from the status
they set. It also gives each call a clean exchange-id context (infra.logs), so the line it logs
carries the id the broker or node bound while handling it, and nothing from an earlier call on the
same worker thread.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import grpc
from google.rpc import error_details_pb2, status_pb2

from infra import logs
from infra.metrics import RPC_LATENCY, RPC_REFUSALS, RPC_REQUESTS

log = logging.getLogger("citybroker.rpc.calls")
_STATUS_DETAILS_KEY = "grpc-status-details-bin"


def _reason(context: grpc.ServicerContext) -> str:
    """The ErrorInfo reason of the status the call ended with, "" if it had none."""
    trailing = getattr(context, "trailing_metadata", lambda: None)() or ()
    for key, value in trailing:
        if key != _STATUS_DETAILS_KEY or not isinstance(value, bytes):
            continue
        try:
            status = status_pb2.Status.FromString(value)
        except Exception:  # not ours to fail on: the call is over
            return ""
        for detail in status.details:
            info = error_details_pb2.ErrorInfo()
            if detail.Unpack(info):
                return str(info.reason)
    return ""


def _code(context: grpc.ServicerContext, failed: bool) -> str:
    code = getattr(context, "code", lambda: None)()
    if isinstance(code, grpc.StatusCode):
        return str(code.name)
    return "UNKNOWN" if failed else "OK"


class MetricsInterceptor(grpc.ServerInterceptor):
    """Counts calls by method and status code, times them, counts refusals by reason, and logs one
    line per call (method, code, reason, milliseconds, the exchange id when one was bound)."""

    def intercept_service(self, continuation: Any, details: grpc.HandlerCallDetails) -> Any:
        """The unary handler wrapped to observe it; other handlers and unknown methods (None, which
        gRPC answers UNIMPLEMENTED without a method label to count) pass through."""
        handler = continuation(details)
        if handler is None or handler.unary_unary is None:
            return handler
        method: str = details.method
        inner = handler.unary_unary

        def observed(request: Any, context: grpc.ServicerContext) -> Any:
            token = logs.start_call()
            started, failed = time.perf_counter(), True
            try:
                response = inner(request, context)
                failed = False
                return response
            finally:
                _record(method, context, failed, time.perf_counter() - started)
                logs.end_call(token)

        return grpc.unary_unary_rpc_method_handler(
            observed,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


def _record(method: str, context: grpc.ServicerContext, failed: bool, seconds: float) -> None:
    code = _code(context, failed)
    reason = _reason(context) if code != "OK" else ""
    RPC_REQUESTS.labels(method, code).inc()
    RPC_LATENCY.labels(method, code).observe(seconds)
    if reason:
        RPC_REFUSALS.labels(method, reason).inc()
    if not method.startswith("/grpc."):  # health probes and reflection would drown the rest
        fields = {"method": method, "code": code, "ms": round(seconds * 1000, 1)}
        log.info("call", extra={**fields, **({"reason": reason} if reason else {})})
