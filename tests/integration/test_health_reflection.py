"""Every server answers gRPC health checks and server reflection, so grpcurl and buf curl work."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from edge.broker_service import BROKER_SERVICE
from edge.node_service import AGREEMENT_SERVICE, CONSENT_SERVICE, QUERY_SERVICE
from tests.integration.conftest import Wire

SERVING = health_pb2.HealthCheckResponse.SERVING
NODE_SERVICES = [QUERY_SERVICE, CONSENT_SERVICE, AGREEMENT_SERVICE]


def _broker_channel(wire: Wire) -> grpc.Channel:
    return wire.channel(wire.fed.broker_address)


def _node_channel(wire: Wire, city: str = "aurora") -> grpc.Channel:
    # A node speaks only mTLS; any federation certificate will do for health and reflection.
    return wire.channel(wire.fed.cities[city].address, f"{city}.operator")


def test_names_are_the_published_ones() -> None:
    assert BROKER_SERVICE == "citybroker.broker.v1.BrokerService"
    assert QUERY_SERVICE == "citybroker.node.v1.QueryService"


@pytest.mark.parametrize("service", ["", BROKER_SERVICE])
def test_broker_health(wire: Wire, service: str) -> None:
    stub = health_pb2_grpc.HealthStub(_broker_channel(wire))
    response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
    assert response.status == SERVING


@pytest.mark.parametrize("service", ["", *NODE_SERVICES])
def test_node_health(wire: Wire, service: str) -> None:
    for city in wire.fed.cities:
        stub = health_pb2_grpc.HealthStub(_node_channel(wire, city))
        response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert response.status == SERVING


def test_health_of_an_unknown_service_is_not_found(wire: Wire) -> None:
    stub = health_pb2_grpc.HealthStub(_broker_channel(wire))
    with pytest.raises(grpc.RpcError) as info:
        stub.Check(health_pb2.HealthCheckRequest(service="citybroker.nope.v1.X"), timeout=5)
    assert info.value.code() is grpc.StatusCode.NOT_FOUND


def test_broker_health_watch_streams_serving(wire: Wire) -> None:
    stub = health_pb2_grpc.HealthStub(_broker_channel(wire))
    stream = stub.Watch(health_pb2.HealthCheckRequest(service=BROKER_SERVICE), timeout=5)
    try:
        assert next(stream).status == SERVING
    finally:
        stream.cancel()


def test_broker_reflection(wire: Wire) -> None:
    db = ProtoReflectionDescriptorDatabase(_broker_channel(wire))
    services = set(db.get_services())
    assert {BROKER_SERVICE, "grpc.health.v1.Health"} <= services
    # The full schema is there: a client can build requests from reflection alone.
    pool = DescriptorPool(db)
    service = pool.FindServiceByName(BROKER_SERVICE)
    assert {m.name for m in service.methods} == {"Query", "DescribeFederation", "PlanQuery"}
    query = pool.FindMessageTypeByName("citybroker.common.v1.Query")
    assert "measures" in query.fields_by_name


def test_node_reflection(wire: Wire) -> None:
    db = ProtoReflectionDescriptorDatabase(_node_channel(wire))
    services = set(db.get_services())
    assert set(NODE_SERVICES) <= services
    pool = DescriptorPool(db)
    run_query = pool.FindServiceByName(QUERY_SERVICE).methods_by_name["RunQuery"]
    assert run_query.output_type.full_name == "citybroker.node.v1.RunQueryResponse"
