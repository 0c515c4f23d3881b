"""A city's witness cosigns a broker's checkpoint only if the broker signed it and it extends, by a
valid consistency proof, the last checkpoint the witness cosigned; forks and rollbacks are refused."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, select

from audit.cosign import verify_cosignature, witness_name
from audit.log import MerkleLog
from audit.merkle import ProofError
from audit.note import NoteError, checkpoint_body, parse_checkpoint, sign_note, unverified_body
from audit.schema import witnessed_logs
from audit.witness import Witness, broker_origin
from cli import sandbox
from domain.errors import CitybrokerError, FailedPrecondition, PermissionDenied
from infra import storage
from keys import dsse
from keys.ed25519 import Signer
from keys.trust import TrustStore

CITY = "aurora"


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> sandbox.LocalFederation:
    return sandbox.create(tmp_path_factory.mktemp("witness-fed"))


@pytest.fixture
def trust(fed: sandbox.LocalFederation) -> TrustStore:
    store = TrustStore(fed.authority.public)
    store.install(dsse.Envelope.from_json(fed.trust_bundle.read_bytes()))
    return store


def _engine(path: Path) -> Engine:
    engine = storage.create_engine(f"sqlite:///{path}")
    storage.upgrade(engine)
    return engine


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = _engine(tmp_path / "witness.db")
    yield engine
    engine.dispose()


@pytest.fixture
def city_log(engine: Engine, fed: sandbox.LocalFederation) -> Iterator[MerkleLog]:
    log = MerkleLog(engine, f"citybroker/node/{CITY}", fed.cities[CITY].signer)
    yield log
    log.close()


@pytest.fixture
def witness(
    engine: Engine, fed: sandbox.LocalFederation, trust: TrustStore, city_log: MerkleLog
) -> Witness:
    return Witness(engine, CITY, fed.cities[CITY].signer, trust, city_log)


def _log(path: Path, fed: sandbox.LocalFederation) -> Iterator[MerkleLog]:
    engine = _engine(path)
    log = MerkleLog(engine, broker_origin(fed.broker_id), fed.broker_signer)
    yield log
    log.close()
    engine.dispose()


@pytest.fixture
def log(tmp_path: Path, fed: sandbox.LocalFederation) -> Iterator[MerkleLog]:
    yield from _log(tmp_path / "broker.db", fed)


@pytest.fixture
def other_log(tmp_path: Path, fed: sandbox.LocalFederation) -> Iterator[MerkleLog]:
    """A second log with the broker's origin and key: what a forking broker would keep."""
    yield from _log(tmp_path / "broker-fork.db", fed)


def _grow(log: MerkleLog, n: int, tag: str = "entry") -> None:
    start = log.size()
    log.append_many([f"{tag} {i}".encode() for i in range(start, start + n)], "exchange")


def _known(engine: Engine, fed: sandbox.LocalFederation) -> tuple[int, bytes] | None:
    with engine.connect() as conn:
        row = conn.execute(
            select(witnessed_logs.c.tree_size, witnessed_logs.c.root).where(
                witnessed_logs.c.origin == broker_origin(fed.broker_id)
            )
        ).first()
    return None if row is None else (int(row[0]), bytes(row[1]))


def _body(note: str) -> str:
    return unverified_body(note)


def _check_cosigned(line: str, note: str, fed: sandbox.LocalFederation) -> None:
    verify_cosignature(line, _body(note), witness_name(CITY), fed.cities[CITY].signer.public)


def _first(witness: Witness, log: MerkleLog, fed: sandbox.LocalFederation, size: int = 3) -> str:
    _grow(log, size)
    note = log.checkpoint()
    _check_cosigned(witness.add_checkpoint(fed.broker_id, 0, [], note), note, fed)
    return note


def test_accepts_the_first_checkpoint_and_remembers_it(
    witness: Witness, log: MerkleLog, fed: sandbox.LocalFederation, engine: Engine
) -> None:
    assert _known(engine, fed) is None
    _first(witness, log, fed)
    assert _known(engine, fed) == (3, log.root())


def test_accepts_an_extension_with_a_valid_consistency_proof(
    witness: Witness, log: MerkleLog, fed: sandbox.LocalFederation, engine: Engine
) -> None:
    _first(witness, log, fed)
    for grow in (5, 1, 8):
        old = log.size()
        _grow(log, grow)
        note = log.checkpoint()
        proof = log.consistency_proof(old, log.size())
        _check_cosigned(witness.add_checkpoint(fed.broker_id, old, proof, note), note, fed)
        assert _known(engine, fed) == (log.size(), log.root())
    # The same checkpoint again (a retry) is cosigned again, with no proof needed.
    note = log.checkpoint()
    _check_cosigned(witness.add_checkpoint(fed.broker_id, log.size(), [], note), note, fed)


