"""The purpose taxonomy shipped with citybroker: codes derived from W3C DPV purposes.

A query or agreement naming a code outside this list is refused as unknown.
"""

from __future__ import annotations

PURPOSES: dict[str, str] = {
    "service-optimisation": "dpv:ServiceOptimisation - improve a public service",
    "urban-mobility-planning": "dpv:ServiceProvision (public transport and mobility planning)",
    "scientific-research": "dpv:ResearchAndDevelopment - scientific research",
    "public-benefit-statistics": "dpv:PublicBenefit - official statistics",
    "eligibility-check": "dpv:IdentityVerification - check eligibility for a service",
    "direct-marketing": "dpv:DirectMarketing - marketing to residents",
    "personalised-advertising": "dpv:PersonalisedAdvertising",
}


def is_known(code: str) -> bool:
    return code in PURPOSES
