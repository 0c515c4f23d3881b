"""The node's register of agreements in force. Only agreements both parties signed are stored."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from federation import agreement as agreement_doc
from federation.agreement import Agreement
from federation.errors import AlreadyExists, InvalidArgument, NotFound, PermissionDenied
from keys import dsse, timefmt
from keys.trust import TrustStore
from node import taxonomy
from node.schema import agreements

ACTIVE = "active"
SUPERSEDED = "superseded"
MAX_PAGE = 100
MAX_VERSION = 2**63 - 1  # the widest integer any supported database column holds


@dataclass(frozen=True)
class StoredAgreement:
    verified: Agreement
    envelope: dsse.Envelope
    status: str


class AgreementRegister:
    """Agreements are read on every query, so the active ones are cached and reloaded on change."""

    def __init__(self, engine: sa.Engine, city: str, trust: TrustStore) -> None:
        self._engine, self._city, self._trust = engine, city, trust
        self._lock = threading.Lock()
        self._active: list[StoredAgreement] | None = None

    def activate(self, envelope: dsse.Envelope) -> Agreement:
        verified = agreement_doc.verify(envelope, self._trust.current)
        if verified.provider != self._city:
            raise PermissionDenied(
                f"agreement is provided by {verified.provider}, not this city",
                reason="AGREEMENT_NOT_FOR_THIS_CITY",
            )
        unknown = sorted(p for p in verified.purposes if not taxonomy.is_purpose(p))
        if unknown:
            raise InvalidArgument(
                f"agreement names unknown purposes {unknown}", reason="PURPOSE_UNKNOWN"
            )
        with self._engine.begin() as conn:
            exists = conn.execute(
                sa.select(agreements.c.version).where(
                    agreements.c.agreement_id == verified.agreement_id,
                    agreements.c.version >= verified.version,
                )
            ).first()
            if exists is not None:
                raise AlreadyExists(
                    f"agreement {verified.agreement_id} already has version {exists[0]}",
                    reason="AGREEMENT_VERSION_EXISTS",
                )
            conn.execute(
                agreements.update()
                .where(agreements.c.agreement_id == verified.agreement_id)
                .values(status=SUPERSEDED)
            )
            conn.execute(
                agreements.insert().values(
                    agreement_id=verified.agreement_id,
                    version=verified.version,
                    consumer=verified.consumer,
                    status=ACTIVE,
                    valid_from=timefmt.to_db(verified.valid_from),
                    valid_until=timefmt.to_db(verified.valid_until),
                    envelope=envelope.to_json(),
                    activated_at=timefmt.to_db(timefmt.now()),
                )
            )
        with self._lock:
            self._active = None
        return verified

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
        return [
            a for a in self.active() if a.verified.consumer == consumer and a.verified.in_force(at)
        ]

    def get(self, agreement_id: str) -> StoredAgreement:
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
