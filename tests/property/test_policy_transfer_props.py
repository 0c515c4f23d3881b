"""policy.decide with random transfer rules, jurisdictions and legal instruments never permits a
transfer the rules forbid, and permits whenever a covering agreement may be used."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from domain.agreement import Agreement, Appearance, FieldTerms
from domain.errors import PermissionDenied
from domain.query import Dimension, Measure, MeasureKind, Query
from infra.config import Section
from keys import timefmt
from node import policy
from node.catalogue import Catalogue
from node.transfers import TransferRules

NOW = timefmt.now()
CITY, PARTNER = "aurora", "northwind-mobility"
CATALOGUE = Catalogue.from_config(
    Section(
        {
            "mobility": {
                "table": "trips",
                "resident_column": "resident_id",
                "data_category": "mobility",
                "fields": {"mode": {"type": "string"}, "district": {"type": "string"}},
            }
        },
        Path("node.toml"),
    )
)
QUERY = Query(
    "mobility",
    "urban-mobility-planning",
    (Measure(MeasureKind.COUNT_RECORDS),),
    group_by=(Dimension("mode"),),
).validate()

RULE_KEYS = ["EU", "EU-DE", "EU-DE-BY", "EU-FI", "US", "US-CA", "UK", "*"]
RULES = ["allowed", "forbidden", "instrument:scc-2021", "instrument:bcr"]
INSTRUMENTS = ["scc-2021", "bcr", "adequacy"]
DESTINATIONS = [
    "",
    "EU",
    "EU-DE",
    "EU-DE-BY",
    "EU-DE-BE",
    "EU-FI",
    "EU-SE",
    "EUROPA",
    "EU-DEX",
    "US",
    "US-CA",
    "UK",
    "CH",
]
HOMES = ["EU-FI", "EU-DE", "US-CA", "CH"]


# ---- the model -----------------------------------------------------------------------------------


def model_rule(rules: dict[str, str], home: str, destination: str) -> str:
    """The rule of the longest key that is the destination or a dash-separated prefix of it; else
    "*"; else only the home jurisdiction."""
    matching = [
        k for k in rules if k != "*" and (destination == k or destination.startswith(k + "-"))
    ]
    if matching:
        return rules[max(matching, key=len)]
    if "*" in rules:
        return rules["*"]
    return "allowed" if destination == home else "forbidden"


def transfer_ok(rule: str, a: Agreement) -> bool:
    if rule == "allowed":
        return True
    if rule.startswith("instrument:"):
        return rule.removeprefix("instrument:") in a.legal_instruments
    return False


def covers(a: Agreement) -> bool:
    return QUERY.purpose in a.purposes and "mode" in a.datasets.get("mobility", {})


# ---- generators ----------------------------------------------------------------------------------


@st.composite
def worlds(draw: st.DrawFn) -> list[Agreement]:
    ids = draw(st.lists(st.sampled_from("abcd"), unique=True, min_size=1, max_size=3))
    out = []
    for agreement_id in ids:
        purposes = draw(
            st.sets(st.sampled_from(["urban-mobility-planning", "scientific-research"]), min_size=1)
        )
        fields = draw(st.sets(st.sampled_from(["mode", "district"])))
        out.append(
            Agreement(
                agreement_id=agreement_id,
                version=1,
                provider=CITY,
                consumer=PARTNER,
                purposes=frozenset(purposes),
                datasets={"mobility": {f: FieldTerms(Appearance.RAW) for f in fields}},
                min_cell_size=5,
                valid_from=NOW - timedelta(days=1),
                valid_until=NOW + timedelta(days=1),
                retention_days=0,
                legal_instruments=frozenset(draw(st.sets(st.sampled_from(INSTRUMENTS)))),
            )
        )
    return out


rule_tables = st.dictionaries(st.sampled_from(RULE_KEYS), st.sampled_from(RULES), max_size=5)


# ---- the properties ------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(
    rule_tables,
    st.sampled_from(HOMES),
    st.sampled_from(DESTINATIONS),
    worlds(),
)
def test_decide_never_permits_a_forbidden_transfer(
    rules: dict[str, str], home: str, destination: str, world: list[Agreement]
) -> None:
    transfers = TransferRules(home, rules)
    rule = model_rule(rules, home, destination)
    assert transfers.rule_for(destination) == rule
    usable = sorted(
        (a for a in world if covers(a) and transfer_ok(rule, a)), key=lambda a: a.agreement_id
    )
    try:
        permit = policy.decide(
            QUERY, PARTNER, world, NOW, policy.Provider(CITY, CATALOGUE, transfers), destination
        )
    except PermissionDenied as e:
        assert not usable, f"refused ({e.reason}) though {usable[0].agreement_id} may be used"
        if all(covers(a) for a in world):
            assert e.reason == "TRANSFER_NOT_PERMITTED"
            assert e.metadata["destination"] == destination
        return
    chosen = permit.agreement
    assert covers(chosen)
    assert transfer_ok(rule, chosen), f"{rule} forbids sending to {destination!r} under {chosen}"
    assert chosen == usable[0]


@settings(max_examples=200, deadline=None)
@given(rule_tables, st.sampled_from(HOMES), st.sampled_from(DESTINATIONS), worlds())
def test_a_forbidding_rule_refuses_whatever_the_agreements_say(
    rules: dict[str, str], home: str, destination: str, world: list[Agreement]
) -> None:
    """The same world with the destination's rule set to forbidden: nothing is ever permitted."""
    transfers = TransferRules(home, {**rules, destination or "*": "forbidden"})
    if destination == "":
        transfers = TransferRules(home, {k: "forbidden" for k in [*rules, "*"]})
    try:
        policy.decide(
            QUERY, PARTNER, world, NOW, policy.Provider(CITY, CATALOGUE, transfers), destination
        )
    except PermissionDenied:
        return
    raise AssertionError(f"permitted a transfer to {destination!r} under {transfers.rules}")


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(HOMES), st.sampled_from(DESTINATIONS), worlds())
def test_without_rules_only_home_receives(
    home: str, destination: str, world: list[Agreement]
) -> None:
    transfers = TransferRules(home)
    try:
        policy.decide(
            QUERY, PARTNER, world, NOW, policy.Provider(CITY, CATALOGUE, transfers), destination
        )
    except PermissionDenied:
        assert destination != home or not any(covers(a) for a in world)
        return
    assert destination == home
