"""Data-sharing agreements: the signed document, its parsing, and the check of both parties' signatures.

An agreement is made between a providing city and a consuming party, and is a DSSE envelope over
canonical JSON that carries both parties' signatures. Only a verified agreement is ever enforced.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from domain.errors import VerificationError
from domain.kinds import Statement
from keys import bounded_json, dsse, timefmt
from keys.ed25519 import Signer
from keys.trust import Role, TrustBundle

THING = Statement.AGREEMENT
REVOCATION = Statement.AGREEMENT_REVOCATION
DEFAULT_K = 10
MAX_COUNT = 1_000_000
MAX_PERTURBATION = 20


class Appearance(StrEnum):
    RAW = "raw"
    GENERALISED = "generalised"
    AGGREGATE_ONLY = "aggregate_only"


@dataclass(frozen=True)
class FieldTerms:
    appearance: Appearance
    generalisations: frozenset[str] = frozenset()
    # min/max of this field may be released: never implied, because an extreme is one record's value.
    extremes: bool = False


class Regime(StrEnum):
    """How an agreement's aggregate answers are protected, stated in every signed result."""

    EXACT = "exact"  # k-threshold, secondary suppression, differencing guard
    CELL_KEY = "cell_key"  # ABS TableBuilder cell-key perturbation
    DP = "dp"  # differential privacy (OpenDP) with a persistent budget


@dataclass(frozen=True)
class CellKeyTerms:
    """Cell-key perturbation: every released count moves by at most `max_perturbation`, a
    deterministic function of its contributors' keys; cells with fewer than
    `small_cell_threshold` contributors are withheld."""

    max_perturbation: int = 2
    small_cell_threshold: int = 3

    def to_payload(self) -> dict[str, Any]:
        """The terms as the JSON object `from_payload` reads."""
        return {
            "max_perturbation": self.max_perturbation,
            "small_cell_threshold": self.small_cell_threshold,
        }

    @classmethod
    def from_payload(cls, obj: dict[str, Any]) -> CellKeyTerms:
        """Terms from a payload; VerificationError CELL_KEY_TERMS_INVALID unless in range."""
        terms = cls(
            _whole(
                obj.get("max_perturbation", 2),
                "cell_key max_perturbation",
                "CELL_KEY_TERMS_INVALID",
            ),
            _whole(
                obj.get("small_cell_threshold", 3),
                "cell_key small_cell_threshold",
                "CELL_KEY_TERMS_INVALID",
            ),
        )
        if not 1 <= terms.max_perturbation <= MAX_PERTURBATION:
            raise VerificationError(
                f"cell_key max_perturbation must be 1 to {MAX_PERTURBATION}",
                reason="CELL_KEY_TERMS_INVALID",
            )
        if not 1 <= terms.small_cell_threshold <= MAX_COUNT:
            raise VerificationError(
                f"cell_key small_cell_threshold must be 1 to {MAX_COUNT}",
                reason="CELL_KEY_TERMS_INVALID",
            )
        return terms


@dataclass(frozen=True)
class DominanceTerms:
    """The (n, k%) dominance rule for sums and averages: a cell whose `n` largest contributors
    make up more than `percent` % of its total is withheld like a small cell."""

    n: int = 2
    percent: float = 85.0

    def to_payload(self) -> dict[str, Any]:
        """The terms as the JSON object `from_payload` reads."""
        return {"n": self.n, "percent": self.percent}

    @classmethod
    def from_payload(cls, obj: dict[str, Any]) -> DominanceTerms:
        """Terms from a payload; VerificationError DOMINANCE_TERMS_INVALID unless in range."""
        n = _whole(obj.get("n", 2), "dominance n", "DOMINANCE_TERMS_INVALID")
        percent = obj.get("percent", 85.0)
        if isinstance(percent, bool) or not isinstance(percent, int | float):
            raise VerificationError(
                "dominance percent must be a number", reason="DOMINANCE_TERMS_INVALID"
            )
        if not 1 <= n <= 100 or not 0 < float(percent) <= 100:
            raise VerificationError(
                "dominance needs 1 <= n <= 100 and 0 < percent <= 100",
                reason="DOMINANCE_TERMS_INVALID",
            )
        return cls(n, float(percent))


