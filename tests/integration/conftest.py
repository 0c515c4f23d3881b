"""Integration helpers: raw gRPC channels (over the federation's mTLS) and hand-made partner tokens.

`wire` talks to the shared session federation, `fresh_wire` to a per-test one. Both close every channel
they opened when the test ends.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest

from citybroker.broker.v1 import broker_pb2, broker_pb2_grpc
from citybroker.node.v1 import node_pb2_grpc
from domain.authorisation import grant_for
from domain.errors import CitybrokerError
from domain.query import Dimension, Measure, MeasureKind, Query
from edge.rpc import CHANNEL_OPTIONS
from edge.wire import query_from_pb, query_to_pb
from keys import tokens
from keys.tokens import Call
from tests.conftest import PURPOSE, RunningFederation


class Wire:
    """Raw stubs on real channels, so tests see exactly what a client on the network sees."""

    def __init__(self, rf: RunningFederation) -> None:
        self.rf = rf
        self.fed = rf.fed
        self._channels: list[grpc.Channel] = []

    @property
    def tls(self) -> Path:
        return self.fed.root / "tls"

    def credentials(self, identity: str | None) -> grpc.ChannelCredentials:
        """TLS trusting the federation CA; with `identity`, present that party's certificate."""
        ca = self.fed.ca_cert.read_bytes()
        if identity is None:
            return grpc.ssl_channel_credentials(root_certificates=ca)
        return grpc.ssl_channel_credentials(
            root_certificates=ca,
            private_key=(self.tls / f"{identity}.key").read_bytes(),
            certificate_chain=(self.tls / f"{identity}.crt").read_bytes(),
        )

    def channel(self, address: str, identity: str | None = None) -> grpc.Channel:
        ch = grpc.secure_channel(address, self.credentials(identity), options=CHANNEL_OPTIONS)
        self._channels.append(ch)
        return ch

    def broker(self) -> broker_pb2_grpc.BrokerServiceStub:
        return broker_pb2_grpc.BrokerServiceStub(self.channel(self.fed.broker_address))

    def node_query(self, city: str, identity: str | None = None) -> node_pb2_grpc.QueryServiceStub:
        """QueryService of `city`, by default as the broker (its certificate)."""
        address = self.fed.cities[city].address
        return node_pb2_grpc.QueryServiceStub(self.channel(address, identity or self.fed.broker_id))

    def node_consent(self, city: str, identity: str) -> node_pb2_grpc.ConsentServiceStub:
        return node_pb2_grpc.ConsentServiceStub(
            self.channel(self.fed.cities[city].address, identity)
        )

    def token(
        self,
        audience: str | None = None,
        issuer: str | None = None,
        grant: tokens.Grant | None = None,
        **claims: Any,
    ) -> str:
        """A partner token signed with the partner's real key, authorising `grant` (by default a
        query of `by_mode()`); claims may be overridden."""
        now = int(time.time())
        body: dict[str, Any] = {
            "iss": issuer or self.fed.partner_id,
            "sub": issuer or self.fed.partner_id,
            "aud": audience or self.fed.broker_id,
            "iat": now,
            "exp": now + 60,
            "jti": f"test-{time.monotonic_ns()}",
            **(grant or grant_for(Call.QUERY, by_mode())).claims(),
        }
        body.update(claims)
        signer = self.fed.partner_signer
        return jwt.encode(
            body, signer.crypto_key(), algorithm=tokens.ALGORITHM, headers={"kid": signer.keyid}
        )

    def bearer(
        self, token: str | None = None, grant: tokens.Grant | None = None
    ) -> list[tuple[str, str]]:
        """`authorization` metadata: `token`, or a fresh one authorising `grant` (see `token`)."""
        return [("authorization", f"Bearer {token or self.token(grant=grant)}")]

    def bearer_describe(self) -> list[tuple[str, str]]:
        """Metadata with a token for a DescribeFederation call."""
        return self.bearer(grant=grant_for(Call.DESCRIBE))

    def bearer_for(self, query: Any) -> list[tuple[str, str]]:
        """Metadata with a token for a Query call of `query` (a domain Query or a Query message;
        one that does not convert gets a token for `by_mode()`, as its refusal comes first)."""
        if not isinstance(query, Query):
            try:
                query = query_from_pb(query)
            except CitybrokerError:
                query = by_mode()
        return self.bearer(grant=grant_for(Call.QUERY, query))

    def query(
        self, query: Query | None = None, token: str | None = None, timeout: float = 15.0
    ) -> broker_pb2.QueryResponse:
        query = query or by_mode()
        request = broker_pb2.QueryRequest(query=query_to_pb(query))
        response: broker_pb2.QueryResponse = self.broker().Query(
            request,
            metadata=self.bearer(token, grant_for(Call.QUERY, query)),
            timeout=timeout,
        )
        return response

    def close(self) -> None:
        for ch in self._channels:
            ch.close()


def by_mode(**overrides: Any) -> Query:
    """The reference question: trips by mode across every city, for the agreed purpose."""
    fields: dict[str, Any] = {
        "dataset": "mobility",
        "purpose": PURPOSE,
        "measures": (Measure(MeasureKind.COUNT_RECORDS),),
        "group_by": (Dimension("mode"),),
    }
    fields.update(overrides)
    return Query(**fields)


@pytest.fixture
def wire(federation: RunningFederation) -> Iterator[Wire]:
    w = Wire(federation)
    yield w
    w.close()


@pytest.fixture
def fresh_wire(fresh_federation: RunningFederation) -> Iterator[Wire]:
    w = Wire(fresh_federation)
    yield w
    w.close()


@pytest.fixture(name="by_mode")
def by_mode_fixture() -> Any:
    return by_mode
