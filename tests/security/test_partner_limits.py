"""Per-partner limits through real gRPC servers (mTLS): a partner that floods the broker is refused
what exceeds its rate or concurrency (RESOURCE_EXHAUSTED, RATE_LIMITED, google.rpc.RetryInfo) and
cannot starve another partner; every city applies its own limits from its agreements.

Attack reproduced (issue 13, "No per-partner limits"): one partner sent 200 concurrent queries, all
were accepted, and another partner's light query went from 0.02 s to 17 s.

The federation here has five partners besides the broker's defaults ([limits] in broker.toml):
- `northwind-mobility` (the sandbox partner) floods; its cap is 4 calls at once;
- `second-partner` asks lightly, or steadily within its cap;
- `greedy-partner` has a cap above the broker's shared budget (8 in flight), so only the fair
  share stops it;
- `rate-partner` may ask 3 times a minute;
- `node-limited` is limited by the cities' agreements, not by the broker.
"""

from __future__ import annotations

import dataclasses
import threading
import time
import tomllib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from cli import sandbox
from domain import agreement as agreement_doc
from domain.agreement import PartnerLimits
from domain.errors import CallFailed
from domain.query import Query
from edge.operator_client import consent_record
from edge.partner_client import Answer, PartnerClient
from edge.status import RETRY_AFTER_KEY
from keys import trust
from keys.ed25519 import Signer
from keys.trust import KeyGrant, Role
from tests.conftest import PURPOSE, RunningFederation, start_federation, stop_federation
from tests.integration.conftest import by_mode

FLOODER = "northwind-mobility"
SECOND, GREEDY, RATED, NODE_LIMITED = (
    "second-partner",
    "greedy-partner",
    "rate-partner",
    "node-limited",
)
EXTRA_PARTNERS = (SECOND, GREEDY, RATED, NODE_LIMITED)
FLOODER_CAP = 4
SHARED_BUDGET = 8
BROKER_LIMITS: dict[str, Any] = {
    "queries_per_minute": 100_000,
    "max_concurrent": 6,
    "max_in_flight": SHARED_BUDGET,
    "partners": {
        FLOODER: {"max_concurrent": FLOODER_CAP},
        GREEDY: {"max_concurrent": 50},
        RATED: {"queries_per_minute": 3},
    },
}
# The cities' own terms with `node-limited`: aurora one call at once, borealis two a minute.
NODE_TERMS = {
    "aurora": PartnerLimits(queries_per_minute=1000, max_concurrent=1),
    "borealis": PartnerLimits(queries_per_minute=2, max_concurrent=8),
}
# Loose: the light query is answered well within the cities' timeout, flood or not.
PROMPT_S = 10.0


@dataclasses.dataclass
class Federation:
    rf: RunningFederation
    signers: dict[str, Signer]

    def client(self, partner: str) -> PartnerClient:
        """A partner client (verifying every answer) for `partner`."""
        fed = dataclasses.replace(
            self.rf.fed, partner_id=partner, partner_signer=self.signers[partner]
        )
        return dataclasses.replace(self.rf, fed=fed).partner()


