"""The node's register of agreements: proposals, agreements in force, and their ends."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from audit.log import MerkleLog
from domain import agreement as agreement_doc
from domain.agreement import Agreement
from domain.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
)
from domain.kinds import LogKind
from keys import dsse, timefmt
from keys.ed25519 import Signer
from keys.trust import TrustStore
from node import taxonomy
from node.schema import agreements

PROPOSED = "proposed"
ACTIVE = "active"
SUPERSEDED = "superseded"
REVOKED = "revoked"
EXPIRED = "expired"  # derived: active, but its validity window has passed
MAX_PAGE = 100
LOG_KIND = LogKind.AGREEMENT  # agreements and their revocations
MAX_VERSION = 2**63 - 1  # the widest integer any supported database column holds


@dataclass(frozen=True)
class StoredAgreement:
    verified: Agreement
    envelope: dsse.Envelope
    status: str

    def status_at(self, at: datetime) -> str:
        """The status at `at`: an active agreement past its validity is expired."""
        if self.status == ACTIVE and at >= self.verified.valid_until:
            return EXPIRED
        return self.status


class AgreementRegister:
    """The lifecycle of this city's agreements: proposed -> active (once both parties signed) ->
    superseded by a newer version | revoked by either party | expired.

    Agreements are read on every query, so the active ones are cached; every change clears the
    cache in the same call, so a revocation applies to the very next query. With a `log` (on the
    same database), each activation and revocation commits in the transaction that appends its
    signed document to the log, so no change is ever in force without its evidence.
    """

    def __init__(
        self,
        engine: sa.Engine,
        city: str,
        trust: TrustStore,
        signer: Signer | None = None,
        log: MerkleLog | None = None,
    ) -> None:
        self._engine, self.city, self._trust, self._signer = engine, city, trust, signer
        self._log = log
        self._lock = threading.Lock()
        self._active: list[StoredAgreement] | None = None

    def _commit(self, evidence: dsse.Envelope, write: Callable[[sa.Connection], None]) -> None:
        if self._log is None:
            with self._engine.begin() as conn:
                write(conn)
        else:
            self._log.append_many(
                [evidence.to_json()], LOG_KIND, side_write=lambda conn, _index: write(conn)
            )
        self._changed()

    def _own_signer(self) -> Signer:
        if self._signer is None:
            raise FailedPrecondition("this register cannot sign", reason="SIGNER_MISSING")
        return self._signer

    def _check_terms(self, a: Agreement) -> None:
        unknown = sorted(p for p in a.purposes if not taxonomy.is_purpose(p))
        if unknown:
            raise InvalidArgument(
                f"agreement names unknown purposes {unknown}", reason="PURPOSE_UNKNOWN"
            )
        if self.city not in (a.provider, a.consumer):
            raise PermissionDenied(
                f"{self.city} is not a party to agreement {a.agreement_id}",
                reason="AGREEMENT_NOT_FOR_THIS_CITY",
            )

    def propose(self, agreement: Agreement) -> dsse.Envelope:
        """Sign new terms as this city. As the provider, the proposal is kept until the consumer's
        countersigned copy is activated; as the consumer, it goes to the providing city."""
        self._check_terms(agreement)
        envelope = agreement_doc.sign(agreement, self._own_signer())
        if agreement.provider == self.city:
            with self._engine.begin() as conn:
                self._refuse_existing(conn, agreement)
                conn.execute(agreements.insert().values(self._row(agreement, envelope, PROPOSED)))
        return envelope

    def countersign(self, envelope: dsse.Envelope) -> tuple[dsse.Envelope, Agreement]:
        """Add this city's signature to the other party's signed proposal. If this city provides
        the data, the agreement is activated at once."""
        bundle = self._trust.current
        unverified = agreement_doc.unverified_terms(envelope)
        self._check_terms(unverified)
        other = unverified.consumer if unverified.provider == self.city else unverified.provider
        agreement_doc.verify_signed_by(envelope, bundle, other)
        countersigned = envelope.countersigned(self._own_signer())
        if unverified.provider == self.city:
            return countersigned, self.activate(countersigned)
        return countersigned, agreement_doc.verify(countersigned, bundle)

    def activate(self, envelope: dsse.Envelope) -> Agreement:
        """Put an agreement both parties signed in force; older versions become superseded."""
        verified = agreement_doc.verify(envelope, self._trust.current)
        if verified.provider != self.city:
            raise PermissionDenied(
                f"agreement is provided by {verified.provider}, not this city",
                reason="AGREEMENT_NOT_FOR_THIS_CITY",
            )
        self._check_terms(verified)

        def write(conn: sa.Connection) -> None:
            proposed = conn.execute(
                sa.select(agreements.c.envelope).where(
                    agreements.c.agreement_id == verified.agreement_id,
                    agreements.c.version == verified.version,
                    agreements.c.status == PROPOSED,
                )
            ).first()
            if (
                proposed is not None
                and json.loads(dsse.Envelope.from_json(proposed[0]).payload)
                != verified.to_payload()
            ):
                raise FailedPrecondition(
                    "the countersigned terms differ from this city's proposal",
                    reason="AGREEMENT_TERMS_CHANGED",
                )
            if proposed is None:
                self._refuse_existing(conn, verified)
            conn.execute(
                agreements.update()
                .where(
                    agreements.c.agreement_id == verified.agreement_id,
                    agreements.c.status == ACTIVE,
                )
                .values(status=SUPERSEDED)
            )
            row = self._row(verified, envelope, ACTIVE)
            if proposed is None:
                conn.execute(agreements.insert().values(row))
            else:
                conn.execute(
                    agreements.update()
                    .where(
                        agreements.c.agreement_id == verified.agreement_id,
                        agreements.c.version == verified.version,
                    )
                    .values(row)
                )

        self._commit(envelope, write)
        return verified

    def revoke(
        self, agreement_id: str, reason: str, revocation: dsse.Envelope | None = None
    ) -> dsse.Envelope:
        """End the active version now. Without `revocation` this city revokes (and signs); with
        one, it must be the consumer's signed statement for this very agreement."""
        current = [a for a in self.active() if a.verified.agreement_id == agreement_id]
        if not current:
            raise NotFound(f"no active agreement {agreement_id!r}", reason="AGREEMENT_NOT_FOUND")
        agreement = current[0].verified
        if revocation is None:
            revocation = agreement_doc.sign_revocation(
                agreement, self.city, reason, self._own_signer()
            )
        statement = agreement_doc.verify_revocation(revocation, agreement, self._trust.current)

        def write(conn: sa.Connection) -> None:
            conn.execute(
                agreements.update()
                .where(
                    agreements.c.agreement_id == agreement_id,
                    agreements.c.version == agreement.version,
                )
                .values(
                    status=REVOKED,
                    revoked_at=timefmt.to_db(timefmt.now()),
                    revoked_by=str(statement["revoked_by"]),
                    revocation=revocation.to_json(),
                )
            )

        self._commit(revocation, write)
        return revocation

    def _changed(self) -> None:
        with self._lock:
            self._active = None

    @staticmethod
    def _refuse_existing(conn: sa.Connection, a: Agreement) -> None:
        exists = conn.execute(
            sa.select(agreements.c.version).where(
                agreements.c.agreement_id == a.agreement_id,
                agreements.c.version >= a.version,
            )
        ).first()
        if exists is not None:
            raise AlreadyExists(
                f"agreement {a.agreement_id} already has version {exists[0]}",
                reason="AGREEMENT_VERSION_EXISTS",
            )

    @staticmethod
    def _row(a: Agreement, envelope: dsse.Envelope, status: str) -> dict[str, Any]:
        return {
            "agreement_id": a.agreement_id,
            "version": a.version,
            "consumer": a.consumer,
            "status": status,
            "valid_from": timefmt.to_db(a.valid_from),
            "valid_until": timefmt.to_db(a.valid_until),
            "envelope": envelope.to_json(),
            "activated_at": timefmt.to_db(timefmt.now()) if status == ACTIVE else None,
        }

    def _load(self, rows: Iterable[Any]) -> list[StoredAgreement]:
        """(envelope, status) rows to agreements."""
        out = []
        for envelope_json, status in rows:
            env = dsse.Envelope.from_json(envelope_json)
            out.append(
                StoredAgreement(
                    agreement_doc.Agreement.from_payload(json.loads(env.payload)), env, status
                )
            )
        return out

    def active(self) -> list[StoredAgreement]:
        """Every active agreement, read once and kept until the register changes."""
        with self._lock:
            if self._active is None:
                with self._engine.connect() as conn:
                    self._active = self._load(
                        conn.execute(
                            sa.select(agreements.c.envelope, agreements.c.status).where(
                                agreements.c.status == ACTIVE
                            )
                        )
                    )
            return self._active

    def in_force_for(self, consumer: str, at: datetime) -> list[StoredAgreement]:
        """The active agreements with `consumer` that are in force at `at`."""
        return [
            a for a in self.active() if a.verified.consumer == consumer and a.verified.in_force(at)
        ]

    def get(self, agreement_id: str) -> StoredAgreement:
        """The newest version of an agreement, or NotFound."""
        with self._engine.connect() as conn:
            found = self._load(
                conn.execute(
                    sa.select(agreements.c.envelope, agreements.c.status)
                    .where(agreements.c.agreement_id == agreement_id)
                    .order_by(agreements.c.version.desc())
                    .limit(1)
                )
            )
        if not found:
            raise NotFound(f"no agreement {agreement_id!r}", reason="AGREEMENT_NOT_FOUND")
        return found[0]

    def page(self, page_size: int, page_token: str) -> tuple[list[StoredAgreement], str]:
        """AIP-158 pages ordered by (agreement id, version); the token is opaque to callers."""
        size = MAX_PAGE if page_size <= 0 else min(page_size, MAX_PAGE)
        stmt = sa.select(
            agreements.c.envelope,
            agreements.c.status,
            agreements.c.agreement_id,
            agreements.c.version,
        )
        if page_token:
            try:
                last_id, last_version = base64.urlsafe_b64decode(page_token).decode().split("\x00")
                version = int(last_version)
                if not 0 <= version <= MAX_VERSION:  # a forged token must not overflow the column
                    raise ValueError(last_version)
                after = sa.tuple_(agreements.c.agreement_id, agreements.c.version) > sa.tuple_(
                    sa.literal(last_id), sa.literal(version)
                )
            except ValueError:
                raise InvalidArgument(
                    "page_token is not valid", reason="PAGE_TOKEN_INVALID"
                ) from None
            stmt = stmt.where(after)
        stmt = stmt.order_by(agreements.c.agreement_id, agreements.c.version).limit(size + 1)
        with self._engine.connect() as conn:
            rows = conn.execute(stmt).all()
        more = len(rows) > size
        rows = rows[:size]
        items = self._load((r[0], r[1]) for r in rows)
        token = ""
        if more:
            token = base64.urlsafe_b64encode(f"{rows[-1][2]}\x00{rows[-1][3]}".encode()).decode()
        return items, token
