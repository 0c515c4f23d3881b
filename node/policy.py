"""The policy decision: may this query run under an agreement in force? A pure function, no I/O.

It fails closed: anything it does not recognise denies. Each refusal carries the error family and the
reason the node puts in its ErrorInfo.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from domain.agreement import Agreement, Appearance, FieldTerms
from domain.errors import CitybrokerError, InvalidArgument, PermissionDenied
from domain.query import Dimension, Filter, FilterOp, MeasureKind, Query, QueryKind
from node import taxonomy
from node.catalogue import Catalogue, DatasetSpec, FieldType
from node.transfers import TransferRules


@dataclass(frozen=True)
class Permit:
    """The agreement a query may run under."""

    agreement: Agreement


@dataclass(frozen=True)
class Provider:
    """The city that decides: its party id, its catalogue, and its operator's transfer rules
    (None: where the data goes is not checked)."""

    city: str
    catalogue: Catalogue
    transfers: TransferRules | None = None


def _check_purpose(query: Query) -> None:
    """Raise InvalidArgument unless the query names a purpose of the taxonomy. The taxonomy is the
    same for every city and published with the code, so saying so tells a partner nothing."""
    if not taxonomy.is_purpose(query.purpose):
        raise InvalidArgument(
            f"unknown purpose {query.purpose!r}", reason="PURPOSE_UNKNOWN", purpose=query.purpose
        )


def _check_catalogue(query: Query, catalogue: Catalogue) -> None:
    """Raise InvalidArgument unless the query names a dataset of the catalogue, fields it has, and
    measures, generalisations and filters those fields support. Called only once an agreement
    covers everything the query names, so it never tells a partner what lies outside its
    agreement."""
    ds = catalogue.datasets.get(query.dataset)
    if ds is None:
        raise InvalidArgument(
            f"unknown dataset {query.dataset!r}", reason="DATASET_UNKNOWN", dataset=query.dataset
        )
    used = [m.field for m in query.measures if m.kind.needs_field]
    used += [d.field for d in query.group_by] + [f.field for f in query.filters]
    for name in used:
        if name not in ds.fields:
            raise InvalidArgument(
                f"dataset {ds.name} has no field {name!r}", reason="FIELD_UNKNOWN", field=name
            )
    for m in query.measures:
        if m.kind is MeasureKind.COUNT_RESIDENTS and not ds.resident_linked:
            raise InvalidArgument(
                f"dataset {ds.name} is observational: it has no residents to count",
                reason="MEASURE_INVALID",
            )
        if m.kind.needs_field and ds.fields[m.field].type is not FieldType.NUMBER:
            raise InvalidArgument(
                f"{m.kind.value} needs a numeric field; {m.field} is not",
                reason="MEASURE_INVALID",
                field=m.field,
            )
    for d in query.group_by:
        if d.generalisation not in ds.fields[d.field].generalisations:
            raise InvalidArgument(
                f"field {d.field} has no generalisation {d.generalisation or 'raw'!r}",
                reason="GENERALISATION_UNKNOWN",
                field=d.field,
            )
    for f in query.filters:
        _check_filter(query, ds, f)


def _check_filter(query: Query, ds: DatasetSpec, f: Filter) -> None:
    """Raise InvalidArgument unless filter `f` (on a field `ds` has) can be applied as asked."""
    if f.op not in FilterOp:
        raise InvalidArgument(f"operator {f.op} is not supported", reason="OPERATOR_UNKNOWN")
    spec = ds.fields[f.field]
    if f.op in (FilterOp.AT_LEAST, FilterOp.AT_MOST) and spec.type is not FieldType.NUMBER:
        raise InvalidArgument(
            f"{f.op.value} needs a numeric field; {f.field} is not",
            reason="FILTER_INVALID",
            field=f.field,
        )
    # An attribute check answers about one consenting resident; only aggregates could be
    # subtracted from each other, so only they are held to generalised filter values.
    is_check = query.kind is QueryKind.ATTRIBUTE_CHECK
    # Before the generalisation is looked up: a raw date or number filter is refused as such,
    # naming the generalisations it could use instead.
    # The agreement lets this field appear raw (else _fields_refusal refused first), so every
    # generalisation of the catalogue is within what it offers.
    if spec.type is not FieldType.STRING and not f.generalisation and not is_check:
        raise _raw_filter(f.field, spec.generalisations)
    if f.generalisation not in spec.generalisations:
        raise InvalidArgument(
            f"field {f.field} has no generalisation {f.generalisation or 'raw'!r}",
            reason="GENERALISATION_UNKNOWN",
            field=f.field,
        )


def _raw_filter(field: str, offered: Iterable[str]) -> InvalidArgument:
    """The refusal of an exact-value filter on `field`, naming the generalisations `offered`."""
    usable = sorted(g for g in offered if g)
    return InvalidArgument(
        f"filters on {field} must use a generalisation ({', '.join(usable)}), not exact values"
        if usable
        else f"{field} has no generalisation, so it cannot be filtered on",
        reason="FILTER_ON_RAW_VALUE",
        field=field,
    )


def _refusal(query: Query, a: Agreement) -> CitybrokerError | None:
    """Why agreement `a` does not cover the query, or None if it does."""
    if query.kind.value not in a.query_kinds:
        return PermissionDenied(
            f"agreement {a.agreement_id} does not allow {query.kind.value} queries",
            reason="QUERY_KIND_NOT_IN_AGREEMENT",
            agreement=a.agreement_id,
        )
    if query.purpose not in a.purposes:
        return PermissionDenied(
            f"purpose {query.purpose} is not in agreement {a.agreement_id}",
            reason="PURPOSE_NOT_IN_AGREEMENT",
            purpose=query.purpose,
            agreement=a.agreement_id,
        )
    terms = a.datasets.get(query.dataset)
    if terms is None:
        return PermissionDenied(
            f"dataset {query.dataset} is not in agreement {a.agreement_id}",
            reason="DATASET_NOT_IN_AGREEMENT",
            dataset=query.dataset,
            agreement=a.agreement_id,
        )
    return _fields_refusal(query, a, terms)


def _fields_refusal(
    query: Query, a: Agreement, terms: dict[str, FieldTerms]
) -> CitybrokerError | None:
    """Why agreement `a`'s `terms` for the query's dataset do not allow the fields it uses as it
    uses them, or None if they do."""
    for m in query.measures:
        if m.kind.needs_field and m.field not in terms:
            return PermissionDenied(
                f"field {m.field} is not in agreement {a.agreement_id}",
                reason="FIELD_NOT_IN_AGREEMENT",
                field=m.field,
                agreement=a.agreement_id,
            )
        if m.kind in (MeasureKind.MIN, MeasureKind.MAX) and not _extremes_allowed(terms[m.field]):
            return PermissionDenied(
                f"agreement {a.agreement_id} does not allow {m.kind.value} of {m.field}",
                reason="EXTREMES_NOT_ALLOWED",
                field=m.field,
                agreement=a.agreement_id,
            )
    for d in query.group_by:
        refusal = _group_refusal(d, terms.get(d.field), a)
        if refusal is not None:
            return refusal
    for f in query.filters:
        refusal = _filter_refusal(f, terms.get(f.field), a)
        if refusal is not None:
            return refusal
    return None


def _filter_refusal(f: Filter, t: FieldTerms | None, a: Agreement) -> CitybrokerError | None:
    """Why agreement `a`'s terms `t` for the field do not allow filter `f`, or None. The message
    names only generalisations the agreement offers."""
    if t is not None and t.appearance is Appearance.RAW:
        return None
    if t is not None and t.appearance is Appearance.GENERALISED:
        if f.generalisation in t.generalisations:
            return None
        message = (
            f"agreement {a.agreement_id} allows filtering on {f.field} only generalised as "
            f"{', '.join(sorted(t.generalisations))}"
        )
    else:
        message = f"filtering on {f.field} is not allowed by agreement {a.agreement_id}"
    return PermissionDenied(
        message, reason="FILTER_NOT_IN_AGREEMENT", field=f.field, agreement=a.agreement_id
    )


def _extremes_allowed(t: FieldTerms) -> bool:
    """min/max release one record's value: only where the agreement says so for the field, and
    never for a field that may appear only inside aggregates."""
    return t.extremes and t.appearance is not Appearance.AGGREGATE_ONLY


def _group_refusal(d: Dimension, t: FieldTerms | None, a: Agreement) -> CitybrokerError | None:
    """Why agreement `a`'s terms `t` for the field do not allow grouping by `d`, or None."""
    if t is None:
        return PermissionDenied(
            f"field {d.field} is not in agreement {a.agreement_id}",
            reason="FIELD_NOT_IN_AGREEMENT",
            field=d.field,
            agreement=a.agreement_id,
        )
    if t.appearance is Appearance.AGGREGATE_ONLY:
        return PermissionDenied(
            f"field {d.field} may appear only inside aggregates, not as a group",
            reason="FIELD_AGGREGATE_ONLY",
            field=d.field,
            agreement=a.agreement_id,
        )
    if t.appearance is Appearance.GENERALISED and d.generalisation not in t.generalisations:
        return PermissionDenied(
            f"field {d.field} may appear only generalised as "
            f"{', '.join(sorted(t.generalisations))}",
            reason="GENERALISATION_NOT_IN_AGREEMENT",
            field=d.field,
            agreement=a.agreement_id,
        )
    return None