@dataclass(frozen=True)
class DisclosureTerms:
    """The agreement's disclosure regime and its parameters."""

    regime: Regime = Regime.EXACT
    cell_key: CellKeyTerms | None = None
    dominance: DominanceTerms = DominanceTerms()

    def to_payload(self) -> dict[str, Any]:
        """The terms as the JSON object `from_payload` reads."""
        return {
            "regime": self.regime.value,
            "cell_key": self.cell_key.to_payload() if self.cell_key else None,
            "dominance": self.dominance.to_payload(),
        }

    @classmethod
    def from_payload(cls, obj: dict[str, Any]) -> DisclosureTerms:
        """Terms from a payload; VerificationError with a reason naming what is wrong."""
        try:
            regime = Regime(obj.get("regime", Regime.EXACT.value))
        except ValueError:
            raise VerificationError(
                f"disclosure regime {obj.get('regime')!r} is not one of "
                f"{', '.join(r.value for r in Regime)}",
                reason="DISCLOSURE_REGIME_UNKNOWN",
            ) from None
        cell_key = obj.get("cell_key")
        terms = cls(
            regime,
            CellKeyTerms.from_payload(cell_key) if cell_key is not None else None,
            DominanceTerms.from_payload(obj.get("dominance") or {}),
        )
        if regime is Regime.CELL_KEY and terms.cell_key is None:
            terms = cls(regime, CellKeyTerms(), terms.dominance)
        if regime is not Regime.CELL_KEY and terms.cell_key is not None:
            raise VerificationError(
                "cell_key terms need the cell_key regime", reason="CELL_KEY_TERMS_INVALID"
            )
        return terms


@dataclass(frozen=True)
class PartnerLimits:
    """What the providing city serves the consumer at most: queries per minute and at once."""

    queries_per_minute: int = 600
    max_concurrent: int = 8

    def to_payload(self) -> dict[str, Any]:
        """The terms as the JSON object `from_payload` reads."""
        return {
            "queries_per_minute": self.queries_per_minute,
            "max_concurrent": self.max_concurrent,
        }

    @classmethod
    def from_payload(cls, obj: dict[str, Any]) -> PartnerLimits:
        """Terms from a payload; VerificationError LIMITS_INVALID unless in range."""
        terms = cls(
            _whole(obj.get("queries_per_minute", 600), "queries_per_minute", "LIMITS_INVALID"),
            _whole(obj.get("max_concurrent", 8), "max_concurrent", "LIMITS_INVALID"),
        )
        if not 1 <= terms.queries_per_minute <= MAX_COUNT or not 1 <= terms.max_concurrent <= 1000:
            raise VerificationError(
                "limits need 1 <= queries_per_minute <= 1000000 and 1 <= max_concurrent <= 1000",
                reason="LIMITS_INVALID",
            )
        return terms


