"""The node's agreement register: activation checks, versions, and AIP-158 paging."""

from __future__ import annotations

import base64
import dataclasses
from pathlib import Path

import pytest

from cli import sandbox
from domain import agreement as doc
from domain.agreement import Agreement
from domain.errors import AlreadyExists, InvalidArgument, PermissionDenied, VerificationError
from infra import storage
from keys import timefmt
from keys.trust import TrustStore
from node.agreements import ACTIVE, SUPERSEDED, AgreementRegister

CITY = "aurora"


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> sandbox.LocalFederation:
    return sandbox.create(tmp_path_factory.mktemp("fed"))


@pytest.fixture
def register(fed: sandbox.LocalFederation, tmp_path: Path) -> AgreementRegister:
    engine = storage.create_engine(f"sqlite:///{tmp_path / 'node.db'}")
    storage.upgrade(engine)
    return AgreementRegister(engine, CITY, TrustStore(fed.authority.public, [fed.bundle]))


def activate(fed: sandbox.LocalFederation, register: AgreementRegister, a: Agreement) -> Agreement:
    """Sign `a` as its provider city and the partner, then activate it."""
    return register.activate(doc.sign(a, fed.cities[a.provider].signer, fed.partner_signer))


def named(fed: sandbox.LocalFederation, agreement_id: str, version: int = 1) -> Agreement:
    return dataclasses.replace(fed.agreement(CITY, version=version), agreement_id=agreement_id)


def listed(register: AgreementRegister, page_size: int) -> tuple[list[tuple[str, int]], int]:
    """Walk every page; return the (id, version) pairs in order and the number of pages."""
    seen, token, pages = [], "", 0
    while True:
        items, token = register.page(page_size, token)
        pages += 1
        seen += [(s.verified.agreement_id, s.verified.version) for s in items]
        if not token:
            return seen, pages


def test_activate_and_read_back(fed: sandbox.LocalFederation, register: AgreementRegister) -> None:
    a = fed.agreement(CITY)
    assert activate(fed, register, a) == a
    [stored] = register.in_force_for(fed.partner_id, timefmt.now())
    assert stored.verified == a and stored.status == ACTIVE
    assert doc.verify(stored.envelope, fed.bundle) == a  # the exact signed bytes were kept
    assert register.get(a.agreement_id).verified == a
    assert register.in_force_for("someone-else", timefmt.now()) == []


def test_agreement_of_another_city_is_refused(
    fed: sandbox.LocalFederation, register: AgreementRegister
) -> None:
    with pytest.raises(PermissionDenied) as e:
        activate(fed, register, fed.agreement("borealis"))
    assert e.value.reason == "AGREEMENT_NOT_FOR_THIS_CITY"


def test_unsigned_by_the_partner_is_refused(
    fed: sandbox.LocalFederation, register: AgreementRegister
) -> None:
    with pytest.raises(VerificationError):
        register.activate(doc.sign(fed.agreement(CITY), fed.cities[CITY].signer))
    assert register.page(10, "") == ([], "")


def test_unknown_purpose_is_refused(
    fed: sandbox.LocalFederation, register: AgreementRegister
) -> None:
    with pytest.raises(InvalidArgument) as e:
        activate(fed, register, fed.agreement(CITY, purposes=("mind-reading",)))
    assert e.value.reason == "PURPOSE_UNKNOWN"


def test_new_version_supersedes_and_old_versions_are_refused(
    fed: sandbox.LocalFederation, register: AgreementRegister
) -> None:
    activate(fed, register, named(fed, "x", 1))
    activate(fed, register, named(fed, "x", 2))
    for version in (1, 2):
        with pytest.raises(AlreadyExists) as e:
            activate(fed, register, named(fed, "x", version))
        assert e.value.reason == "AGREEMENT_VERSION_EXISTS"
    assert [s.verified.version for s in register.in_force_for(fed.partner_id, timefmt.now())] == [2]
    items, _ = register.page(10, "")
    assert [(s.verified.version, s.status) for s in items] == [(1, SUPERSEDED), (2, ACTIVE)]
    assert register.get("x").verified.version == 2


def test_paging_walks_everything_once_in_order(
    fed: sandbox.LocalFederation, register: AgreementRegister
) -> None:
    ids = ["e", "a", "d", "b", "c"]
    for i in ids:
        activate(fed, register, named(fed, i))
    activate(fed, register, named(fed, "b", 2))
    everything = [("a", 1), ("b", 1), ("b", 2), ("c", 1), ("d", 1), ("e", 1)]

    for size, pages in ((1, 6), (2, 3), (4, 2), (6, 1), (100, 1), (0, 1)):
        assert listed(register, size) == (everything, pages), size

    first, token = register.page(2, "")
    assert [s.verified.agreement_id for s in first] == ["a", "b"]
    assert token and "b" not in token.split("\x00")  # opaque, not the raw key


def test_page_token_survives_a_new_agreement(
    fed: sandbox.LocalFederation, register: AgreementRegister
) -> None:
    for i in ("b", "d"):
        activate(fed, register, named(fed, i))
    _, token = register.page(1, "")
    activate(fed, register, named(fed, "a"))  # sorts before the token: not repeated
    activate(fed, register, named(fed, "c"))  # sorts after: seen
    rest, _ = register.page(10, token)
    assert [s.verified.agreement_id for s in rest] == ["c", "d"]


def token_of(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode()


@pytest.mark.parametrize(
    "token",
    [
        "not-base64!",
        "é",
        token_of("foo"),
        token_of("a\x00b"),
        token_of("a\x00"),
        token_of("a\x00\x001"),
        token_of("a\x00" + "9" * 30),  # a version no database integer can hold
    ],
)
def test_bad_page_token(
    fed: sandbox.LocalFederation, register: AgreementRegister, token: str
) -> None:
    activate(fed, register, named(fed, "a"))
    with pytest.raises(InvalidArgument) as e:
        register.page(10, token)
    assert e.value.reason == "PAGE_TOKEN_INVALID"