def decide(
    query: Query,
    partner: str,
    agreements: Iterable[Agreement],
    at: datetime,
    provider: Provider,
    destination: str = "",
) -> Permit:
    """Return the permit (the newest covering agreement in force) or raise the refusal.

    Permission comes before existence: a partner learns nothing about the catalogue beyond what its
    agreements in force offer (with none, nothing at all). With the provider's transfer rules, the
    data may only go to the partner's jurisdiction `destination` as the node operator's rules allow
    under that agreement.
    """
    city, transfers = provider.city, provider.transfers
    # A newer version of an agreement supersedes the older ones even before it comes into force,
    # as AgreementRegister.activate does: a superseded version never authorises anything.
    newest: dict[str, Agreement] = {}
    for a in agreements:
        if a.consumer != partner or a.provider != city:
            continue
        if a.agreement_id not in newest or a.version > newest[a.agreement_id].version:
            newest[a.agreement_id] = a
    in_force = sorted((a for a in newest.values() if a.in_force(at)), key=lambda a: a.agreement_id)
    if not in_force:
        raise PermissionDenied(
            f"no agreement in force between {city} and {partner}",
            reason="NO_AGREEMENT",
            partner=partner,
        )
    _check_purpose(query)
    # Report the refusal of the agreement closest to covering the query, not merely the first.
    # Agreements are asked before the catalogue: whatever lies outside them is refused the same
    # way whether the city has it or not.
    best: tuple[int, CitybrokerError] | None = None
    for a in in_force:
        refusal = _refusal(query, a)
        if refusal is None:
            _check_catalogue(query, provider.catalogue)
        if refusal is None and transfers is not None:
            try:
                transfers.check(destination, a)
            except PermissionDenied as e:
                refusal = e
        if refusal is None:
            return Permit(a)
        closeness = (
            (query.kind.value in a.query_kinds)
            + (query.purpose in a.purposes)
            + (query.dataset in a.datasets)
        )
        if best is None or closeness > best[0]:
            best = (closeness, refusal)
    assert best is not None
    raise best[1]
