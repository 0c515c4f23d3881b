"""`citybroker node agreement …` (a city's data team, through its node) and `citybroker agreement …`
(any party, offline, with its own key): proposing, countersigning, activating, revoking, showing."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from cli.output import console, fail
from domain import agreement as agreement_doc
from domain.agreement import (
    Agreement,
    Appearance,
    DisclosureTerms,
    DpTerms,
    FieldTerms,
    Regime,
)
from domain.errors import CallFailed, CitybrokerError, VerificationError
from domain.odrl import to_odrl
from edge.operator_client import OperatorClient
from infra.config import Section, load_toml
from keys import dsse, timefmt
from keys.ed25519 import Signer

node_agreement_app = typer.Typer(
    help="Administer this city's agreements through its node.", no_args_is_help=True
)
agreement_app = typer.Typer(
    help="Work with agreement files offline, as a party with its own key.", no_args_is_help=True
)

OperatorOpt = Annotated[
    Path,
    typer.Option(
        "--operator",
        help="Operator connection file (TOML: node, ca_cert, cert, key), as "
        "`citybroker demo` writes operator-<city>.toml.",
    ),
]


@contextmanager
def _node(operator: Path) -> Iterator[OperatorClient]:
    """The operator's client of its node, closed afterwards; a call the node refuses ends the
    command with one line of error and exit status 1."""
    section = Section(load_toml(operator), operator)
    client = OperatorClient(
        section.str("node"), section.path_("ca_cert"), section.path_("cert"), section.path_("key")
    )
    try:
        with client:
            yield client
    except CallFailed as e:
        r = e.error
        raise fail(f"the node refused: {r.code} {r.reason}: {r.message}", 1) from None


def _read_envelope(path: Path) -> dsse.Envelope:
    try:
        return dsse.Envelope.from_json(path.read_bytes())
    except OSError as e:
        raise fail(f"cannot read {path}: {e.strerror}") from None
    except CitybrokerError as e:
        raise fail(f"{path}: {e.message}") from None


def _unverified_terms(path: Path, env: dsse.Envelope) -> Agreement:
    # Offline the signatures cannot be checked; the user reads the terms before signing anything.
    try:
        return agreement_doc.unverified_terms(env)
    except CitybrokerError as e:
        raise fail(f"{path}: {e.message}") from None


def _write(path: Path, data: bytes | str) -> None:
    try:
        path.write_bytes(data if isinstance(data, bytes) else data.encode())
    except OSError as e:
        raise fail(f"cannot write {path}: {e.strerror}") from None


def _parse_field(text: str) -> tuple[str, FieldTerms]:
    name, sep, how = text.partition("=")
    kind, _, gens = how.partition(":")
    try:
        appearance = Appearance(kind)
    except ValueError:
        raise fail(
            f"--field {text!r}: use NAME=raw, NAME=aggregate_only or NAME=generalised:G1,G2"
        ) from None
    if not name or not sep or (appearance is Appearance.GENERALISED) != bool(gens):
        raise fail(
            f"--field {text!r}: generalised fields list their generalisations "
            "(NAME=generalised:month,year); others take none"
        )
    return name, FieldTerms(appearance, frozenset(g for g in gens.split(",") if g))


# Disclosure options of `propose`: one line each in its signature.
RegimeOpt = Annotated[
    str | None,
    typer.Option(
        help="Disclosure regime: exact, cell_key or dp (default: dp with --dp-epsilon, else exact)."
    ),
]
MaxPerturbationOpt = Annotated[
    int | None, typer.Option(help="cell_key: largest change of a released count (1-20; 2).")
]
SmallCellOpt = Annotated[
    int | None, typer.Option(help="cell_key: cells with fewer contributors are withheld (3).")
]
DominanceNOpt = Annotated[
    int | None, typer.Option(help="Dominance rule: how many largest contributors (1-100; 2).")
]
DominancePercentOpt = Annotated[
    float | None,
    typer.Option(help="Dominance rule: withhold a sum they make more than this % of (85)."),
]
ExtremesOpt = Annotated[
    list[str] | None,
    typer.Option(help="Field whose min/max may be released (not aggregate_only); repeatable."),
]


def _parse_disclosure(
    regime: str | None,
    cell_key: tuple[int | None, int | None],
    dominance: tuple[int | None, float | None],
    dp: DpTerms | None,
) -> DisclosureTerms | None:
    """The disclosure terms the options name, checked as a received agreement's are; None when
    no option names any (the regime then follows --dp-*, as before regimes existed)."""
    if regime is None and cell_key == (None, None) and dominance == (None, None):
        return None
    chosen = regime or (Regime.DP.value if dp else Regime.EXACT.value)
    payload: dict[str, object] = {"regime": chosen}
    if cell_key != (None, None):
        payload["cell_key"] = {
            name: value
            for name, value in zip(
                ("max_perturbation", "small_cell_threshold"), cell_key, strict=True
            )
            if value is not None
        }
    payload["dominance"] = {
        name: value
        for name, value in zip(("n", "percent"), dominance, strict=True)
        if value is not None
    }
    try:
        return DisclosureTerms.from_payload(payload)
    except VerificationError as e:
        raise fail(f"disclosure terms: {e.message} ({e.reason})") from None


def _with_extremes(fields: dict[str, FieldTerms], extremes: list[str]) -> dict[str, FieldTerms]:
    """`fields` with extremes allowed on each of `extremes`: fields of the dataset, not
    aggregate_only (min/max of one of those would be one resident's value)."""
    out = dict(fields)
    for name in extremes:
        t = out.get(name)
        if t is None:
            raise fail(f"--extremes {name}: not a --field of the agreement")
        if t.appearance is Appearance.AGGREGATE_ONLY:
            raise fail(f"--extremes {name}: an aggregate_only field never releases min/max")
        out[name] = FieldTerms(t.appearance, t.generalisations, extremes=True)
    return out


def _parse_dp(
    epsilon: float | None, total: float | None, bounds: list[str], per_resident: int
) -> DpTerms | None:
    """--dp-epsilon, --dp-total, --dp-bound NAME=LOW:HIGH (repeatable), --dp-records-per-resident:
    all or none of the first two."""
    if epsilon is None and total is None:
        if bounds:
            raise fail("--dp-bound needs --dp-epsilon and --dp-total")
        return None
    if epsilon is None or total is None:
        raise fail("differential privacy needs both --dp-epsilon and --dp-total")
    parsed: dict[str, tuple[float, float]] = {}
    for text in bounds:
        name, sep, rest = text.partition("=")
        lo, colon, hi = rest.partition(":")
        try:
            low, high = float(lo), float(hi)
        except ValueError:
            low = high = 0.0
        if not name or not sep or not colon or not low < high or name in parsed:
            raise fail(f"--dp-bound {text!r}: use NAME=LOW:HIGH with LOW < HIGH, once per field")
        parsed[name] = (low, high)
    try:
        return DpTerms.from_payload(
            DpTerms(epsilon, total, parsed, per_resident).to_payload()
        )  # the checks a received agreement gets
    except ValueError as e:
        raise fail(f"differential privacy terms: {e}") from None


def _summary(a: Agreement, status: str = "") -> Table:
    t = Table(
        title=f"agreement {a.agreement_id} v{a.version}" + (f" ({status})" if status else ""),
        show_header=False,
    )
    t.add_row("provider → consumer", f"{a.provider} → {a.consumer}")
    t.add_row("purposes", ", ".join(sorted(a.purposes)))
    for ds, fields in sorted(a.datasets.items()):
        t.add_row(
            f"dataset {ds}",
            ", ".join(
                f"{f} ({terms.appearance.value}"
                + (f": {'/'.join(sorted(terms.generalisations))}" if terms.generalisations else "")
                + ")"
                for f, terms in sorted(fields.items())
            ),
        )
    t.add_row("k (min cell size)", str(a.min_cell_size))
    t.add_row("disclosure", _disclosure_line(a))
    t.add_row("valid", f"{timefmt.fmt(a.valid_from)} to {timefmt.fmt(a.valid_until)}")
    t.add_row("retention", f"{a.retention_days} days")
    if a.dp is not None:
        bounds = ", ".join(
            f"{f} in [{lo:g}, {hi:g}]" for f, (lo, hi) in sorted(a.dp.bounds.items())
        )
        t.add_row(
            "differential privacy",
            f"epsilon {a.dp.epsilon_per_query:g} per query of {a.dp.total_epsilon:g}; at most "
            f"{a.dp.records_per_resident} record(s) per resident"
            + (f"; {bounds}" if bounds else ""),
        )
    if a.legal_instruments:
        t.add_row("legal instruments", ", ".join(sorted(a.legal_instruments)))
    return t


def _disclosure_line(a: Agreement) -> str:
    terms = a.disclosure_terms
    parts = [terms.regime.value]
    if terms.cell_key is not None:
        parts.append(
            f"counts move by at most {terms.cell_key.max_perturbation}, cells under "
            f"{terms.cell_key.small_cell_threshold} withheld"
        )
    if terms.regime is not Regime.DP:
        parts.append(
            f"sums withheld where {terms.dominance.n} contributors make over "
            f"{terms.dominance.percent:g}%"
        )
    extremes = sorted(f for fields in a.datasets.values() for f, t in fields.items() if t.extremes)
    if extremes:
        parts.append(f"min/max allowed on {', '.join(extremes)}")
    return "; ".join(parts)


@node_agreement_app.command("propose")
def propose(
    operator: OperatorOpt,
    provider: Annotated[
        str,
        typer.Option(help="The city providing the data (this city, or the city you ask for data)."),
    ],
    consumer: Annotated[str, typer.Option(help="The party receiving results (a partner or city).")],
    purpose: Annotated[list[str], typer.Option(help="Purpose code; repeatable.")],
    dataset: Annotated[str, typer.Option(help="Dataset name.")],
    field: Annotated[
        list[str],
        typer.Option(help="NAME=raw | NAME=aggregate_only | NAME=generalised:G1,G2; repeatable."),
    ],
    out: Annotated[Path, typer.Option(help="Where to write the signed proposal.")],
    agreement_id: Annotated[
        str | None, typer.Option("--id", help="Agreement id (default: PROVIDER--CONSUMER).")
    ] = None,
    version: Annotated[int, typer.Option(min=1, help="Version (a newer one supersedes).")] = 1,
    k: Annotated[int, typer.Option(min=1, help="Minimum cell size.")] = 10,
    valid_days: Annotated[int, typer.Option(min=1, help="Days in force from now.")] = 365,
    retention_days: Annotated[int, typer.Option(min=0, help="How long results may be kept.")] = 90,
    instrument: Annotated[
        list[str] | None, typer.Option(help="Legal instrument the transfer relies on; repeatable.")
    ] = None,
    dp_epsilon: Annotated[
        float | None,
        typer.Option(help="Differential privacy: epsilon each answer spends (with --dp-total)."),
    ] = None,
    dp_total: Annotated[
        float | None, typer.Option(help="Differential privacy: the agreement's total epsilon.")
    ] = None,
    dp_bound: Annotated[
        list[str] | None,
        typer.Option(help="NAME=LOW:HIGH clamp for sums of a field under DP; repeatable."),
    ] = None,
    dp_records_per_resident: Annotated[
        int,
        typer.Option(
            min=1, max=1000, help="Under DP, records of one resident an answer counts at most."
        ),
    ] = 1,
    regime: RegimeOpt = None,
    cell_key_max_perturbation: MaxPerturbationOpt = None,
    cell_key_small_cell_threshold: SmallCellOpt = None,
    dominance_n: DominanceNOpt = None,
    dominance_percent: DominancePercentOpt = None,
    extremes: ExtremesOpt = None,
) -> None:
    """Sign new terms as this city and write the proposal for the other party to countersign."""
    dp = _parse_dp(dp_epsilon, dp_total, dp_bound or [], dp_records_per_resident)
    disclosure = _parse_disclosure(
        regime,
        (cell_key_max_perturbation, cell_key_small_cell_threshold),
        (dominance_n, dominance_percent),
        dp,
    )
    now = timefmt.now()
    terms = Agreement(
        agreement_id=agreement_id or f"{provider}--{consumer}",
        version=version,
        provider=provider,
        consumer=consumer,
        purposes=frozenset(purpose),
        datasets={dataset: _with_extremes(dict(_parse_field(f) for f in field), extremes or [])},
        min_cell_size=k,
        valid_from=now,
        valid_until=now + timedelta(days=valid_days),
        retention_days=retention_days,
        legal_instruments=frozenset(instrument or []),
        dp=dp,
        disclosure=disclosure,
    )
    try:  # every check a received agreement gets (dp terms and regime agree, ...), before sending
        Agreement.from_payload(terms.to_payload())
    except VerificationError as e:
        raise fail(f"agreement terms: {e.message} ({e.reason})") from None
    _send_proposal(operator, terms, out)


def _send_proposal(operator: Path, terms: Agreement, out: Path) -> None:
    """Have the node sign `terms` as this city, write the proposal to `out` and say who is to
    countersign it; exits with status 1 if the node refuses, 2 if `out` cannot be written."""
    with _node(operator) as node:
        proposal = node.propose_agreement(terms)
    _write(out, proposal.to_json())
    console.print(_summary(terms, "proposed"))
    this_city = Section(load_toml(operator), operator).str("city")
    other = terms.consumer if this_city == terms.provider else terms.provider
    console.print(f"signed proposal written to {out}; send it to {other} to countersign")


@node_agreement_app.command("countersign")
def countersign(
    operator: OperatorOpt,
    proposal: Annotated[Path, typer.Argument(help="A proposal the other party signed.")],
    out: Annotated[
        Path | None,
        typer.Option(
            help="Where to write the countersigned agreement (default: PROPOSAL.signed.json)."
        ),
    ] = None,
) -> None:
    """Check the other party's signature, add this city's, and (as provider) put it in force."""
    with _node(operator) as node:
        signed = node.countersign_agreement(_read_envelope(proposal))
    target = out or proposal.with_suffix(".signed.json")
    _write(target, signed.envelope.to_json())
    console.print(_summary(agreement_doc.unverified_terms(signed.envelope), signed.status))
    console.print(f"countersigned agreement written to {target}")


@node_agreement_app.command("activate")
def activate(
    operator: OperatorOpt,
    agreement: Annotated[Path, typer.Argument(help="An agreement signed by both parties.")],
) -> None:
    """Put in force an agreement both parties signed (e.g. this city's proposal, countersigned)."""
    with _node(operator) as node:
        agreement_id, version = node.activate_agreement(_read_envelope(agreement))
    console.print(f"agreement {agreement_id} v{version} is in force")


@node_agreement_app.command("revoke")
def revoke(
    operator: OperatorOpt,
    agreement_id: Annotated[str, typer.Option("--id", help="The agreement to end.")],
    reason: Annotated[str, typer.Option(help="Why (kept in the signed revocation).")] = "",
    revocation: Annotated[
        Path | None,
        typer.Option(help="The consumer's signed revocation (from `citybroker agreement revoke`)."),
    ] = None,
) -> None:
    """End an agreement now: revoked by this city, or by the consumer's signed revocation."""
    with _node(operator) as node:
        signed = _read_envelope(revocation) if revocation is not None else None
        node.revoke_agreement(agreement_id, reason, signed)
    console.print(f"agreement {agreement_id} is revoked; queries under it are refused from now on")


@node_agreement_app.command("list")
def list_agreements(operator: OperatorOpt) -> None:
    """Every agreement of this city with its status."""
    with _node(operator) as node:
        held = node.list_agreements()
    table = Table(title="agreements")
    for col in ("agreement", "version", "status", "consumer", "purposes", "valid until"):
        table.add_column(col, overflow="fold")
    for item in held:
        a = agreement_doc.unverified_terms(item.envelope)
        table.add_row(
            a.agreement_id,
            str(a.version),
            item.status,
            a.consumer,
            ", ".join(sorted(a.purposes)),
            timefmt.fmt(a.valid_until),
        )
    console.print(table)


@node_agreement_app.command("show")
def show(
    operator: OperatorOpt,
    agreement_id: Annotated[str, typer.Option("--id", help="The agreement.")],
    odrl: Annotated[bool, typer.Option(help="Print it as an ODRL policy (JSON-LD).")] = False,
) -> None:
    """Show an agreement's terms and status, or its ODRL policy."""
    with _node(operator) as node:
        if odrl:
            print(node.agreement_odrl(agreement_id))
            return
        item = node.get_agreement(agreement_id)
    console.print(_summary(agreement_doc.unverified_terms(item.envelope), item.status))


@agreement_app.command("sign")
def sign_file(
    proposal: Annotated[Path, typer.Argument(help="An agreement proposal (DSSE JSON).")],
    key: Annotated[Path, typer.Option(help="Your Ed25519 private key (mode 600).")],
    out: Annotated[Path, typer.Option(help="Where to write the countersigned agreement.")],
) -> None:
    """Countersign a proposal as its other party (a partner, or a city without node access)."""
    env = _read_envelope(proposal)
    terms = _unverified_terms(proposal, env)
    console.print(_summary(terms, "you are signing these terms"))
    _write(out, env.countersigned(Signer.load(key)).to_json())
    console.print(f"countersigned agreement written to {out}; return it to {terms.provider}")


@agreement_app.command("revoke")
def revoke_file(
    agreement: Annotated[Path, typer.Argument(help="The agreement (DSSE JSON) to revoke.")],
    key: Annotated[Path, typer.Option(help="Your Ed25519 private key (mode 600).")],
    party: Annotated[str, typer.Option(help="Your party id (a party to the agreement).")],
    out: Annotated[Path, typer.Option(help="Where to write the signed revocation.")],
    reason: Annotated[str, typer.Option(help="Why.")] = "",
) -> None:
    """Sign a revocation as a party; the providing city's node applies it at once."""
    terms = _unverified_terms(agreement, _read_envelope(agreement))
    if party not in (terms.provider, terms.consumer):
        raise fail(f"{party} is not a party to agreement {terms.agreement_id}")
    revocation = agreement_doc.sign_revocation(terms, party, reason, Signer.load(key))
    _write(out, revocation.to_json())
    console.print(f"signed revocation written to {out}; send it to {terms.provider}")


@agreement_app.command("odrl")
def odrl_file(
    agreement: Annotated[Path, typer.Argument(help="An agreement (DSSE JSON).")],
) -> None:
    """Print an agreement file as an ODRL policy (JSON-LD), for dataspace connectors."""
    terms = _unverified_terms(agreement, _read_envelope(agreement))
    print(json.dumps(to_odrl(terms), indent=2))
