"""Partner token ids consumed by this party, kept in its own database until the tokens expire.

A token is single use per party and per use (a node's plan and query of one negotiated call are two
uses). The store is a table, not memory: a node or broker that restarts still remembers what it
consumed, and replicas sharing one PostgreSQL database refuse a token another replica consumed.
The primary key makes the check atomic: of two concurrent inserts of one (issuer, jti, use), the
second fails with an integrity error, whichever replica made it. Rows whose tokens can no longer
verify (expired, with the clock skew allowed) are pruned now and then.
"""

from __future__ import annotations

import threading
import time

import sqlalchemy as sa

from domain.errors import AuthenticationError, StoreError
from keys.tokens import CLOCK_SKEW_S, VerifiedToken

# Declared here (the node and the broker both keep one); created by migration 0012.
metadata = sa.MetaData()
consumed_tokens = sa.Table(
    "consumed_tokens",
    metadata,
    sa.Column("issuer", sa.String(128), primary_key=True),
    sa.Column("jti", sa.String(128), primary_key=True),
    sa.Column("use", sa.String(16), primary_key=True),
    # Unix seconds after which the token no longer verifies, so its row may go.
    sa.Column("expires_at", sa.BigInteger, nullable=False, index=True),
)

PRUNE_EVERY_S = 30.0


class ConsumedTokens:
    """The consumed-token table of one party's database."""

    def __init__(self, engine: sa.Engine, prune_every_s: float = PRUNE_EVERY_S) -> None:
        self._engine = engine
        self._prune_every_s = prune_every_s
        self._next_prune = 0.0
        self._lock = threading.Lock()

    def consume(self, token: VerifiedToken, use: str) -> None:
        """Record this use of `token`; TOKEN_REPLAYED if it was recorded before, here or by a
        replica on the same database; StoreError if the database cannot be reached."""
        row = {
            "issuer": token.issuer,
            "jti": token.jti,
            "use": use,
            "expires_at": token.expires_at + CLOCK_SKEW_S,
        }
        try:
            with self._engine.begin() as conn:
                conn.execute(consumed_tokens.insert().values(**row))
        except sa.exc.IntegrityError:
            raise AuthenticationError(
                "the token has already been used", reason="TOKEN_REPLAYED"
            ) from None
        except sa.exc.SQLAlchemyError as e:
            raise StoreError(
                f"cannot record the token's use: {type(e.__cause__ or e).__name__}"
            ) from None
        self._maybe_prune()

    def _maybe_prune(self) -> None:
        """Delete rows of expired tokens, at most once every `prune_every_s` per process."""
        now = time.time()
        with self._lock:
            if now < self._next_prune:
                return
            self._next_prune = now + self._prune_every_s
        try:
            with self._engine.begin() as conn:
                conn.execute(
                    consumed_tokens.delete().where(consumed_tokens.c.expires_at < int(now))
                )
        except sa.exc.SQLAlchemyError:
            # Pruning is housekeeping: the next consume tries again.
            with self._lock:
                self._next_prune = 0.0

    def count(self) -> int:
        """How many uses are remembered (for tests and operators)."""
        with self._engine.connect() as conn:
            return int(
                conn.execute(sa.select(sa.func.count()).select_from(consumed_tokens)).scalar_one()
            )