def test_a_new_witness_on_the_same_store_remembers(
    witness: Witness,
    log: MerkleLog,
    fed: sandbox.LocalFederation,
    engine: Engine,
    trust: TrustStore,
    city_log: MerkleLog,
) -> None:
    _first(witness, log, fed)
    again = Witness(engine, CITY, fed.cities[CITY].signer, trust, city_log)
    _grow(log, 2)
    with pytest.raises(FailedPrecondition) as info:
        again.add_checkpoint(fed.broker_id, 0, [], log.checkpoint())
    assert info.value.metadata == {"known_size": "3"}


@pytest.mark.parametrize("claimed", [0, 2, 4, 5])
def test_a_wrong_old_size_is_refused_with_the_known_size(
    witness: Witness, log: MerkleLog, fed: sandbox.LocalFederation, engine: Engine, claimed: int
) -> None:
    _first(witness, log, fed)
    _grow(log, 2)
    proof = log.consistency_proof(claimed, 5) if claimed else []
    with pytest.raises(FailedPrecondition) as info:
        witness.add_checkpoint(fed.broker_id, claimed, proof, log.checkpoint())
    e = info.value
    assert e.reason == "WITNESS_OLD_SIZE_MISMATCH"
    assert e.metadata == {"known_size": "3"}
    assert _known(engine, fed) == (3, log.root(3))


def _flip(proof: list[bytes], i: int) -> list[bytes]:
    changed = list(proof)
    changed[i] = bytes([changed[i][0] ^ 1]) + changed[i][1:]
    return changed


def test_a_bad_proof_is_refused_and_changes_nothing(
    witness: Witness, log: MerkleLog, fed: sandbox.LocalFederation, engine: Engine
) -> None:
    _first(witness, log, fed)
    _grow(log, 6)
    note = log.checkpoint()
    proof = log.consistency_proof(3, 9)
    bad_proofs = [
        *(_flip(proof, i) for i in range(len(proof))),
        proof[:-1],
        [*proof, proof[0]],
        [],
        log.consistency_proof(2, 9),
        log.consistency_proof(4, 9),
    ]
    for bad in bad_proofs:
        with pytest.raises(ProofError):
            witness.add_checkpoint(fed.broker_id, 3, bad, note)
        assert _known(engine, fed) == (3, log.root(3))
    _check_cosigned(witness.add_checkpoint(fed.broker_id, 3, proof, note), note, fed)


def test_a_different_tree_of_the_same_size_is_a_fork(
    witness: Witness, log: MerkleLog, fed: sandbox.LocalFederation, engine: Engine
) -> None:
    _first(witness, log, fed)
    other = hashlib.sha256(b"another history").digest()
    origin = broker_origin(fed.broker_id)
    forged = sign_note(checkpoint_body(origin, 3, other), origin, fed.broker_signer)
    with pytest.raises(PermissionDenied) as info:
        witness.add_checkpoint(fed.broker_id, 3, [], forged)
    assert info.value.reason == "LOG_FORK"
    assert _known(engine, fed) == (3, log.root())


def test_a_larger_tree_that_does_not_extend_the_known_one_is_refused(
    witness: Witness,
    log: MerkleLog,
    other_log: MerkleLog,
    fed: sandbox.LocalFederation,
    engine: Engine,
) -> None:
    """The broker keeps a second history (same origin, same key): its own proofs cannot link it to
    the checkpoint this witness already cosigned."""
    _first(witness, log, fed)
    _grow(other_log, 2)
    _grow(other_log, 7, tag="divergent")
    assert other_log.root(2) == log.root(2) and other_log.root(3) != log.root(3)
    with pytest.raises(ProofError):
        witness.add_checkpoint(
            fed.broker_id, 3, other_log.consistency_proof(3, 9), other_log.checkpoint()
        )
    assert _known(engine, fed) == (3, log.root())


def test_an_older_checkpoint_is_stale(
    witness: Witness, log: MerkleLog, fed: sandbox.LocalFederation
) -> None:
    old_note = _first(witness, log, fed)
    _grow(log, 4)
    witness.add_checkpoint(fed.broker_id, 3, log.consistency_proof(3, 7), log.checkpoint())
    with pytest.raises(FailedPrecondition) as info:
        witness.add_checkpoint(fed.broker_id, 7, [], old_note)
    assert info.value.reason == "CHECKPOINT_STALE"
    assert info.value.metadata == {"known_size": "7"}


