"""Cross-border transfer rules: matching by jurisdiction prefix, "*", the fail-closed default and
legal instruments."""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from pathlib import Path

import pytest

from domain.agreement import Agreement
from domain.errors import ConfigError, PermissionDenied
from infra.config import Section
from keys import timefmt
from node.transfers import TransferRules


def agreement(*instruments: str) -> Agreement:
    now = timefmt.now()
    return Agreement(
        agreement_id="aurora--northwind-mobility",
        version=1,
        provider="aurora",
        consumer="northwind-mobility",
        purposes=frozenset({"urban-mobility-planning"}),
        datasets={},
        min_cell_size=10,
        valid_from=now,
        valid_until=now + timedelta(days=1),
        retention_days=0,
        legal_instruments=frozenset(instruments),
    )


# ---- matching ------------------------------------------------------------------------------------


def test_exact_match_wins_over_prefix_and_star() -> None:
    r = TransferRules("EU-FI", {"EU-DE": "forbidden", "EU": "allowed", "*": "instrument:scc-2021"})
    assert r.rule_for("EU-DE") == "forbidden"
    assert r.rule_for("EU-SE") == "allowed"
    assert r.rule_for("US-CA") == "instrument:scc-2021"


def test_prefix_matches_whole_segments_only() -> None:
    r = TransferRules("EU-FI", {"EU": "allowed"})
    assert r.rule_for("EU") == "allowed"
    assert r.rule_for("EU-DE") == "allowed"
    assert r.rule_for("EU-DE-BY") == "allowed"
    # "EUROPA" and "EUX-1" are not inside "EU"; with no rule and not home, they are refused.
    assert r.rule_for("EUROPA") == "forbidden"
    assert r.rule_for("EUX-1") == "forbidden"
    assert r.rule_for("XEU") == "forbidden"


def test_the_longest_prefix_wins() -> None:
    r = TransferRules("EU-FI", {"EU": "forbidden", "EU-DE": "allowed", "EU-DE-BY": "forbidden"})
    assert r.rule_for("EU-DE-BE") == "allowed"
    assert r.rule_for("EU-DE-BY") == "forbidden"
    assert r.rule_for("EU-DE-BY-M") == "forbidden"
    assert r.rule_for("EU-FR") == "forbidden"


def test_star_covers_everything_else_even_home() -> None:
    r = TransferRules("EU-FI", {"*": "forbidden"})
    assert r.rule_for("EU-FI") == "forbidden"  # the operator's rule, not the default, applies
    assert r.rule_for("") == "forbidden"


@pytest.mark.parametrize(
    ("destination", "rule"),
    [
        ("EU-FI", "allowed"),
        ("EU-SE", "forbidden"),
        ("EU", "forbidden"),
        ("EU-FI-18", "forbidden"),  # a sub-jurisdiction is not the home jurisdiction itself
        ("", "forbidden"),
        ("eu-fi", "forbidden"),  # codes are case sensitive: an unknown code fails closed
    ],
)
def test_no_rules_fail_closed_except_at_home(destination: str, rule: str) -> None:
    assert TransferRules("EU-FI").rule_for(destination) == rule


def test_matching_is_case_sensitive_and_fails_closed() -> None:
    r = TransferRules("EU-FI", {"EU": "allowed"})
    assert r.rule_for("eu-de") == "forbidden"


# ---- check ---------------------------------------------------------------------------------------


def test_check_allowed_and_forbidden() -> None:
    r = TransferRules("EU-FI", {"EU": "allowed", "US": "forbidden"})
    r.check("EU-DE", agreement())
    r.check("EU-DE", agreement("scc-2021"))
    with pytest.raises(PermissionDenied) as e:
        r.check("US-CA", agreement("scc-2021"))
    assert e.value.reason == "TRANSFER_NOT_PERMITTED"
    assert e.value.metadata == {"destination": "US-CA"}
    assert "US-CA" in e.value.message and "EU-FI" in e.value.message
    with pytest.raises(PermissionDenied) as e:
        r.check("", agreement())
    assert e.value.reason == "TRANSFER_NOT_PERMITTED"
    assert "unknown jurisdiction" in e.value.message


def test_instrument_rules_need_the_agreement_to_name_the_instrument() -> None:
    r = TransferRules("EU-FI", {"*": "instrument:scc-2021"})
    with pytest.raises(PermissionDenied) as e:
        r.check("US-CA", agreement())
    assert e.value.reason == "TRANSFER_NOT_PERMITTED"
    assert e.value.metadata == {"destination": "US-CA", "instrument": "scc-2021"}
    assert "scc-2021" in e.value.message
    with pytest.raises(PermissionDenied):
        r.check("US-CA", agreement("scc-2010", "bcr"))
    with pytest.raises(PermissionDenied):  # the name must match exactly
        r.check("US-CA", agreement("SCC-2021"))
    r.check("US-CA", agreement("bcr", "scc-2021"))


# ---- configuration -------------------------------------------------------------------------------


def section(table: object) -> Section:
    return Section({"transfers": table}, Path("node.toml")).section("transfers")


def test_from_config_reads_every_rule() -> None:
    table = {"EU": "allowed", "US": "forbidden", "*": "instrument:scc-2021"}
    r = TransferRules.from_config("EU-FI", section(table))
    assert r == TransferRules("EU-FI", table)


def test_from_config_with_no_section_fails_closed() -> None:
    top = Section({}, Path("node.toml"))
    r = TransferRules.from_config("EU-FI", top.section("transfers", required=False))
    assert r.rules == {}
    assert r.rule_for("EU-DE") == "forbidden"


@pytest.mark.parametrize("bad", ["allow", "Allowed", "instrument:", "instrument", "", "deny"])
def test_from_config_refuses_unknown_rules(bad: str) -> None:
    with pytest.raises(ConfigError) as e:
        TransferRules.from_config("EU-FI", section({"EU": bad}))
    assert "transfers.EU" in e.value.message
    assert "node.toml" in e.value.message


def test_from_config_refuses_rules_that_are_not_strings() -> None:
    with pytest.raises(ConfigError):
        TransferRules.from_config("EU-FI", section({"EU": True}))
    with pytest.raises(ConfigError):
        TransferRules.from_config("EU-FI", section(["EU"]))


def test_the_sandbox_rules_allow_the_eu_partner() -> None:
    """The demo's nodes: within the EU data may flow; elsewhere only under standard clauses."""
    r = TransferRules("EU-FI", {"EU": "allowed", "*": "instrument:scc-2021"})
    a = agreement()
    r.check("EU-DE", a)
    with pytest.raises(PermissionDenied):
        r.check("UK", a)
    r.check("UK", dataclasses.replace(a, legal_instruments=frozenset({"scc-2021"})))
