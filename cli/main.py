"""The `citybroker` command line."""

from __future__ import annotations

import csv
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from broker.config import BrokerConfig
from cli import resident_privacy, serving
from cli.agreements import agreement_app, node_agreement_app
from cli.key_commands import keys_app, trust_app
from cli.output import console, err, error, fail
from domain.authorisation import grant_for
from domain.errors import CallFailed, CitybrokerError
from domain.plan import QueryPlan
from domain.query import Dimension, Filter, FilterOp, Measure, MeasureKind, Query
from infra.config import load_toml
from infra.logs import LogFormat
from infra.private_files import restrict_new_files
from keys import timefmt, tokens
from keys.ed25519 import Signer
from keys.tokens import Call
from keys.trust import load_authority_key

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from broker.outcomes import FederationPlan
    from edge.partner_client import Answer, PartnerClient
    from node.consent_import import ImportReport, RowError

# Commands that serve, import or export import the node's, the broker's and the audit tools' modules
# inside themselves: those load SQLAlchemy, DuckDB and the servers, about 0.5 s that every
# `citybroker --help` would otherwise pay.

app = typer.Typer(
    help="citybroker: federated consent and data-sharing broker for cities.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
node_app = typer.Typer(help="Run and administer a city's node.", no_args_is_help=True)
broker_app = typer.Typer(help="Run a federation broker.", no_args_is_help=True)
app.add_typer(node_app, name="node")
app.add_typer(broker_app, name="broker")
node_app.add_typer(node_agreement_app, name="agreement")
app.add_typer(agreement_app, name="agreement")
audit_app = typer.Typer(help="Export and verify audit bundles, offline.", no_args_is_help=True)
app.add_typer(audit_app, name="audit")
app.add_typer(keys_app, name="keys")
app.add_typer(trust_app, name="trust")
_error, _fail = error, fail


@node_app.command("serve")
def node_serve(
    config: Annotated[Path, typer.Option(help="Node config file (TOML).")],
    log_format: serving.LogFormatOption = LogFormat.JSON,
) -> None:
    """Run a city's node until SIGTERM/SIGINT (calls in flight get shutdown_grace_s to finish)."""
    from edge.node_server import NodeServer
    from node.config import NodeConfig

    heap = serving.prepare(log_format)
    node = NodeServer(NodeConfig.load(config))
    grace, what = (
        node.config.shutdown_grace_s,
        f"node {node.config.city} serving on port {node.port}",
    )
    serving.until_signalled(node.start, node.stop, grace, what, heap)


node_consent_app = typer.Typer(help="Residents' consent records.", no_args_is_help=True)
node_app.add_typer(node_consent_app, name="consent")
node_consent_app.command("erase")(resident_privacy.erase)


class _ErrorReport:
    """The per-row error report: a CSV file created at the first failed row, so a clean run
    leaves none behind."""

    def __init__(self, path: Path, columns: Iterable[str]) -> None:
        self.path, self._columns = path, tuple(columns)
        self._file: Any = None
        self._write: Callable[[Iterable[object]], object] | None = None

    def add(self, e: RowError) -> None:
        """Write one failed row, creating the report first if this is the first."""
        if self._write is None:
            self._file = self.path.open("w", newline="", encoding="utf-8")
            self._write = csv.writer(self._file).writerow
            self._write(self._columns)
        self._write([e.row, e.record_id, e.reason, e.message])

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


def _with_progress(
    file: Path, started: float, run: Callable[[Callable[[ImportReport], None]], ImportReport]
) -> ImportReport:
    """Run an import, showing bytes read, rows and rows/s on stderr while it goes."""
    columns = (
        TextColumn("importing {task.description}"),
        BarColumn(),
        TextColumn("{task.fields[rows]:,} rows · {task.fields[rate]:,.0f} rows/s"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=err, transient=True) as bar:
        total = file.stat().st_size if file.is_file() else None
        task = bar.add_task(escape(file.name), total=total, rows=0, rate=0.0)

        def progress(r: ImportReport) -> None:
            rate = r.rows / max(time.monotonic() - started, 1e-6)
            bar.update(task, completed=r.bytes_read, rows=r.rows, rate=rate)

        return run(progress)


def _print_import_summary(file: Path, result: ImportReport, seconds: float) -> None:
    table = Table(title=escape(f"consent import of {file.name}"))
    table.add_column("rows")
    table.add_column("count", justify="right")
    table.add_row("read", f"{result.rows:,}")
    table.add_row("applied", f"{result.applied:,}")
    table.add_row("already applied (duplicates)", f"{result.duplicates:,}")
    for reason, count in sorted(result.errors.items()):
        table.add_row(f"[red]error {reason}[/]", f"{count:,}")
    console.print(table)
    rolled_back = f", {result.failed_batches} rolled back" if result.failed_batches else ""
    console.print(
        f"{result.rows:,} rows in {seconds:.1f} s ({result.rows / max(seconds, 1e-6):,.0f} rows/s), "
        f"{result.batches} batches{rolled_back}"
    )


@node_consent_app.command("import")
def node_consent_import(
    file: Annotated[Path, typer.Argument(help="Consent events: CSV with a header, or JSONL.")],
    config: Annotated[Path, typer.Option(help="Node config file (TOML).")],
    errors: Annotated[
        Path | None,
        typer.Option(help="Per-row error report to write if rows fail (default FILE.errors.csv)."),
    ] = None,
    batch_size: Annotated[
        int, typer.Option(help="Rows per transaction.", min=1, max=50_000)
    ] = 5000,
    format_: Annotated[
        str | None, typer.Option("--format", help="csv or jsonl (default: from the extension).")
    ] = None,
) -> None:
    """Import consent events in bulk, in file order, with the API's validation and receipts.

    Idempotent by record id (a second run applies nothing), one transaction per batch, and a bad
    row never stops the good ones. Exit status: 0 all applied, 1 some rows failed (see the error
    report), 2 unusable input.
    """
    from node.consent_import import (
        ERROR_REPORT_COLUMNS,
        ImportFormat,
        ImportLimits,
        InputError,
        import_file,
        open_rows,
    )

    try:
        fmt = ImportFormat(format_.lower()) if format_ else None
    except ValueError:
        raise _fail(f"--format must be csv or jsonl, not {format_!r}") from None
    report = _ErrorReport(errors or file.with_name(file.name + ".errors.csv"), ERROR_REPORT_COLUMNS)
    if not os.access(report.path.parent.resolve(), os.W_OK):
        raise _fail(f"cannot write the error report in {report.path.parent}")
    try:
        open_rows(file, fmt).close()  # unusable input fails here, before any output
    except InputError as e:
        raise _fail(e.message) from None
    started = time.monotonic()
    limits = ImportLimits(batch_size=batch_size)
    try:
        result = _with_progress(
            file,
            started,
            lambda progress: import_file(config, file, fmt, limits, report.add, progress),
        )
    except InputError as e:
        raise _fail(e.message) from None
    finally:
        report.close()
    _print_import_summary(file, result, time.monotonic() - started)
    if result.error_rows:
        console.print(
            escape(f"{result.error_rows:,} rows not applied; error report: {report.path}"),
            soft_wrap=True,
        )
        raise typer.Exit(1)


@broker_app.command("serve")
def broker_serve(
    config: Annotated[Path, typer.Option(help="Broker config file (TOML).")],
    log_format: serving.LogFormatOption = LogFormat.JSON,
) -> None:
    """Run a broker until SIGTERM/SIGINT (calls in flight get shutdown_grace_s to finish)."""
    from edge.broker_server import BrokerServer

    heap = serving.prepare(log_format)
    broker = BrokerServer(BrokerConfig.load(config))
    grace = broker.config.shutdown_grace_s
    what = f"broker {broker.config.broker_id} serving on port {broker.port}"
    serving.until_signalled(broker.start, broker.stop, grace, what, heap)


@app.command()
def health(
    address: Annotated[
        str, typer.Option(help="A node's or broker's health_listen address (plaintext, HOST:PORT).")
    ] = "127.0.0.1:7190",
    service: Annotated[str, typer.Option(help="A service name; '' is the whole server.")] = "",
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the answer.", min=0.1)] = 3.0,
) -> None:
    """Check a node or broker through gRPC health on its health_listen address: exit 0 when it
    reports SERVING, else 1 (as Docker's HEALTHCHECK expects)."""
    from edge.health import health_status

    status = health_status(address, service, timeout)
    print(f"{address}: {status}")
    if status != "SERVING":
        raise typer.Exit(1)


@app.command()
def demo(
    directory: Annotated[
        Path | None,
        typer.Option(
            "--dir", help="Empty directory to create the federation in (default: a new temp dir)."
        ),
    ] = None,
    serve: Annotated[
        bool,
        typer.Option(
            help="Leave the federation running and write DIR/demo.json for outside clients."
        ),
    ] = False,
    residents: Annotated[
        int, typer.Option(help="Synthetic residents per city.", min=50, max=1_000_000)
    ] = 600,
) -> None:
    """Create a local federation of three fictional cities, run example queries, verify them."""
    from cli import demo as demo_mod

    if serve:
        signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    demo_mod.run(directory, serve, residents, console)


@app.command()
def token(
    key: Annotated[Path, typer.Option(help="The partner's Ed25519 private key (PEM, mode 600).")],
    issuer: Annotated[str, typer.Option(help="The partner's id in the trust bundle.")],
    audience: Annotated[str, typer.Option(help="The broker's id.")],
    lifetime: Annotated[
        int, typer.Option(help="Seconds until expiry (at most 300).", min=1, max=300)
    ] = 120,
    call: Annotated[
        str | None,
        typer.Option(
            help="The call the token authorises: query, plan or describe "
            "(default: query when a query is given, else describe)."
        ),
    ] = None,
    query_json: Annotated[
        Path | None,
        typer.Option(
            help='The request body as protobuf JSON ({"query": {...}, "negotiate": …}), '
            "the file `buf curl -d @FILE` sends."
        ),
    ] = None,
    dataset: Annotated[str | None, typer.Option(help="As for `query`.")] = None,
    purpose: Annotated[str | None, typer.Option(help="As for `query`.")] = None,
    measure: Annotated[list[str] | None, typer.Option(help="As for `query`.")] = None,
    group_by: Annotated[list[str] | None, typer.Option(help="As for `query`.")] = None,
    filter_: Annotated[list[str] | None, typer.Option("--filter", help="As for `query`.")] = None,
    city: Annotated[list[str] | None, typer.Option(help="As for `query`.")] = None,
    negotiate: Annotated[
        bool, typer.Option(help="Let the broker coarsen the query (QueryRequest.negotiate).")
    ] = False,
) -> None:
    """Print a single-use partner token (EdDSA JWT) for `authorization: Bearer <token>`, bound to
    one call: describe, or a query or plan of exactly the query given (by the same options as
    `query`, or --query-json), at the cities it names."""
    q: Query | None = None
    if query_json is not None:
        q, negotiate = _query_of_request(query_json, negotiate)
    elif dataset is not None or purpose is not None or measure:
        q = _parsed_query(
            dataset or "", purpose or "", measure or [], group_by or [], filter_ or [], city or []
        )
    try:
        chosen = Call(call) if call is not None else Call.QUERY if q else Call.DESCRIBE
    except ValueError:
        raise _fail(f"--call {call!r}: use query, plan or describe") from None
    if (chosen is Call.DESCRIBE) != (q is None):
        raise _fail(
            "a describe token names no query"
            if q is not None
            else f"a {chosen.value} token names its query: give --dataset, --purpose and "
            "--measure (as for `query`) or --query-json FILE"
        )
    try:
        grant = grant_for(chosen, q.validate() if q else None, negotiate)
    except CitybrokerError as e:
        raise _fail(f"{e.reason}: {e.message}") from None
    print(tokens.issue(Signer.load(key), issuer, audience, grant, lifetime))


def _query_of_request(path: Path, negotiate: bool) -> tuple[Query, bool]:
    """The query and negotiate flag of a QueryRequest in protobuf JSON at `path`."""
    from edge.partner_client import query_of_request_json

    try:
        q, asked_to_negotiate = query_of_request_json(path.read_text())
    except OSError as e:
        raise _fail(f"cannot read {path}: {e.strerror}") from None
    except CitybrokerError as e:
        raise _fail(f"{path}: {e.reason}: {e.message}") from None
    return q, negotiate or asked_to_negotiate


def _parse_measure(text: str) -> Measure:
    kind, _, field = text.partition(":")
    try:
        return Measure(MeasureKind(kind), field)
    except ValueError:
        raise _fail(
            f"measure {text!r}: use one of {', '.join(m.value for m in MeasureKind)}, "
            "with :FIELD for sum/avg/min/max"
        ) from None


def _parse_dimension(text: str) -> Dimension:
    field, _, how = text.partition(":")
    return Dimension(field, how)


def _parse_filter(text: str) -> Filter:
    field, sep, values = text.partition("=")
    if not sep or not field:
        raise _fail(f"filter {text!r}: use FIELD=VALUE or FIELD=V1,V2")
    vals = tuple(values.split(","))
    return Filter(field, FilterOp.IN if len(vals) > 1 else FilterOp.EQUALS, vals)


@dataclass(frozen=True)
class _Connection:
    """The partner options of `query` and `describe`, as given (any may be missing)."""

    demo_json: Path | None
    broker: str | None
    broker_id: str | None
    partner: str | None
    key: Path | None
    ca: Path | None
    trust_bundle: Path | None
    authority_key: Path | None


def _client(given: _Connection) -> PartnerClient:
    """A partner client from the options, completed from --demo's demo.json where left out."""
    from edge.partner_client import PartnerClient

    c = given
    if c.demo_json is not None:
        try:
            info = json.loads(c.demo_json.read_text())
        except (OSError, ValueError) as e:
            raise _fail(f"cannot read {c.demo_json}: {e}") from None
        c = _Connection(
            c.demo_json,
            c.broker or info["broker"]["address"],
            c.broker_id or info["broker"]["id"],
            c.partner or info["partner"]["id"],
            c.key or Path(info["partner"]["private_key"]),
            c.ca or Path(info["ca_cert"]),
            c.trust_bundle or Path(info["trust_bundle"]),
            c.authority_key or Path(info["authority_key"]),
        )
    missing = [
        n
        for n, v in (
            ("--broker", c.broker),
            ("--broker-id", c.broker_id),
            ("--partner", c.partner),
            ("--key", c.key),
            ("--ca", c.ca),
            ("--trust-bundle", c.trust_bundle),
            ("--authority-key", c.authority_key),
        )
        if v is None
    ]
    if missing:
        raise _fail(f"missing {', '.join(missing)} (or give --demo DIR/demo.json)")
    assert c.broker and c.broker_id and c.partner and c.key and c.ca
    assert c.trust_bundle and c.authority_key
    return PartnerClient.connect(
        c.broker, c.broker_id, c.partner, Signer.load(c.key), c.ca, c.trust_bundle, c.authority_key
    )


DemoOpt = Annotated[
    Path | None, typer.Option("--demo", help="demo.json written by `citybroker demo --serve`.")
]
BrokerOpt = Annotated[str | None, typer.Option(help="Broker address HOST:PORT.")]
BrokerIdOpt = Annotated[str | None, typer.Option(help="Broker id (the token audience).")]
PartnerOpt = Annotated[str | None, typer.Option(help="Your partner id.")]
KeyOpt = Annotated[Path | None, typer.Option(help="Your Ed25519 private key.")]
CaOpt = Annotated[Path | None, typer.Option(help="Federation CA certificate (PEM).")]
BundleOpt = Annotated[Path | None, typer.Option(help="Signed federation trust bundle.")]
AuthorityOpt = Annotated[Path | None, typer.Option(help="Federation authority public key.")]


@app.command()
def query(
    dataset: Annotated[str, typer.Option(help="Dataset name, such as mobility.")],
    purpose: Annotated[str, typer.Option(help="Purpose code, such as urban-mobility-planning.")],
    measure: Annotated[
        list[str],
        typer.Option(help="count_records, count_residents, or sum|avg|min|max:FIELD; repeatable."),
    ],
    group_by: Annotated[
        list[str] | None,
        typer.Option(help="FIELD or FIELD:GENERALISATION (e.g. trip_date:month); repeatable."),
    ] = None,
    filter_: Annotated[
        list[str] | None, typer.Option("--filter", help="FIELD=VALUE[,VALUE…]; repeatable.")
    ] = None,
    city: Annotated[
        list[str] | None, typer.Option(help="City to ask; repeatable (default: all).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
    negotiate: Annotated[
        bool,
        typer.Option(
            help="Let the broker coarsen generalisations to the "
            "finest shape every asked city allows."
        ),
    ] = False,
    dry_run: Annotated[
        bool,
        typer.Option(
            help="Only show each city's plan and the negotiated shape (PlanQuery); no data is read."
        ),
    ] = False,
    demo_json: DemoOpt = None,
    broker: BrokerOpt = None,
    broker_id: BrokerIdOpt = None,
    partner: PartnerOpt = None,
    key: KeyOpt = None,
    ca: CaOpt = None,
    trust_bundle: BundleOpt = None,
    authority_key: AuthorityOpt = None,
) -> None:
    """Ask the federation a question as a partner, and verify every signature in the answer."""

    q = _parsed_query(dataset, purpose, measure, group_by or [], filter_ or [], city or [])
    connection = _Connection(
        demo_json, broker, broker_id, partner, key, ca, trust_bundle, authority_key
    )
    _ask(connection, q, negotiate=negotiate, dry_run=dry_run, as_json=as_json)


def _parsed_query(
    dataset: str,
    purpose: str,
    measures: list[str],
    group_by: list[str],
    filters: list[str],
    cities: list[str],
) -> Query:
    """The query the options describe, not yet validated; exits with status 2 on a measure or
    filter it cannot parse."""
    return Query(
        dataset,
        purpose,
        tuple(_parse_measure(m) for m in measures),
        tuple(_parse_dimension(d) for d in group_by),
        tuple(_parse_filter(f) for f in filters),
        tuple(cities),
    )


def _ask(connection: _Connection, q: Query, negotiate: bool, dry_run: bool, as_json: bool) -> None:
    """Validate `q`, send it (or with `dry_run` only plan it) and print the verified answer or the
    plan; exits with status 1 if the broker refuses."""
    try:
        q.validate()
        with _client(connection) as client:
            if dry_run and as_json:
                print(client.plan_json(q))
                return
            if dry_run:
                _print_plan(client.plan(q))
                return
            answer = client.query(q, negotiate=negotiate)
    except CallFailed as e:
        raise _refused(e) from None
    if as_json:
        _print_answer_json(answer)
    else:
        _print_answer(answer, q)


def _refused(e: CallFailed) -> typer.Exit:
    """Print the broker's refusal; the caller raises what this returns, to exit with status 1."""
    return _fail(f"the broker refused: {e.error.code} {e.error.reason}: {e.error.message}", 1)


def _print_answer_json(answer: Answer) -> None:
    print(
        json.dumps(
            {
                "query_id": answer.query_id,
                "cells": [
                    {
                        "key": c.key,
                        "values": c.values,
                        "withheld": c.withheld,
                        "contributing": c.contributing,
                        "withholding": c.withholding,
                    }
                    for c in answer.cells
                ],
                "cities": [c.__dict__ for c in answer.cities],
                "signatures_verified": answer.signatures_verified,
            },
            indent=2,
        )
    )


def _print_answer(answer: Answer, q: Query) -> None:
    names = [m.name for m in q.measures]
    dims = [d.field for d in q.group_by]
    table = Table(title=f"{q.dataset} for {q.purpose}")
    for d in dims:
        table.add_column(d)
    for n in names:
        table.add_column(n, justify="right")
    table.add_column("cities")
    for c in answer.cells:
        table.add_row(
            *(c.key.get(d, "") for d in dims),
            *("withheld" if c.withheld else f"{c.values[n]:g}" for n in names),
            ", ".join(c.contributing)
            + (f" (withheld by {', '.join(c.withholding)})" if c.withholding else ""),
        )
    console.print(table)
    for city in answer.cities:
        if city.status != "answered":
            line = escape(f"{city.city}: {city.status} {city.code} {city.reason} {city.message}")
            console.print(f"[yellow]{line}[/]")
    for note in answer.negotiation:
        console.print(f"negotiated: {escape(note)}")
    console.print(f"verified {answer.signatures_verified} signatures")


def _print_plan(plan: FederationPlan) -> None:
    table = Table(title="Plan (dry run)")
    for col in ("city", "would answer", "why not", "agreement", "k", "epsilon"):
        table.add_column(col, overflow="fold")
    for c in plan.cities:
        p = c.plan or QueryPlan(allowed=False)
        table.add_row(
            c.city,
            "yes" if p.allowed else "no",
            escape(f"{p.reason} {p.message}".strip() or c.outcome.reason),
            f"{p.agreement_id} v{p.agreement_version}" if p.agreement_id else "",
            str(p.min_cell_size or ""),
            f"{p.epsilon_per_query:g}" if p.epsilon_per_query else "",
        )
    console.print(table)
    dims = ", ".join(
        f"{d.field}:{d.generalisation}" if d.generalisation else d.field
        for d in plan.negotiated.group_by
    )
    console.print(f"negotiated group-by: {dims or '(none)'}")
    for note in plan.notes:
        console.print(f"  {escape(note)}")


@app.command()
def describe(
    demo_json: DemoOpt = None,
    broker: BrokerOpt = None,
    broker_id: BrokerIdOpt = None,
    partner: PartnerOpt = None,
    key: KeyOpt = None,
    ca: CaOpt = None,
    trust_bundle: BundleOpt = None,
    authority_key: AuthorityOpt = None,
) -> None:
    """Show what each city lets you ask under agreements in force (BrokerService.DescribeFederation)."""

    connection = _Connection(
        demo_json, broker, broker_id, partner, key, ca, trust_bundle, authority_key
    )
    try:
        with _client(connection) as client:
            offers = client.describe_federation()
    except CallFailed as e:
        raise _refused(e) from None
    table = Table(title="What you may ask")
    for col in ("city", "agreement", "purposes", "dataset", "fields", "k", "valid until"):
        # Fold, never cut: ids and purpose codes are what the partner copies into a query.
        table.add_column(col, overflow="fold")
    for offer in offers:
        if offer.outcome.status != "answered":
            table.add_row(offer.city, f"[yellow]{offer.outcome.code} {offer.outcome.reason}[/]")
        for a, _ in offer.agreements:
            for dataset, terms in sorted(a.datasets.items()):
                fields = ", ".join(
                    f"{name} ({t.appearance.value}"
                    + (f": {'/'.join(sorted(t.generalisations))}" if t.generalisations else "")
                    + ")"
                    for name, t in sorted(terms.items())
                )
                table.add_row(
                    offer.city,
                    f"{a.agreement_id} v{a.version}",
                    ", ".join(sorted(a.purposes)),
                    dataset,
                    fields,
                    str(a.min_cell_size),
                    timefmt.fmt(a.valid_until),
                )
    console.print(table)


@audit_app.command("export")
def audit_export(
    config: Annotated[Path, typer.Option(help="The node's or broker's config file (TOML).")],
    out: Annotated[Path, typer.Option(help="New directory to write the bundle into.")],
    include_personal_data: Annotated[
        str | None,
        typer.Option(
            help="Name the auditor to export residents' personal data for: the statements and "
            "salts behind the log's commitments. By default the bundle holds commitments only."
        ),
    ] = None,
) -> None:
    """Write a node's or broker's log, checkpoints, trust bundles and agreements as a bundle."""
    from infra import storage

    if out.exists():
        raise _fail(f"{out} already exists; choose a new directory")
    party, role, url = _exporting_party(config)
    engine = storage.create_engine(url)
    committed = resident_privacy.commitment_export(engine, party, role, include_personal_data)
    size = _export_bundle(engine, out, party, role, committed)
    engine.dispose()
    console.print(escape(f"exported {size} entries of {role} {party} to {out}"), soft_wrap=True)
    if include_personal_data:
        console.print(
            escape(f"with residents' personal data, for auditor {include_personal_data}"),
            soft_wrap=True,
        )


def _exporting_party(config: Path) -> tuple[str, str, str]:
    """The party id, role ("node" or "broker") and database URL of a node's or broker's config;
    exits with status 2 if the config is neither."""
    from node.config import NodeConfig

    data = load_toml(config)
    if "city" in data:
        node = NodeConfig.load(config)
        return node.city, "node", node.database
    if "broker" in data:
        brk = BrokerConfig.load(config)
        return brk.broker_id, "broker", brk.database
    raise _fail(f"{config} is neither a node config (city = ...) nor a broker config")


def _export_bundle(
    engine: Engine, out: Path, party: str, role: str, committed: dict[str, Any] | None = None
) -> int:
    """Export the party's log with its cosignatures, trust bundles and (for a node) agreements to
    the new directory `out`, showing progress on stderr; returns how many entries it holds."""
    from audit import bundle, trust_history

    cosignatures = _cosignatures(engine)
    agreements = _agreement_envelopes(engine) if role == "node" else []
    with Progress(console=err, transient=True) as bar:
        task = bar.add_task("exporting entries", total=None)
        spec = bundle.ExportSpec(
            origin=f"citybroker/{role}/{party}",
            party=party,
            role=role,
            trust_envelopes=trust_history.envelopes(engine),
            agreement_envelopes=agreements,
            cosignatures=cosignatures,
            **(committed or {}),
        )
        return bundle.export(
            engine,
            out,
            spec,
            progress=lambda done, total: bar.update(task, completed=done, total=total),
        )


def _cosignatures(engine: Engine) -> list[tuple[int, str, str]]:
    """Every stored witness cosignature as (tree size, witness, cosignature line), in that order."""
    import sqlalchemy as sa

    from audit.schema import log_cosignatures

    c = log_cosignatures.c
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(c.tree_size, c.witness, c.cosignature).order_by(c.tree_size, c.witness)
        )
        return [(r[0], r[1], r[2]) for r in rows]


def _agreement_envelopes(engine: Engine) -> list[tuple[str, int, bytes]]:
    """Every agreement version a node holds, as (agreement id, version, signed envelope)."""
    import sqlalchemy as sa

    from node.schema import agreements as agreements_table

    c = agreements_table.c
    with engine.connect() as conn:
        rows = conn.execute(sa.select(c.agreement_id, c.version, c.envelope))
        return [(r[0], r[1], bytes(r[2])) for r in rows]


@audit_app.command("verify")
def audit_verify(
    bundles: Annotated[list[Path], typer.Argument(help="Bundle directories (node and broker).")],
    authority_key: Annotated[
        Path,
        typer.Option(
            help="The federation authority's public key, "
            "obtained out of band (never from a bundle)."
        ),
    ],
    report: Annotated[Path | None, typer.Option(help="Also write a JSON report here.")] = None,
    party: Annotated[
        list[str] | None,
        typer.Option(
            help="Expect a bundle of this party (repeatable); by default, of every city and "
            "broker in the trust bundle in force."
        ),
    ] = None,
    exclude: Annotated[
        list[str] | None,
        typer.Option(help="Leave this party's log out of the verification (repeatable)."),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the JSON report instead of tables.")
    ] = False,
) -> None:
    """Verify bundles offline: signatures, checkpoints, agreements, receipts against results,
    every party's log as long as the others saw it, and a bundle of every party expected."""
    from audit.verifier import BundleError, verify_bundles
    from cli.audit_report import failure_json, print_coverage

    authority = load_authority_key(authority_key)
    try:
        with Progress(console=err, transient=True) as bar:
            tasks = {p: bar.add_task(f"verifying {p}", total=None) for p in bundles}
            result = verify_bundles(
                bundles,
                authority,
                lambda p, done, total: bar.update(tasks[p], completed=done, total=total),
                parties=party or None,
                exclude=exclude or (),
            )
    except BundleError as e:
        failed = json.dumps(failure_json(e), indent=2)
        if report:
            report.write_text(failed)
        if as_json:
            typer.echo(failed)
        raise _fail(f"verification failed: {e.message} ({e.reason})", 1) from None
    if report:
        report.write_text(json.dumps(result.to_json(), indent=2))
    if as_json:
        typer.echo(json.dumps(result.to_json(), indent=2))
        return
    table = Table(title="Audit bundles verified")
    for col in ("bundle", "log", "entries", "signatures", "checkpoints", "results", "receipts"):
        table.add_column(col)
    for b in result.bundles:
        table.add_row(
            escape(str(b.path)),
            escape(b.origin),
            str(b.size),
            str(b.signatures_verified),
            str(b.checkpoints_verified),
            str(b.result_count),
            str(b.receipt_count),
        )
    console.print(table)
    print_coverage(console, result.coverage)
    console.print(f"[bold green]OK[/]: {result.signatures_verified} signatures verified")


def main() -> None:
    """Run the command line; a CitybrokerError a command lets through is printed as one error
    line (message and reason) and exits with status 2. Whatever a command writes (databases,
    logs, exports, the demo's keys and certificates) is readable by its owner only."""
    restrict_new_files()
    try:
        app()
    except CitybrokerError as e:
        _error(f"{e.message} ({e.reason})")
        sys.exit(2)


if __name__ == "__main__":
    main()
