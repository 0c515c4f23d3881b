"""The verifier reading a broker's records of city checkpoints (audit.city_checkpoint) in a bundle: a
record must be the broker's own, carry a note the city signed, and state that note's size and root;
only then does it count for audit.coverage."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine

from audit import bundle as layout
from audit import city_checkpoint
from audit.log import MerkleLog
from audit.note import checkpoint_body, sign_note
from audit.schema import metadata
from audit.verifier import BundleError, verify_bundle
from cli import sandbox
from domain.kinds import LogKind
from keys import dsse
from keys.trust import load_authority_key

CITY = "aurora"


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> sandbox.LocalFederation:
    return sandbox.create(tmp_path_factory.mktemp("federation"))


@pytest.fixture
def city_note(fed: sandbox.LocalFederation, tmp_path: Path) -> Iterator[str]:
    """A checkpoint note of aurora's log, as aurora signed it."""
    engine = create_engine(f"sqlite:///{tmp_path / 'aurora.db'}")
    metadata.create_all(engine)
    with MerkleLog(engine, city_checkpoint.node_origin(CITY), fed.cities[CITY].signer) as log:
        log.append_many([b"a consent event", b"another"], LogKind.CONSENT)
        yield log.checkpoint()
    engine.dispose()


def _bundle(
    fed: sandbox.LocalFederation, tmp_path: Path, entries: list[bytes], party: str, role: str
) -> Path:
    """A bundle of a log holding `entries` (kind witness), signed by `party`'s key."""
    engine: Engine = create_engine(f"sqlite:///{tmp_path / f'{party}-bundled.db'}")
    metadata.create_all(engine)
    origin = f"citybroker/{role}/{party}"
    signer = fed.broker_signer if role == "broker" else fed.cities[party].signer
    with MerkleLog(engine, origin, signer) as log:
        log.append_many(entries, LogKind.WITNESS)
    out = tmp_path / f"{party}.bundle"
    spec = layout.ExportSpec(origin, party, role, [fed.trust_bundle.read_bytes()])
    layout.export(engine, out, spec)
    engine.dispose()
    return out


def _record(fed: sandbox.LocalFederation, note: str, **changes: Any) -> bytes:
    seen = city_checkpoint.verified_checkpoint(CITY, note, [fed.cities[CITY].signer.public])
    env = city_checkpoint.record(fed.broker_id, seen, 0, fed.broker_signer)
    if not changes:
        return env.to_json()
    claims = {**json.loads(env.payload), **changes}
    return dsse.sign(city_checkpoint.THING, claims, fed.broker_signer).to_json()


def _fails(bundle: Path, fed: sandbox.LocalFederation) -> BundleError:
    with pytest.raises(BundleError) as info:
        verify_bundle(bundle, load_authority_key(fed.authority_key))
    return info.value


def test_a_record_of_a_note_the_city_signed_counts(
    fed: sandbox.LocalFederation, city_note: str, tmp_path: Path
) -> None:
    bundle = _bundle(fed, tmp_path, [_record(fed, city_note)], fed.broker_id, "broker")
    summary = verify_bundle(bundle, load_authority_key(fed.authority_key))
    found = summary.ledger.largest_recorded(city_checkpoint.node_origin(CITY))
    assert found is not None and found[1:] == (2, 0)


def test_a_record_of_a_note_the_city_did_not_sign_is_refused(
    fed: sandbox.LocalFederation, city_note: str, tmp_path: Path
) -> None:
    """A broker cannot make a city look truncated with a checkpoint the city never signed."""
    origin = city_checkpoint.node_origin(CITY)
    forged = sign_note(checkpoint_body(origin, 99, b"\x01" * 32), origin, fed.broker_signer)
    root = base64.b64encode(b"\x01" * 32).decode()
    claims = {"checkpoint": forged, "tree_size": 99, "root": root}
    bundle = _bundle(fed, tmp_path, [_record(fed, city_note, **claims)], fed.broker_id, "broker")
    e = _fails(bundle, fed)
    assert (e.reason, e.file, e.entry) == ("CHECKPOINT_INVALID", bundle / layout.ENTRIES, 0)
    assert f"that {CITY} did not sign" in e.message


def test_a_record_misstating_the_note_is_refused(
    fed: sandbox.LocalFederation, city_note: str, tmp_path: Path
) -> None:
    bundle = _bundle(fed, tmp_path, [_record(fed, city_note, tree_size=7)], fed.broker_id, "broker")
    assert _fails(bundle, fed).reason == "RECORD_MISMATCH"


def test_a_record_in_a_city_s_log_is_misplaced(
    fed: sandbox.LocalFederation, city_note: str, tmp_path: Path
) -> None:
    bundle = _bundle(fed, tmp_path, [_record(fed, city_note)], CITY, "node")
    assert _fails(bundle, fed).reason == "STATEMENT_MISPLACED"


def test_a_record_without_its_note_is_malformed(
    fed: sandbox.LocalFederation, city_note: str, tmp_path: Path
) -> None:
    bundle = _bundle(
        fed, tmp_path, [_record(fed, city_note, checkpoint=7)], fed.broker_id, "broker"
    )
    assert _fails(bundle, fed).reason == "PAYLOAD_MALFORMED"
