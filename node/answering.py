"""How a node answers a broker: trust nothing the broker says until it is proven.

For every request the node checks that the mTLS peer is the broker that signed it, verifies the
broker's signature and the partner's token itself, consumes the token once, decides under its own
agreements, filters by consent, aggregates with suppression, signs, and logs before it replies.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from audit.log import MerkleLog, SideWrite
from domain import authorisation, freshness, statements
from domain.agreement import Agreement, DpTerms
from domain.errors import (
    AuthenticationError,
    CallerGone,
    CitybrokerError,
    Conflict,
    PermissionDenied,
)
from domain.kinds import LogKind, Statement
from domain.plan import QueryPlan
from domain.query import Query, QueryKind
from infra import logs
from infra.consumed_tokens import ConsumedTokens
from infra.limits import LimitsConfig
from keys import dsse, timefmt, tokens
from keys.ed25519 import Signer
from keys.trust import TrustStore
from node import aggregate, policy, privacy, regimes, taxonomy
from node.agreements import AgreementRegister
from node.catalogue import Catalogue
from node.exchange_evidence import ExchangeEvidence
from node.partner_limits import PartnerGate
from node.release_guard import Asked, Guarded, ReleaseGuard
from node.schema import resident_numbers
from node.secrets import NodeSecret
from node.transfers import TransferRules
from node.transparency import Exchange, ExchangeRecorder


@dataclass(frozen=True)
class NodeSettings:
    """The city's party id, the smallest k it answers with whatever an agreement says, and the
    per-partner limits for partners whose agreements set none."""

    city: str
    k_floor: int = 5
    limits: LimitsConfig = LimitsConfig()
    # How far a broker's clock may be ahead of this node's (or behind, beyond a token's lifetime).
    clock_skew_s: int = tokens.CLOCK_SKEW_S


@dataclass(frozen=True)
class NodeParts:
    """What a city answers with: its settings, key and trust store, its agreements, catalogue
    and transfer rules, its data and consent databases, its log and exchange recorder."""

    settings: NodeSettings
    signer: Signer
    trust: TrustStore
    agreements: AgreementRegister
    catalogue: Catalogue
    data: sa.Engine
    consents: sa.Engine
    log: MerkleLog
    exchanges: ExchangeRecorder
    transfers: TransferRules


@dataclass(frozen=True)
class _Permitted:
    """One query this city may answer: under which agreement and k, how it scans the data, and
    where the data comes from and goes to (provider, recipient jurisdictions)."""

    request: statements.BrokerRequest
    agreement: Agreement
    k: int
    scan: aggregate.Scan
    jurisdictions: tuple[str, str]


@dataclass(frozen=True)
class _Release:
    """A signed result and what the transparency record needs about it."""

    result: dsse.Envelope
    query: Query
    agreement: Agreement
    at: datetime
    contributors: sa.Select[Any] | None
    # Parameters the contributors statement is executed with (a cached statement binds late).
    contributors_params: dict[str, Any] | None = None
    # The privacy budget this answer spends, booked in the transaction that logs it.
    charge: privacy.Charge | None = None
    # The contributors, when the aggregate's own scan computed them (`contributors` is not run).
    contributor_bitmap: bytes | None = None
    # The cells the differencing guard let through (regime exact), recorded when released.
    guarded: Guarded | None = None


# Answers of one query when others keep spending the same privacy budget under it.
_BUDGET_ATTEMPTS = 8
# Conflicts in the log's transaction that answering again resolves: another answer spent the
# same privacy budget, or was released to the same partner (node.release_history).
_ANSWER_AGAIN = ("BUDGET_CHANGED", "RELEASE_HISTORY_CHANGED")


def _then(first: SideWrite, then: SideWrite) -> SideWrite:
    def write(conn: sa.Connection, first_index: int) -> None:
        first(conn, first_index)
        then(conn, first_index)

    return write


def _charged(charge: privacy.Charge, record: SideWrite) -> SideWrite:
    def write(conn: sa.Connection, first_index: int) -> None:
        charge.write(conn)
        record(conn, first_index)

    return write


# Whether the caller has stopped waiting for the answer (edge.node_service asks gRPC).
Cancelled = Callable[[], bool]


def _never() -> bool:
    return False


def _stop_if(cancelled: Cancelled) -> None:
    if cancelled():
        raise CallerGone("the broker stopped waiting for this answer")


class Answerer:
    """Answers, plans and describes for brokers; see the module docstring."""

    def __init__(self, parts: NodeParts) -> None:
        self._ledger = privacy.BudgetLedger(parts.consents)
        self._s, self._signer, self._trust = parts.settings, parts.signer, parts.trust
        # Keys pseudonyms and observational cell keys: unlike the signing key, it never rotates.
        self._secret = NodeSecret(parts.consents)
        self._agreements, self._catalogue = parts.agreements, parts.catalogue
        self._data, self._consents, self._log = parts.data, parts.consents, parts.log
        self._exchanges, self._transfers = parts.exchanges, parts.transfers
        self._provider = policy.Provider(parts.settings.city, parts.catalogue, parts.transfers)
        # Statements compiled for this node's data engine, and what its answers taught.
        self._compiler = aggregate.QueryCompiler()
        # The differencing guard and its release history, in the node's database (regime exact).
        self._guard = ReleaseGuard(parts.consents)
        # Consumed partner tokens, in the node's own database: single use survives restarts.
        self._consumed = ConsumedTokens(parts.consents)
        # Exchanges about single residents are logged as commitments (node.exchange_evidence).
        self._evidence = ExchangeEvidence(parts.settings.city, parts.signer)
        self._gate = PartnerGate(
            parts.settings.limits,
            lambda partner, at: (a.verified for a in parts.agreements.in_force_for(partner, at)),
        )

    def _authenticate(
        self, envelope: dsse.Envelope, thing: str, peers: Sequence[str]
    ) -> statements.BrokerRequest:
        bundle = self._trust.current
        freshness.check_payload(envelope.payload, timefmt.now(), self._s.clock_skew_s)
        request = statements.verify_request(envelope, thing, bundle)
        if request.broker not in peers:
            raise AuthenticationError(
                f"request signed by {request.broker} arrived from {', '.join(peers) or 'nobody'}",
                reason="BROKER_MISMATCH",
            )
        token = tokens.verify(request.token, bundle, audience=request.broker)
        if token.issuer != request.partner:
            raise AuthenticationError(
                "the partner token was issued by another party", reason="TOKEN_PARTNER_MISMATCH"
            )
        # The partner's authority, checked here and not taken from the broker.
        authorisation.check_request(token, thing, request, self._s.city)
        self._consumed.consume(token, use=thing)
        return request

    def run_query(
        self, envelope: dsse.Envelope, peers: Sequence[str], cancelled: Cancelled = _never
    ) -> tuple[dsse.Envelope, int, bytes]:
        """Answer, or refuse; either way the query and the signed outcome are logged first.
        `cancelled` says whether the broker has stopped waiting; if so, nothing is released.
        Returns the signed result, its log index and the salt of its commitment (empty when it
        is logged whole: node.exchange_evidence)."""
        request = self._authenticate(envelope, statements.QUERY, peers)
        logs.bind_exchange(request.request_id)  # verified: the broker's id of this exchange
        # One data connection for answering and for the transparency record: consents pushed
        # into a separate data database live in that connection's session. Over the partner's
        # limits, refused before any work and not logged (node.partner_limits).
        with self._gate.admit(request.partner), self._data.connect() as data:
            return self._run(request, envelope, data, cancelled)

    def _run(
        self,
        request: statements.BrokerRequest,
        envelope: dsse.Envelope,
        data: sa.Connection,
        cancelled: Cancelled,
    ) -> tuple[dsse.Envelope, int, bytes]:
        try:
            return self._release(request, envelope, data, cancelled)
        except CallerGone:
            raise  # nothing was released or logged; the broker no longer listens
        except CitybrokerError as refusal:
            signed = statements.sign_refusal(
                request,
                self._s.city,
                refusal.code.name,
                refusal.reason,
                refusal.message,
                self._signer,
            )
            logged = self._evidence.entries(request, envelope, signed, Statement.REFUSAL)
            index = self._log.append_many(
                logged.entries, kind=LogKind.REFUSAL, side_write=logged.side_write
            )
            refusal.metadata["log_index"] = str(index[1])
            raise

    def _release(
        self,
        request: statements.BrokerRequest,
        envelope: dsse.Envelope,
        data: sa.Connection,
        cancelled: Cancelled,
    ) -> tuple[dsse.Envelope, int, bytes]:
        """Answer, and commit the log entries, the transparency record and the privacy budget
        spent in one transaction (one fsync). A signed result states the budget left, so when
        another answer spent the same budget meanwhile, this one is answered again."""
        for attempt in range(1, _BUDGET_ATTEMPTS + 1):
            _stop_if(cancelled)
            release = self._answer(request, data)
            record = self._exchanges.side_write(
                Exchange(
                    request.request_id,
                    request.partner,
                    release.query.purpose,
                    release.query.dataset,
                    release.agreement.agreement_id,
                    release.agreement.version,
                    release.at,
                    log_index=-1,
                ),
                release.contributors,
                data,
                result_offset=1,
                params=release.contributors_params,
                contributor_bitmap=release.contributor_bitmap,
            )
            side = record if release.charge is None else _charged(release.charge, record)
            if release.guarded is not None:
                side = _then(release.guarded.side_write(), side)
            logged = self._evidence.entries(request, envelope, release.result, Statement.RESULT)
            if logged.side_write is not None:
                side = _then(side, logged.side_write)
            # The last moment to drop it: once logged, it is released (if not delivered).
            _stop_if(cancelled)
            try:
                indexes = self._log.append_many(
                    logged.entries, kind=LogKind.EXCHANGE, side_write=side
                )
            except Conflict as e:
                if e.reason not in _ANSWER_AGAIN or attempt == _BUDGET_ATTEMPTS:
                    raise
                continue
            return release.result, indexes[1], logged.outcome_salt
        raise AssertionError("unreachable")

    def _jurisdiction(self, party_id: str) -> str:
        party = self._trust.current.party(party_id)
        return party.jurisdiction if party else ""

    def _recipients(self, partner: str) -> tuple[str, ...]:
        """The partner by name and every recipient category the trust bundle puts it in."""
        party = self._trust.current.party(partner)
        categories = party.categories if party else ()
        return (partner, *(taxonomy.CATEGORY_PREFIX + c for c in categories))

    def _answer(self, request: statements.BrokerRequest, conn: sa.Connection) -> _Release:
        query = request.query
        assert query is not None
        if query.cities and self._s.city not in query.cities:
            raise PermissionDenied(
                f"the query does not ask {self._s.city}", reason="CITY_NOT_ASKED"
            )
        permitted = self._permitted(request, query, timefmt.now())
        scan = permitted.scan
        if query.kind is QueryKind.ATTRIBUTE_CHECK:
            return self._check_attribute(permitted, conn)
        if scan.cell_keys and scan.ds.resident_linked and not scan.pushed:
            # The consenting residents' cell keys, drawn once; the mirror has them when pushed.
            aggregate.key_consenting(self._consents, query.purpose, scan.ds.data_category)
        if scan.pushed:
            aggregate.push_consenting(
                conn, self._consents, query.purpose, scan.recipients, scan.ds.data_category, scan.at
            )
        if query.kind is QueryKind.RECORD_RELEASE:
            return self._release_records(permitted, conn)
        return self._aggregate(permitted, conn)

    def _permitted(
        self, request: statements.BrokerRequest, query: Query, started: datetime
    ) -> _Permitted:
        """The policy decision, and how the permitted query is answered; or the refusal."""
        permit = policy.decide(
            query,
            request.partner,
            (a.verified for a in self._agreements.in_force_for(request.partner, started)),
            started,
            self._provider,
            self._jurisdiction(request.partner),
        )
        agreement, terms = permit.agreement, permit.agreement.dp
        k = regimes.k_for(agreement, self._s.k_floor)
        ds = self._catalogue.datasets[query.dataset]
        jurisdictions = (self._transfers.home, self._jurisdiction(request.partner))
        if terms is not None:
            privacy.check_query(query, terms)
        scan = aggregate.Scan(
            query,
            ds,
            self._recipients(request.partner),
            started,
            pushed=ds.resident_linked and self._data is not self._consents,
            bounds=tuple(sorted((f, lo, hi) for f, (lo, hi) in terms.bounds.items()))
            if terms
            else (),
            per_resident=terms.records_per_resident if terms and ds.resident_linked else 0,
            cell_keys=regimes.uses_cell_keys(agreement),
            dominance=regimes.dominance(agreement),
        )
        return _Permitted(request, agreement, k, scan, jurisdictions)

    def _sign(
        self,
        permitted: _Permitted,
        cells: list[dict[str, Any]],
        withheld: list[dict[str, str]],
        spent: dict[str, Any] | None = None,
        records: list[dict[str, Any]] | None = None,
    ) -> dsse.Envelope:
        agreement = permitted.agreement
        return statements.sign_result(
            permitted.request,
            statements.UnsignedResult(
                self._s.city,
                (agreement.agreement_id, agreement.version),
                permitted.k,
                cells,
                withheld,
                permitted.jurisdictions,
                spent,
                records,
                disclosure=regimes.statement(agreement),
            ),
            self._signer,
        )

    def _check_attribute(self, permitted: _Permitted, conn: sa.Connection) -> _Release:
        scan = permitted.scan
        query = scan.query
        with self._consents.connect() as consents:
            if not aggregate.has_consent(
                consents,
                query.subject,
                query.purpose,
                scan.recipients,
                scan.ds.data_category,
                scan.at,
            ):
                raise PermissionDenied(
                    "this resident gave no valid consent for this purpose and recipient",
                    reason="CONSENT_MISSING",
                )
        match = aggregate.attribute_check(conn, query, scan.ds, scan.at)
        result = self._sign(
            permitted, [{"key": {}, "values": {"match": int(match)}, "records": 0}], []
        )
        return _Release(
            result,
            query,
            permitted.agreement,
            scan.at,
            sa.select(sa.literal(query.subject, type_=sa.String)),
        )

    def _release_records(self, permitted: _Permitted, conn: sa.Connection) -> _Release:
        agreement, scan = permitted.agreement, permitted.scan
        # A pseudonym key per agreement, so releases under different agreements never link.
        key = self._secret.derive(
            f"citybroker pseudonyms\0{agreement.agreement_id}\0{agreement.version}".encode()
        )
        released = aggregate.release_records(conn, scan, key)
        result = self._sign(permitted, [], [], records=released)
        return _Release(
            result,
            scan.query,
            agreement,
            scan.at,
            aggregate.contributors(scan, conn.dialect.name, []),
        )

    def _aggregate(self, permitted: _Permitted, conn: sa.Connection) -> _Release:
        agreement, scan = permitted.agreement, permitted.scan
        terms = agreement.dp
        # Under the guard (regime exact) node.cell_sets computes each cell's contributors, and
        # the transparency bitmap from them: the aggregate's own bitmaps would be a second copy.
        bitmaps = not self._guard.applies(agreement)
        answer = self._compiler.run(conn, scan, permitted.k, bitmaps=bitmaps)
        answer, guarded = self._guarded(permitted, conn, answer)
        cells: list[dict[str, Any]] = [
            {"key": c.key, "values": c.values, "records": c.records} for c in answer.cells
        ]
        if scan.cell_keys:
            secret = regimes.observational_secret(self._secret, scan.ds.name)
            cells = regimes.perturb(answer.cells, scan, agreement, secret)
        charge = spend = None
        if terms is not None:
            # Quoted now (an exhausted budget refuses the answer), booked when it is released.
            charge = self._ledger.quote(agreement, permitted.request.request_id)
            spend = charge.spend()
            _add_noise(cells, scan, terms, spend.epsilon)
        result = self._sign(
            permitted,
            cells,
            answer.withheld,
            spend.statement(scan.per_resident or None) if spend else None,
        )
        if answer.contributor_bitmap is not None:
            return _Release(
                result,
                scan.query,
                agreement,
                scan.at,
                None,
                charge=charge,
                contributor_bitmap=answer.contributor_bitmap,
                guarded=guarded,
            )
        contributors = self._compiler.contributors_statement(
            scan, conn.dialect.name, answer.withheld
        )
        if contributors is None:
            return _Release(
                result, scan.query, agreement, scan.at, None, charge=charge, guarded=guarded
            )
        return _Release(
            result, scan.query, agreement, scan.at, *contributors, charge=charge, guarded=guarded
        )

    def _guarded(
        self, permitted: _Permitted, conn: sa.Connection, answer: aggregate.AggregateResult
    ) -> tuple[aggregate.AggregateResult, Guarded | None]:
        """The differencing guard (regime exact, node.release_guard): `answer` with the cells
        that would expose a group against earlier answers withheld, and what to record."""
        if not self._guard.applies(permitted.agreement):
            return answer, None
        numbers = (
            resident_numbers if self._data is self._consents else aggregate.mirrored_numbers(conn)
        )
        asked = Asked(
            permitted.request.partner,
            permitted.agreement,
            permitted.request.request_id,
            permitted.scan,
            permitted.k,
        )
        return self._guard.apply(asked, conn, answer, numbers)

    def plan(self, envelope: dsse.Envelope, peers: Sequence[str]) -> QueryPlan:
        """A dry run: would this city answer, and under which terms? No data is read."""
        request = self._authenticate(envelope, statements.PLAN, peers)
        with self._gate.admit(request.partner):
            return self._plan(request)

    def _plan(self, request: statements.BrokerRequest) -> QueryPlan:
        query = request.query
        assert query is not None
        at = timefmt.now()
        in_force = [a.verified for a in self._agreements.in_force_for(request.partner, at)]
        covering = sorted(
            (a for a in in_force if query.purpose in a.purposes and query.dataset in a.datasets),
            key=lambda a: (a.agreement_id, -a.version),
        )
        terms = covering[0] if covering else None
        try:
            permit = policy.decide(
                query,
                request.partner,
                in_force,
                at,
                self._provider,
                self._jurisdiction(request.partner),
            )
            terms, refusal = permit.agreement, None
        except CitybrokerError as e:
            refusal = e
        if terms is None:  # no agreement covers purpose and dataset: decide refused
            assert refusal is not None
            return QueryPlan(False, refusal.code.name, refusal.reason, refusal.message)
        return QueryPlan(
            allowed=refusal is None,
            code=refusal.code.name if refusal else "",
            reason=refusal.reason if refusal else "",
            message=refusal.message if refusal else "",
            agreement_id=terms.agreement_id,
            agreement_version=terms.version,
            fields=dict(terms.datasets[query.dataset]),
            min_cell_size=regimes.k_for(terms, self._s.k_floor),
            epsilon_per_query=terms.dp.epsilon_per_query if terms.dp else 0.0,
        )

    def describe_offer(self, envelope: dsse.Envelope, peers: Sequence[str]) -> list[dsse.Envelope]:
        """The envelopes of the agreements in force with the request's partner."""
        request = self._authenticate(envelope, statements.DESCRIBE, peers)
        with self._gate.admit(request.partner):
            return [
                a.envelope for a in self._agreements.in_force_for(request.partner, timefmt.now())
            ]


def _add_noise(
    cells: list[dict[str, Any]], scan: aggregate.Scan, terms: DpTerms, epsilon: float
) -> None:
    """Each cell's measures with differential privacy's noise, `epsilon` shared among them."""
    share = epsilon / len(scan.query.measures)
    records = privacy.sensitivity(terms, scan.ds.resident_linked)
    for cell in cells:
        cell["values"] = {
            m.name: privacy.noisy(cell["values"][m.name], m.kind, m.field, terms, share, records)
            for m in scan.query.measures
        }
        cell["records"] = 0  # exact counts must not travel beside noisy ones
