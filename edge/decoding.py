"""Requests that do not decode are the caller's mistake, not ours.

gRPC answers a request its deserializer cannot parse with INTERNAL "Exception deserializing
request!", before any interceptor or handler runs. This interceptor, the outermost of every server,
gives each method a deserializer that never raises: an undecodable request becomes a marker, and the
call ends as INVALID_ARGUMENT with ErrorInfo reason REQUEST_UNDECODABLE before authentication or any
other work. It covers every method of every service on the server (health and reflection too), and
streaming requests message by message.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import grpc

from domain.errors import InvalidArgument
from edge.status import status_for

REASON = "REQUEST_UNDECODABLE"


class _Undecodable:
    """Stands in for a request message that did not decode."""


_UNDECODABLE = _Undecodable()


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None

    def decode(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception:  # any failure to parse untrusted bytes is the caller's
            return _UNDECODABLE

    return decode


def _refuse(context: grpc.ServicerContext, method: str) -> None:
    error = InvalidArgument(
        f"the request to {method} is not a valid message of its type", reason=REASON
    )
    context.abort_with_status(status_for(error))


def _checked_stream(
    requests: Iterator[Any], context: grpc.ServicerContext, method: str
) -> Iterator[Any]:
    for request in requests:
        if request is _UNDECODABLE:
            _refuse(context, method)
        yield request


def _unary_request(behaviour: Callable[..., Any], method: str) -> Callable[..., Any]:
    def checked(request: Any, context: grpc.ServicerContext) -> Any:
        if request is _UNDECODABLE:
            _refuse(context, method)
        return behaviour(request, context)

    return checked


def _stream_request(behaviour: Callable[..., Any], method: str) -> Callable[..., Any]:
    def checked(requests: Iterator[Any], context: grpc.ServicerContext) -> Any:
        return behaviour(_checked_stream(requests, context, method), context)

    return checked


class DecodingInterceptor(grpc.ServerInterceptor):
    """Refuses undecodable requests with INVALID_ARGUMENT (REQUEST_UNDECODABLE) on every method."""

    def intercept_service(self, continuation: Any, details: grpc.HandlerCallDetails) -> Any:
        """The method's handler with a deserializer that never raises and a check before the
        behaviour; unknown methods (None) pass through unchanged."""
        handler = continuation(details)
        if handler is None:
            return handler
        method: str = details.method
        kwargs = {
            "request_deserializer": _tolerant(handler.request_deserializer),
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                _unary_request(handler.unary_unary, method), **kwargs
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                _unary_request(handler.unary_stream, method), **kwargs
            )
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(
                _stream_request(handler.stream_unary, method), **kwargs
            )
        return grpc.stream_stream_rpc_method_handler(
            _stream_request(handler.stream_stream, method), **kwargs
        )
