"""Fuzzing (Hypothesis): generated requests for every RPC of every service a node and the broker
serve (found through their reflection, so a new RPC is covered without touching this file), with and
without credentials; random bytes as raw request bodies to every method; random bytes to every
parser of untrusted input (tokens, envelopes, checkpoints, bundles, config files, import files).

Nothing may end in INTERNAL or UNKNOWN, the servers must keep serving, and every refusal of a
citybroker service carries an ErrorInfo reason. (Health and reflection are gRPC's own services with
their own conventions, such as NOT_FOUND for an unknown service name: held to no INTERNAL only.)
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import tomli_w
from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from audit import bundle as layout
from audit.note import parse_checkpoint, parse_verifier_key, unverified_body, verify_note
from audit.verifier import verify_bundle
from broker.config import BrokerConfig
from domain.errors import CitybrokerError, RemoteError
from infra.config import load_toml
from keys import dsse, tokens, trust
from node.config import NodeConfig
from node.consent_import.model import ImportFormat
from node.consent_import.reader import open_rows
from tests.conftest import RunningFederation
from tests.integration.conftest import Wire
from tests.security.grpc_surface import Method, call_raw, served_methods

FUZZ = settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
OURS = "/citybroker."
# Names worth guessing: they reach deeper than random text does.
WORDS = [
    "",
    "aurora",
    "borealis",
    "cascadia",
    "mobility",
    "traffic",
    "residents",
    "mode",
    "trip_date",
    "month",
    "district",
    "urban-mobility-planning",
    "northwind",
    "aggregate",
]


@dataclass
class Target:
    server: str
    channel: grpc.Channel
    method: Method
    metadata: list[tuple[str, str]]

    def __repr__(self) -> str:
        return f"{self.server}{self.method.path}"


@pytest.fixture(scope="module")
def targets(federation: RunningFederation) -> Iterator[list[Target]]:
    """Every method of the broker (no token, a garbage token, a valid partner token) and of a
    node (as the broker, as the city's operator, as another city)."""
    wire = Wire(federation)
    fed = federation.fed
    out: list[Target] = []
    broker = wire.channel(fed.broker_address)
    for md in ([], [("authorization", "Bearer x.y.z")], wire.bearer()):
        out += [Target("broker", broker, m, md) for m in served_methods(broker)]
    aurora = fed.cities["aurora"].address
    layout_a = fed.cities["aurora"]
    operator = grpc.secure_channel(
        aurora,
        grpc.ssl_channel_credentials(
            fed.ca_cert.read_bytes(),
            layout_a.operator_key.read_bytes(),
            layout_a.operator_cert.read_bytes(),
        ),
    )
    wire._channels.append(operator)
    for channel in (
        wire.channel(aurora, fed.broker_id),
        operator,
        wire.channel(aurora, "borealis"),
    ):
        out += [Target("aurora", channel, m, []) for m in served_methods(channel)]
    yield out
    _still_serving(wire)
    wire.close()


def _still_serving(wire: Wire) -> None:
    """No dead process: both servers still answer health checks, and the partner still gets an
    answer to the reference query."""
    fed = wire.fed
    for address, who in ((fed.broker_address, None), (fed.cities["aurora"].address, fed.broker_id)):
        reply = health_pb2_grpc.HealthStub(wire.channel(address, who)).Check(
            health_pb2.HealthCheckRequest(), timeout=10
        )
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    assert wire.query().cities


def _acceptable(target: Target, error: RemoteError | None) -> bool:
    if error is None:
        return True
    if error.code in ("INTERNAL", "UNKNOWN"):
        return False
    if error.code == "DEADLINE_EXCEEDED" and target.method.server_streaming:
        return True  # a stream that keeps going (health Watch) until the client's deadline
    return bool(error.reason) or not target.method.path.startswith(OURS)


# ---- messages generated from the descriptors ---------------------------------------------------

_SCALARS: dict[int, st.SearchStrategy[Any]] = {
    FieldDescriptor.TYPE_STRING: st.one_of(st.sampled_from(WORDS), st.text(max_size=12)),
    FieldDescriptor.TYPE_BYTES: st.binary(max_size=64),
    FieldDescriptor.TYPE_BOOL: st.booleans(),
    FieldDescriptor.TYPE_DOUBLE: st.floats(allow_nan=True, allow_infinity=True),
    FieldDescriptor.TYPE_FLOAT: st.floats(width=32),
}
for _t in (FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_SINT32, FieldDescriptor.TYPE_SFIXED32):
    _SCALARS[_t] = st.integers(-(2**31), 2**31 - 1)
for _t in (FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_SINT64, FieldDescriptor.TYPE_SFIXED64):
    _SCALARS[_t] = st.integers(-(2**63), 2**63 - 1)
for _t in (FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_FIXED32):
    _SCALARS[_t] = st.integers(0, 2**32 - 1)
for _t in (FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED64):
    _SCALARS[_t] = st.integers(0, 2**64 - 1)


def _value(draw: st.DrawFn, field: FieldDescriptor, depth: int) -> Any:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return draw(messages(field.message_type, depth + 1))
    if field.type == FieldDescriptor.TYPE_ENUM:
        numbers = [v.number for v in field.enum_type.values]
        return draw(st.sampled_from(numbers))
    return draw(_SCALARS[field.type])


@st.composite
def messages(draw: st.DrawFn, descriptor: Descriptor, depth: int = 0) -> bytes:
    """The serialised bytes of a message of `descriptor` with random fields set (deep messages
    left empty)."""
    msg: Message = message_factory.GetMessageClass(descriptor)()
    if depth > 3:
        return msg.SerializeToString()
    for field in descriptor.fields:
        if not draw(st.booleans()):
            continue
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            key_f, value_f = (
                field.message_type.fields_by_name["key"],
                field.message_type.fields_by_name["value"],
            )
            entries = getattr(msg, field.name)
            for _ in range(draw(st.integers(0, 2))):
                key = _value(draw, key_f, depth)
                if value_f.type == FieldDescriptor.TYPE_MESSAGE:
                    entries[key].MergeFromString(_value(draw, value_f, depth))
                else:
                    entries[key] = _value(draw, value_f, depth)
        elif field.is_repeated:
            values = [_value(draw, field, depth) for _ in range(draw(st.integers(0, 3)))]
            target = getattr(msg, field.name)
            for v in values:
                if field.type == FieldDescriptor.TYPE_MESSAGE:
                    target.add().MergeFromString(v)
                else:
                    target.append(v)
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            getattr(msg, field.name).MergeFromString(_value(draw, field, depth))
        else:
            setattr(msg, field.name, _value(draw, field, depth))
    return msg.SerializeToString()


@FUZZ
@given(st.data())
def test_generated_requests_to_every_method(targets: list[Target], data: st.DataObject) -> None:
    for t in targets:
        body = data.draw(messages(t.method.request_type.DESCRIPTOR), label=t.method.path)
        error = call_raw(t.channel, t.method, body, t.metadata, timeout=2)
        assert _acceptable(t, error), (t.server, t.method.path, t.metadata, error)


@FUZZ
@given(st.data())
def test_random_bytes_to_every_method(targets: list[Target], data: st.DataObject) -> None:
    for t in targets:
        body = data.draw(st.binary(max_size=200), label=t.method.path)
        error = call_raw(t.channel, t.method, body, t.metadata, timeout=2)
        assert _acceptable(t, error), (t.server, t.method.path, t.metadata, error)


# ---- parsers of untrusted input, in process --------------------------------------------------

PARSE = settings(max_examples=150, deadline=None)
TEXT = st.one_of(
    st.text(max_size=300),
    st.binary(max_size=300).map(lambda b: b.decode("latin-1")),
    st.builds(lambda n: "[" * n + "]" * n, st.integers(0, 5000)),
)


def _only_citybroker_errors(fn: Any, *args: Any) -> None:
    try:
        result = fn(*args)
        if isinstance(result, Iterator):
            list(result)
    except CitybrokerError as e:
        assert e.reason, e


@PARSE
@given(TEXT)
def test_tokens(federation: RunningFederation, text: str) -> None:
    bundle = trust.verify_bundle(
        dsse.Envelope.from_json(federation.fed.trust_bundle.read_bytes()),
        trust.load_authority_key(federation.fed.authority_key),
    )
    _only_citybroker_errors(tokens.verify, text, bundle, federation.fed.broker_id)


@PARSE
@given(st.one_of(TEXT, st.binary(max_size=300)))
def test_envelopes(text: str | bytes) -> None:
    _only_citybroker_errors(dsse.Envelope.from_json, text)


@PARSE
@given(TEXT)
def test_checkpoints_and_notes(text: str) -> None:
    _only_citybroker_errors(parse_checkpoint, text)
    _only_citybroker_errors(unverified_body, text)
    _only_citybroker_errors(parse_verifier_key, text)
    _only_citybroker_errors(verify_note, text, [])


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@PARSE
@given(
    st.sampled_from([layout.MANIFEST, layout.ENTRIES, layout.CHECKPOINTS, layout.COSIGNATURES]),
    st.one_of(st.binary(max_size=400), TEXT.map(str.encode)),
)
def test_bundles(federation: RunningFederation, name: str, junk: bytes) -> None:
    """A bundle of the city's real trust bundle and a valid manifest, one file replaced by junk."""
    fed = federation.fed
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        manifest = {
            "format": layout.FORMAT,
            "origin": "citybroker/node/aurora",
            "party": "aurora",
            "role": "node",
            "size": 1,
        }
        _write(root / layout.MANIFEST, layout.line(manifest))
        _write(root / layout.TRUST_DIR / "v1.json", fed.trust_bundle.read_bytes())
        for f in (layout.ENTRIES, layout.CHECKPOINTS, layout.COSIGNATURES):
            _write(root / f, b"")
        _write(root / name, junk)
        authority = trust.load_authority_key(fed.authority_key)
        _only_citybroker_errors(lambda: verify_bundle(root, authority, workers=1))


@PARSE
@given(
    st.one_of(st.binary(max_size=300), TEXT.map(str.encode)), st.sampled_from(["node", "broker"])
)
def test_config_files(junk: bytes, kind: str) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = _write(Path(d) / "c.toml", junk)
        _only_citybroker_errors(load_toml, path)
        _only_citybroker_errors(NodeConfig.load if kind == "node" else BrokerConfig.load, path)


TOML_VALUES = st.recursive(
    st.one_of(st.sampled_from(WORDS), st.integers(-5, 10**6), st.booleans(), st.floats(-1, 1)),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(WORDS[1:]), inner, max_size=3)
    ),
    max_leaves=8,
)
CONFIG_KEYS = [
    "city",
    "broker",
    "listen",
    "database",
    "data",
    "signing_key",
    "tls",
    "trust",
    "datasets",
    "operators",
    "k_floor",
    "transfers",
    "limits",
    "duckdb",
    "cities",
]


@PARSE
@given(
    st.dictionaries(st.sampled_from(CONFIG_KEYS), TOML_VALUES, max_size=8),
    st.sampled_from(["node", "broker"]),
)
def test_config_tables(table: dict[str, Any], kind: str) -> None:
    """Well-formed TOML with ill-typed or missing values."""
    with tempfile.TemporaryDirectory() as d:
        path = _write(Path(d) / "c.toml", tomli_w.dumps(table).encode())
        _only_citybroker_errors(NodeConfig.load if kind == "node" else BrokerConfig.load, path)


@PARSE
@given(
    st.one_of(st.binary(max_size=400), TEXT.map(str.encode)), st.sampled_from(list(ImportFormat))
)
def test_consent_import_files(junk: bytes, fmt: ImportFormat) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = _write(Path(d) / f"in.{fmt.value}", junk)

        def read() -> list[Any]:
            with open_rows(path, fmt) as rows:
                return list(rows)

        _only_citybroker_errors(read)
