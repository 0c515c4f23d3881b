"""What the broker needs from the network, in domain terms: signed statements go out to cities, and
signed bytes or a RemoteError come back, one reply per city. Witnessing also reads cities' logs
(CityLogReader): their latest checkpoints, with proofs, and entries.

The exchange and witnessing depend only on these interfaces, so that they can be tested with
in-memory fakes; edge.city_gateway implements them over gRPC with mTLS.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from domain.errors import RemoteError
from domain.plan import QueryPlan
from keys import dsse

T = TypeVar("T")

# City id -> the endpoint the trust bundle lists for it.
Targets = Mapping[str, str]


@dataclass(frozen=True)
class CityReply(Generic[T]):
    """One city's reply to a fan-out: `value` when it answered, else `error` (never both)."""

    city: str
    value: T | None = None
    error: RemoteError | None = None


@dataclass(frozen=True)
class SignedResult:
    """A city's signed result, exactly as signed, and where its node logged it: whole, or (an
    exchange about single residents) as a commitment under `salt` (domain.commitment)."""

    envelope: dsse.Envelope
    log_index: int
    salt: bytes = b""


class CityGateway(Protocol):
    """Calls to the federation's cities. Every fan-out starts all calls at once, waits at most
    `timeout_s` for each, and returns one reply per target, in the targets' order; a city that
    fails or times out is a reply with its error, never dropped and never raised."""

    def run_query(
        self, targets: Targets, signed_query: dsse.Envelope, timeout_s: float
    ) -> list[CityReply[SignedResult]]:
        """Each city's signed result for the broker-signed query."""
        ...

    def plan_query(
        self, targets: Targets, signed_request: dsse.Envelope, timeout_s: float
    ) -> list[CityReply[QueryPlan]]:
        """Each city's dry-run plan for the broker-signed plan request."""
        ...

    def describe_offer(
        self, targets: Targets, signed_request: dsse.Envelope, timeout_s: float
    ) -> list[CityReply[list[dsse.Envelope]]]:
        """Each city's signed agreements (unverified) for the broker-signed describe request."""
        ...

    def add_checkpoint(
        self, endpoint: str, old_size: int, checkpoint: str, proof: list[bytes], timeout_s: float
    ) -> str:
        """Offer the witness at `endpoint` a checkpoint note with a consistency proof from
        `old_size`; returns its cosignature line, or raises CallFailed with what it said."""
        ...


@dataclass(frozen=True)
class LogHead:
    """A city's latest checkpoint note as its LogService served it (unverified), with the
    consistency proof it served from the size asked for to the size it said the note has (empty
    when no proof was asked for: from size 0, or not smaller than that size)."""

    checkpoint: str
    proof: list[bytes]


@dataclass(frozen=True)
class ServedEntry:
    """One entry of a city's log as its LogService served it (unverified): `entry` is empty when
    the city withheld it (then only its leaf hash was served, and this does not keep it)."""

    index: int
    kind: str
    entry: bytes


class CityLogReader(Protocol):
    """Reads of a city's log over its LogService; a failed call raises CallFailed."""

    def log_head(self, endpoint: str, since: int, timeout_s: float) -> LogHead:
        """The latest checkpoint of the city at `endpoint`, with a consistency proof from `since`."""
        ...

    def log_entries(
        self, endpoint: str, start: int, count: int, timeout_s: float
    ) -> list[ServedEntry]:
        """Up to `count` entries from index `start` (fewer at the end of the log)."""
        ...

    def inclusion_proof(
        self, endpoint: str, index: int, size: int, timeout_s: float
    ) -> list[bytes]:
        """The proof that entry `index` is in the city's tree of `size` entries."""
        ...
