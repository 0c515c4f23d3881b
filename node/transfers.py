"""Cross-border transfer rules: the node operator's rule per destination jurisdiction.

A rule is `allowed`, `forbidden`, or `instrument:<name>` (allowed only under an agreement that names
that legal instrument, such as standard contractual clauses). Jurisdictions are codes like "EU-DE";
a rule for "EU" covers every "EU-…" code and "*" covers everything else. With no matching rule a
transfer is allowed only within the node's own jurisdiction: the rules fail closed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from domain.agreement import Agreement
from domain.errors import ConfigError, PermissionDenied
from infra.config import Section

ALLOWED, FORBIDDEN, INSTRUMENT = "allowed", "forbidden", "instrument:"


def _check_rule(rule: str) -> bool:
    return rule in (ALLOWED, FORBIDDEN) or (rule.startswith(INSTRUMENT) and len(rule) > 11)


@dataclass(frozen=True)
class TransferRules:
    home: str
    # The rule per destination jurisdiction ("EU-DE", "EU" for every EU-…, "*" for the rest):
    # allowed, forbidden or instrument:NAME.
    rules: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_config(cls, home: str, section: Section) -> TransferRules:
        """Rules for a node in `home`, one per key; raises ConfigError for a malformed rule."""
        rules = {}
        for key in section:
            rule = section.str(key)
            if not _check_rule(rule):
                raise ConfigError(
                    f"{section.path}: transfers.{key} must be allowed, forbidden or "
                    "instrument:<name>"
                )
            rules[key] = rule
        return cls(home, rules)

    def rule_for(self, destination: str) -> str:
        """The most specific rule matching `destination`, else "*", else allowed only at home."""
        parts = destination.split("-")
        for n in range(len(parts), 0, -1):
            rule = self.rules.get("-".join(parts[:n]))
            if rule is not None:
                return rule
        if "*" in self.rules:
            return self.rules["*"]
        return ALLOWED if destination == self.home else FORBIDDEN

    def check(self, destination: str, agreement: Agreement) -> None:
        """Raise TRANSFER_NOT_PERMITTED unless sending data to `destination` under `agreement` is
        allowed."""
        rule = self.rule_for(destination)
        if rule == ALLOWED:
            return
        if rule == FORBIDDEN:
            raise PermissionDenied(
                f"transfers from {self.home} to {destination or 'an unknown jurisdiction'} are "
                "forbidden",
                reason="TRANSFER_NOT_PERMITTED",
                destination=destination,
            )
        instrument = rule.removeprefix(INSTRUMENT)
        if instrument not in agreement.legal_instruments:
            raise PermissionDenied(
                f"transfers to {destination} need the legal instrument {instrument}, which "
                f"agreement {agreement.agreement_id} does not name",
                reason="TRANSFER_NOT_PERMITTED",
                destination=destination,
                instrument=instrument,
            )
