"""The vocabularies shipped with citybroker, derived from W3C DPV: purposes, personal data
categories, lawful bases and recipient categories. A code outside them is refused as unknown."""

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

DATA_CATEGORIES: dict[str, str] = {
    "mobility": "dpv-pd:TravelHistory - trips and journeys",
    "location": "dpv-pd:Location",
    "age": "dpv-pd:Age",
    "residence": "dpv-pd:Address (district of residence)",
    "energy-usage": "dpv-pd:UtilityUsage",
    "benefits": "dpv-pd:Financial (social benefits and discounts)",
    "health": "dpv-pd:Health (special category)",
}

LAWFUL_BASES: dict[str, str] = {
    "consent": "dpv:Consent (GDPR Art. 6(1)(a))",
    "explicit-consent": "dpv:ExplicitConsent (GDPR Art. 9(2)(a))",
}

# A consent may name a recipient category instead of a party: "category:<code>".
RECIPIENT_CATEGORIES: dict[str, str] = {
    "public-transport-operator": "dpv:ServiceProvider operating public transport",
    "research-institution": "dpv:AcademicScientificOrganisation",
    "public-authority": "dpv:GovernmentalOrganisation",
}
CATEGORY_PREFIX = "category:"


def is_purpose(code: str) -> bool:
    """True exactly when `code` is a purpose code of the shipped vocabulary (`PURPOSES`)."""
    return code in PURPOSES


def is_data_category(code: str) -> bool:
    """True exactly when `code` is a data category code of the shipped vocabulary."""
    return code in DATA_CATEGORIES