def _with_partners_and_limits(signers: dict[str, Signer]) -> Callable[..., sandbox.LocalFederation]:
    """sandbox.create, then more partners in the signed trust bundle and [limits] in broker.toml."""
    create = sandbox.create

    def wrapped(root: Path, **kwargs: Any) -> sandbox.LocalFederation:
        fed = create(root, **kwargs)
        template = fed.bundle.parties[fed.partner_id]
        parties = dict(fed.bundle.parties)
        for partner in EXTRA_PARTNERS:
            signers[partner] = Signer.generate()
            grant = template.keys[0]
            parties[partner] = dataclasses.replace(
                template,
                id=partner,
                name=partner,
                keys=(KeyGrant(signers[partner].public, grant.not_before, grant.not_after),),
            )
        fed.bundle = dataclasses.replace(fed.bundle, parties=parties)
        fed.trust_bundle.write_bytes(trust.sign_bundle(fed.bundle, fed.authority).to_json())
        config = tomllib.loads(fed.broker_config.read_text())
        sandbox.write_toml(fed.broker_config, {**config, "limits": BROKER_LIMITS})
        return fed

    return wrapped


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    signers: dict[str, Signer] = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sandbox, "create", _with_partners_and_limits(signers))
        rf = start_federation(tmp_path_factory.mktemp("limits"), residents_per_city=80)
    signers[rf.fed.partner_id] = rf.fed.partner_signer
    try:
        for city, layout in rf.fed.cities.items():
            for partner in EXTRA_PARTNERS:
                terms = dataclasses.replace(
                    rf.fed.agreement(city),
                    agreement_id=f"{city}--{partner}",
                    consumer=partner,
                    limits=NODE_TERMS.get(city) if partner == NODE_LIMITED else None,
                )
                signed = agreement_doc.sign(terms, layout.signer, signers[partner])
                rf.operators[city].activate_agreement(signed)
            rf.operators[city].give_consents(
                [
                    consent_record(f"{r.resident_id}-{p}", r.resident_id, PURPOSE, p, "mobility")
                    for r in rf.consenting[city]
                    for p in EXTRA_PARTNERS
                ]
            )
        assert all(
            p.role is Role.PARTNER for p in (rf.fed.bundle.parties[x] for x in EXTRA_PARTNERS)
        )
        yield Federation(rf, signers)
    finally:
        stop_federation(rf)


Outcome = Answer | CallFailed


def _ask(client: PartnerClient, query: Query) -> Outcome:
    try:
        return client.query(query, timeout_s=30)
    except CallFailed as e:
        return e


def _flood(client: PartnerClient, query: Query, n: int, started: threading.Event) -> list[Outcome]:
    """`n` queries at once from `client`; `started` is set once the first has been sent."""
    gate = threading.Barrier(n)

    def one(_: int) -> Outcome:
        gate.wait()
        started.set()
        return _ask(client, query)

    with ThreadPoolExecutor(max_workers=n) as pool:
        return list(pool.map(one, range(n)))


def _assert_rate_limited(refusal: CallFailed) -> float:
    """The refusal is RESOURCE_EXHAUSTED / RATE_LIMITED with a RetryInfo delay; the delay."""
    assert (refusal.error.code, refusal.error.reason) == ("RESOURCE_EXHAUSTED", "RATE_LIMITED")
    delay = float(refusal.error.metadata[RETRY_AFTER_KEY])  # present only with a RetryInfo
    assert delay > 0
    return delay


def _assert_all_cities_answered(answer: Outcome) -> None:
    assert isinstance(answer, Answer), f"refused: {answer}"
    assert [c.status for c in answer.cities] == ["answered"] * len(answer.cities), answer.cities


def test_a_flooding_partner_is_refused_and_another_partner_is_answered_promptly(
    federation: Federation,
) -> None:
    flooder, light = federation.client(FLOODER), federation.client(SECOND)
    started = threading.Event()
    with flooder, light, ThreadPoolExecutor(max_workers=1) as background:
        flood = background.submit(_flood, flooder, by_mode(), 60, started)
        assert started.wait(10)
        t0 = time.monotonic()
        answer = _ask(light, by_mode(cities=("aurora",)))
        light_s = time.monotonic() - t0
        outcomes = flood.result(timeout=60)
    _assert_all_cities_answered(answer)
    assert light_s < PROMPT_S
    refused = [o for o in outcomes if isinstance(o, CallFailed)]
    answered = [o for o in outcomes if isinstance(o, Answer)]
    # What exceeds the flooder's cap is refused at once; what it is allowed is answered in full.
    assert len(refused) >= 10, f"{len(refused)} of 60 refused"
    for r in refused:
        assert _assert_rate_limited(r) <= 60
    assert answered, "the flooder got none of its share"
    for a in answered:
        _assert_all_cities_answered(a)