def test_the_first_checkpoint_needs_no_proof(
    witness: Witness, log: MerkleLog, fed: sandbox.LocalFederation, engine: Engine
) -> None:
    _grow(log, 4)
    with pytest.raises(FailedPrecondition) as info:
        witness.add_checkpoint(fed.broker_id, 0, [hashlib.sha256(b"x").digest()], log.checkpoint())
    assert info.value.reason == "PROOF_INVALID"
    assert _known(engine, fed) is None


@pytest.mark.parametrize("who", ["city-key", "stranger-key", "wrong-key-name"])
def test_a_checkpoint_not_signed_by_the_broker_is_refused(
    witness: Witness, log: MerkleLog, fed: sandbox.LocalFederation, engine: Engine, who: str
) -> None:
    _grow(log, 3)
    origin = broker_origin(fed.broker_id)
    body = _body(log.checkpoint())
    note = {
        "city-key": lambda: sign_note(body, origin, fed.cities["borealis"].signer),
        "stranger-key": lambda: sign_note(body, origin, Signer.generate()),
        "wrong-key-name": lambda: sign_note(body, "citybroker/broker/other", fed.broker_signer),
    }[who]()
    with pytest.raises(NoteError):
        witness.add_checkpoint(fed.broker_id, 0, [], note)
    assert _known(engine, fed) is None


def test_a_checkpoint_from_a_party_that_is_not_a_broker_is_refused(
    witness: Witness, log: MerkleLog, fed: sandbox.LocalFederation
) -> None:
    _grow(log, 3)
    for party in ("borealis", fed.partner_id, "nobody"):
        with pytest.raises(PermissionDenied) as info:
            witness.add_checkpoint(party, 0, [], log.checkpoint())
        assert info.value.reason == "SIGNER_UNKNOWN"


def test_a_broker_checkpoint_for_another_origin_is_refused(
    witness: Witness, log: MerkleLog, fed: sandbox.LocalFederation, engine: Engine
) -> None:
    _grow(log, 3)
    origin = broker_origin(fed.broker_id)
    _, size, root = parse_checkpoint(_body(log.checkpoint()))
    note = sign_note(
        checkpoint_body("citybroker/node/aurora", size, root), origin, fed.broker_signer
    )
    with pytest.raises(PermissionDenied) as info:
        witness.add_checkpoint(fed.broker_id, 0, [], note)
    assert info.value.reason == "CHECKPOINT_ORIGIN_MISMATCH"
    assert _known(engine, fed) is None


def test_refusals_are_citybroker_errors(
    witness: Witness, log: MerkleLog, fed: sandbox.LocalFederation
) -> None:
    """Each refusal reaches the gRPC edge as a rich status, never an INTERNAL error."""
    _grow(log, 3)
    for note in ("", "not a note", log.checkpoint().replace("\n\n", "\n")):
        with pytest.raises(CitybrokerError):
            witness.add_checkpoint(fed.broker_id, 0, [], note)


def test_each_cosignature_is_logged_in_the_citys_own_log(
    witness: Witness, log: MerkleLog, fed: sandbox.LocalFederation, city_log: MerkleLog
) -> None:
    _first(witness, log, fed)
    old = log.size()
    _grow(log, 2)
    line = witness.add_checkpoint(
        fed.broker_id, old, log.consistency_proof(old, log.size()), log.checkpoint()
    )
    assert city_log.size() == 2
    entries = city_log.records(1, 2)
    envelope = dsse.Envelope.from_json(entries[0].entry)
    assert entries[0].kind == "witness"
    assert envelope.payload_type == dsse.media_type("cosignature")
    statement = json.loads(envelope.payload)
    assert (statement["city"], statement["broker"], statement["tree_size"]) == (
        CITY,
        fed.broker_id,
        log.size(),
    )
    assert statement["cosignature"] == line
    assert base64.b64decode(statement["root"]) == log.root()


def test_a_refused_checkpoint_logs_nothing(
    witness: Witness, log: MerkleLog, fed: sandbox.LocalFederation, city_log: MerkleLog
) -> None:
    _first(witness, log, fed)
    _grow(log, 2)
    with pytest.raises(FailedPrecondition):
        witness.add_checkpoint(fed.broker_id, 0, [], log.checkpoint())
    assert city_log.size() == 1
