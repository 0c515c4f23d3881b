"""The names the evidence formats use, defined once: signed statement types (the `<thing>` of
`application/vnd.citybroker.<thing>+json`) and the kinds entries are logged under in a Merkle log."""

from __future__ import annotations

from enum import StrEnum

from keys import trust


class Statement(StrEnum):
    """Signed statement types, as DSSE payload types name them."""

    QUERY = "query"
    PLAN = "plan"
    DESCRIBE = "describe"
    RESULT = "result"
    REFUSAL = "refusal"
    RECEIPT = "receipt"
    CONSENT_RECEIPT = "consent-receipt"
    CONSENT_BATCH = "consent-batch"
    AGREEMENT = "agreement"
    AGREEMENT_REVOCATION = "agreement-revocation"
    COSIGNATURE = "cosignature"
    # A broker's record of a city's signed checkpoint it checked (audit.city_checkpoint).
    WITNESSED_CHECKPOINT = "witnessed-checkpoint"
    # A salted commitment to a resident-level statement kept by the city (domain.commitment).
    COMMITMENT = "commitment"
    # keys/ names it (keys depends on nothing of the domain but its errors).
    TRUST_BUNDLE = trust.THING


class LogKind(StrEnum):
    """What a log entry records; stored beside the entry, outside its Merkle leaf."""

    EXCHANGE = "exchange"
    REFUSAL = "refusal"
    CONSENT = "consent"
    AGREEMENT = "agreement"
    # A city's cosignature of a broker checkpoint; a broker's record of a city's checkpoint.
    WITNESS = "witness"