def _whole(value: Any, name: str, reason: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise VerificationError(f"{name} must be a whole number", reason=reason)
    return value


@dataclass(frozen=True)
class DpTerms:
    """Differential privacy the agreement requires: every answer spends `epsilon_per_query` of a
    `total_epsilon` budget; sums are clamped to declared `bounds` per field. The unit protected
    is a resident (a record, for observational data): each answer counts at most
    `records_per_resident` of a resident's records, and the noise is scaled to that."""

    epsilon_per_query: float
    total_epsilon: float
    bounds: dict[str, tuple[float, float]]
    records_per_resident: int = 1

    def to_payload(self) -> dict[str, Any]:
        """The terms as the JSON object `from_payload` reads, bounds as sorted `field: [low, high]`."""
        return {
            "epsilon_per_query": self.epsilon_per_query,
            "total_epsilon": self.total_epsilon,
            "bounds": {f: [lo, hi] for f, (lo, hi) in sorted(self.bounds.items())},
            "records_per_resident": self.records_per_resident,
        }

    @classmethod
    def from_payload(cls, obj: dict[str, Any]) -> DpTerms:
        """Terms from a payload; ValueError (or KeyError, TypeError) unless present and in range."""
        per_resident = obj.get("records_per_resident", 1)
        if isinstance(per_resident, bool) or not isinstance(per_resident, int):
            raise ValueError("dp records_per_resident must be a whole number")
        terms = cls(
            float(obj["epsilon_per_query"]),
            float(obj["total_epsilon"]),
            {str(f): (float(b[0]), float(b[1])) for f, b in obj.get("bounds", {}).items()},
            per_resident,
        )
        if not 0 < terms.epsilon_per_query <= terms.total_epsilon <= 1000:
            raise ValueError("dp needs 0 < epsilon_per_query <= total_epsilon <= 1000")
        if any(lo >= hi for lo, hi in terms.bounds.values()):
            raise ValueError("dp bounds must be [low, high] with low < high")
        if not 1 <= terms.records_per_resident <= 1000:
            raise ValueError("dp records_per_resident must be 1 to 1000")
        return terms


@dataclass(frozen=True)
class Agreement:
    agreement_id: str
    version: int
    provider: str
    consumer: str
    purposes: frozenset[str]
    datasets: dict[str, dict[str, FieldTerms]]
    min_cell_size: int
    valid_from: datetime
    valid_until: datetime
    retention_days: int
    # Legal instruments the transfer relies on (e.g. "scc-2021"), for cross-border rules.
    legal_instruments: frozenset[str] = frozenset()
    dp: DpTerms | None = None
    # Kinds of query allowed: aggregate, attribute_check, record_release.
    query_kinds: frozenset[str] = frozenset({"aggregate"})
    # None: the regime follows `dp` (dp when present, else exact), default dominance.
    disclosure: DisclosureTerms | None = None
    # The city's own per-partner limits; None: the node's defaults.
    limits: PartnerLimits | None = None

    @property
    def disclosure_terms(self) -> DisclosureTerms:
        """The disclosure terms in force: explicit, or those implied by `dp`."""
        if self.disclosure is not None:
            return self.disclosure
        return DisclosureTerms(Regime.DP if self.dp else Regime.EXACT)

    def in_force(self, at: datetime) -> bool:
        """True if `valid_from <= at < valid_until`."""
        return self.valid_from <= at < self.valid_until

    def to_payload(self) -> dict[str, Any]:
        """The terms as the JSON object the parties sign (sets sorted); `from_payload` reads it."""
        return {
            "agreement_id": self.agreement_id,
            "version": self.version,
            "provider": self.provider,
            "consumer": self.consumer,
            "purposes": sorted(self.purposes),
            "datasets": {
                ds: {
                    f: {
                        "appearance": t.appearance.value,
                        "generalisations": sorted(t.generalisations),
                        **({"extremes": True} if t.extremes else {}),
                    }
                    for f, t in fields.items()
                }
                for ds, fields in self.datasets.items()
            },
            "min_cell_size": self.min_cell_size,
            "valid_from": timefmt.fmt(self.valid_from),
            "valid_until": timefmt.fmt(self.valid_until),
            "retention_days": self.retention_days,
            "legal_instruments": sorted(self.legal_instruments),
            "dp": self.dp.to_payload() if self.dp else None,
            "query_kinds": sorted(self.query_kinds),
            **({"disclosure": self.disclosure.to_payload()} if self.disclosure else {}),
            **({"limits": self.limits.to_payload()} if self.limits else {}),
        }

    @classmethod
    def from_payload(cls, obj: dict[str, Any]) -> Agreement:
        """Terms from a payload, signatures unchecked; VerificationError if malformed or out of range."""
        try:
            datasets = {
                str(ds): {
                    str(f): FieldTerms(
                        Appearance(t["appearance"]),
                        frozenset(str(g) for g in t.get("generalisations", [])),
                        t.get("extremes", False) is True,
                    )
                    for f, t in fields.items()
                }
                for ds, fields in obj["datasets"].items()
            }
            a = cls(
                agreement_id=str(obj["agreement_id"]),
                version=int(obj["version"]),
                provider=str(obj["provider"]),
                consumer=str(obj["consumer"]),
                purposes=frozenset(str(p) for p in obj["purposes"]),
                datasets=datasets,
                min_cell_size=int(obj.get("min_cell_size", DEFAULT_K)),
                valid_from=timefmt.parse(obj["valid_from"]),
                valid_until=timefmt.parse(obj["valid_until"]),
                retention_days=int(obj.get("retention_days", 0)),
                legal_instruments=frozenset(str(i) for i in obj.get("legal_instruments", [])),
                dp=DpTerms.from_payload(obj["dp"]) if obj.get("dp") else None,
                query_kinds=frozenset(str(k) for k in obj.get("query_kinds", ["aggregate"])),
                disclosure=DisclosureTerms.from_payload(obj["disclosure"])
                if obj.get("disclosure") is not None
                else None,
                limits=PartnerLimits.from_payload(obj["limits"])
                if obj.get("limits") is not None
                else None,
            )
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise VerificationError(
                f"agreement is malformed: {e}", reason="AGREEMENT_MALFORMED"
            ) from None
        for ds, fields in a.datasets.items():
            for f, t in fields.items():
                if t.extremes and t.appearance is Appearance.AGGREGATE_ONLY:
                    # min/max are one record's value: an aggregate_only field never releases one.
                    raise VerificationError(
                        f"field {f} of {ds} is aggregate_only, so it cannot allow extremes",
                        reason="EXTREMES_INVALID",
                    )
        regime = a.disclosure_terms.regime
        if (regime is Regime.DP) != (a.dp is not None):
            raise VerificationError(
                "the dp regime needs dp terms, and dp terms need the dp regime",
                reason="DISCLOSURE_REGIME_MISMATCH",
            )
        if a.valid_until <= a.valid_from:
            raise VerificationError(
                "agreement validity ends before it starts", reason="AGREEMENT_DATES_INVALID"
            )
        # Bounded so that every number canonicalises (RFC 8785 allows at most 2^53 - 1).
        for name, value in (
            ("version", a.version),
            ("min_cell_size", a.min_cell_size),
            ("retention_days", a.retention_days),
        ):
            low = 0 if name == "retention_days" else 1
            if not low <= value <= MAX_COUNT:
                raise VerificationError(
                    f"agreement {name} must be between {low} and {MAX_COUNT}",
                    reason="AGREEMENT_MALFORMED",
                )
        return a


def sign(agreement: Agreement, *signers: Signer) -> dsse.Envelope:
    """A DSSE agreement envelope over the canonical payload, one signature per signer, in order."""
    return dsse.sign(THING, agreement.to_payload(), *signers)


def unverified_terms(envelope: dsse.Envelope) -> Agreement:
    """The terms of an agreement whose signatures are not checked yet: only to decide whose
    signature to check, or to show a proposal to the person about to sign it."""
    if envelope.payload_type != dsse.media_type(THING):
        raise VerificationError(
            f"expected an agreement, got {envelope.payload_type!r}", reason="PAYLOAD_TYPE_MISMATCH"
        )
    try:
        return Agreement.from_payload(bounded_json.loads(envelope.payload, "an agreement"))
    except ValueError:
        raise VerificationError(
            "agreement payload is not JSON", reason="AGREEMENT_MALFORMED"
        ) from None


def verify_signed_by(envelope: dsse.Envelope, bundle: TrustBundle, party: str) -> Agreement:
    """A proposal: accept it if `party`, one of its two parties, signed these exact bytes."""
    provider, consumer, starts, unverified = _parties(envelope, bundle)
    if party not in (provider, consumer):
        raise VerificationError(
            f"{party} is not a party to this agreement", reason="AGREEMENT_PARTY_UNKNOWN"
        )
    if not dsse.verified_keyids(envelope, bundle.key_lookup(party, starts)):
        raise VerificationError(
            f"agreement lacks a valid signature of {party}",
            reason="AGREEMENT_SIGNATURE_INVALID",
            party=party,
        )
    return Agreement.from_payload(unverified)


def _parties(
    envelope: dsse.Envelope, bundle: TrustBundle
) -> tuple[str, str, datetime, dict[str, Any]]:
    """Provider, consumer and start of an unverified agreement, both parties known to the bundle.
    Only used to choose whose keys to check the signatures against."""
    if envelope.payload_type != dsse.media_type(THING):
        raise VerificationError(
            f"expected an agreement, got {envelope.payload_type!r}", reason="PAYLOAD_TYPE_MISMATCH"
        )
    try:
        unverified = bounded_json.loads(envelope.payload, "an agreement")
        provider, consumer = str(unverified["provider"]), str(unverified["consumer"])
        starts = timefmt.parse(unverified["valid_from"])
    except (ValueError, KeyError, TypeError):
        raise VerificationError(
            "agreement payload is malformed", reason="AGREEMENT_MALFORMED"
        ) from None
    if bundle.party(provider, Role.CITY) is None:
        raise VerificationError(
            f"agreement provider {provider!r} is not a city in the trust bundle",
            reason="AGREEMENT_PARTY_UNKNOWN",
        )
    if bundle.party(consumer) is None:
        raise VerificationError(
            f"agreement consumer {consumer!r} is not in the trust bundle",
            reason="AGREEMENT_PARTY_UNKNOWN",
        )
    return provider, consumer, starts, unverified


def verify(envelope: dsse.Envelope, bundle: TrustBundle) -> Agreement:
    """Accept an agreement only if the provider city and the consumer both signed these exact bytes,
    with keys the trust bundle lists for them when the agreement starts.

    The party names are read before the signatures are checked, only to choose whose keys to check
    them against; nothing else of the payload is used until both signatures verify.
    """
    provider, consumer, starts, unverified = _parties(envelope, bundle)
    for party in (provider, consumer):
        if not dsse.verified_keyids(envelope, bundle.key_lookup(party, starts)):
            raise VerificationError(
                f"agreement lacks a valid signature of {party}",
                reason="AGREEMENT_SIGNATURE_INVALID",
                party=party,
            )
    return Agreement.from_payload(unverified)


def sign_revocation(
    agreement: Agreement, revoked_by: str, reason: str, signer: Signer
) -> dsse.Envelope:
    """Either party's signed statement that an agreement ends now."""
    return dsse.sign(
        REVOCATION,
        {
            "agreement_id": agreement.agreement_id,
            "version": agreement.version,
            "provider": agreement.provider,
            "consumer": agreement.consumer,
            "revoked_by": revoked_by,
            "reason": reason,
            "at": timefmt.fmt(timefmt.now()),
        },
        signer,
    )


def verify_revocation(
    envelope: dsse.Envelope, agreement: Agreement, bundle: TrustBundle
) -> dict[str, Any]:
    """A revocation must name this agreement and be signed by the party it says revoked it."""
    if envelope.payload_type != dsse.media_type(REVOCATION):
        raise VerificationError(
            f"expected an agreement revocation, got {envelope.payload_type!r}",
            reason="PAYLOAD_TYPE_MISMATCH",
        )
    try:
        unverified = bounded_json.loads(envelope.payload, "a revocation")
        by, at = str(unverified["revoked_by"]), timefmt.parse(unverified["at"])
    except (ValueError, KeyError, TypeError):
        raise VerificationError(
            "revocation payload is malformed", reason="REVOCATION_MALFORMED"
        ) from None
    if by not in (agreement.provider, agreement.consumer):
        raise VerificationError(
            f"{by} is not a party to agreement {agreement.agreement_id}",
            reason="AGREEMENT_PARTY_UNKNOWN",
        )
    payload, _ = dsse.verify(envelope, REVOCATION, bundle.key_lookup(by, at))
    if (payload.get("agreement_id"), payload.get("version")) != (
        agreement.agreement_id,
        agreement.version,
    ):
        raise VerificationError(
            "the revocation is for another agreement", reason="REVOCATION_MISMATCH"
        )
    return payload