def test_two_busy_partners_each_get_their_share(federation: Federation) -> None:
    """`greedy-partner` keeps 16 calls going (its own cap is 50, above the broker's budget of 8)
    while `second-partner` keeps 3 going, within its cap and its fair share (8 // 2): the second
    is never refused, the greedy one is refused beyond the budget but still answered."""
    greedy, steady = federation.client(GREEDY), federation.client(SECOND)
    rounds = 3

    def keep_asking(client: PartnerClient, threads: int) -> list[Outcome]:
        def worker(_: int) -> list[Outcome]:
            return [_ask(client, by_mode(cities=("aurora", "borealis"))) for _ in range(rounds)]

        with ThreadPoolExecutor(max_workers=threads) as pool:
            return [o for batch in pool.map(worker, range(threads)) for o in batch]

    with greedy, steady, ThreadPoolExecutor(max_workers=2) as both:
        greedy_future = both.submit(keep_asking, greedy, 16)
        steady_future = both.submit(keep_asking, steady, 3)
        steady_outcomes = steady_future.result(timeout=120)
        greedy_outcomes = greedy_future.result(timeout=120)
    for o in steady_outcomes:
        _assert_all_cities_answered(o)
    greedy_refused = [o for o in greedy_outcomes if isinstance(o, CallFailed)]
    assert greedy_refused, "16 calls at once fit a budget of 8: the fair share was not applied"
    for r in greedy_refused:
        _assert_rate_limited(r)
        assert r.error.metadata.get("limit") == "fair_share"
    assert any(isinstance(o, Answer) for o in greedy_outcomes)


def test_a_partner_over_its_rate_is_refused_with_the_delay_until_it_may_ask(
    federation: Federation,
) -> None:
    with federation.client(RATED) as client:
        for _ in range(3):
            _assert_all_cities_answered(_ask(client, by_mode(cities=("cascadia",))))
        over = _ask(client, by_mode(cities=("cascadia",)))
        assert isinstance(over, CallFailed)
        assert 0 < _assert_rate_limited(over) <= 60
        assert over.error.metadata["limit"] == "queries_per_minute"
        with pytest.raises(CallFailed) as describe:  # every BrokerService call counts
            client.describe_federation()
        _assert_rate_limited(describe.value)
    with federation.client(SECOND) as other:  # the limit is that partner's alone
        _assert_all_cities_answered(_ask(other, by_mode(cities=("cascadia",))))


def test_a_city_applies_its_agreements_concurrency_limit_whatever_the_broker_allows(
    federation: Federation,
) -> None:
    """The broker admits 6 calls of `node-limited` at once; aurora's agreement allows 1."""
    with federation.client(NODE_LIMITED) as client:
        outcomes = _flood(client, by_mode(cities=("aurora",)), 6, threading.Event())
    statuses = []
    for o in outcomes:
        assert isinstance(o, Answer), o  # the broker answers: the city's refusal is in it
        (city,) = o.cities
        statuses.append((city.status, city.code, city.reason))
    assert ("refused", "RESOURCE_EXHAUSTED", "RATE_LIMITED") in statuses, statuses
    assert any(status == "answered" for status, _, _ in statuses), statuses


def test_a_city_applies_its_agreements_rate(federation: Federation) -> None:
    """Borealis agreed to answer `node-limited` twice a minute; the broker would allow more."""
    with federation.client(NODE_LIMITED) as client:
        answers = [_ask(client, by_mode(cities=("borealis",))) for _ in range(3)]
    for a in answers[:2]:
        _assert_all_cities_answered(a)
    last = answers[2]
    assert isinstance(last, Answer)
    (city,) = last.cities
    assert (city.status, city.code, city.reason) == (
        "refused",
        "RESOURCE_EXHAUSTED",
        "RATE_LIMITED",
    )
    assert "queries_per_minute" in city.message
