"""gRPC servicers for logs (LogService, on nodes and brokers) and witnessing (WitnessService, nodes)."""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterable

import grpc

from audit.log import LogRecord, MerkleLog
from audit.merkle import leaf_hash
from audit.witness import Witness
from citybroker.audit.v1 import audit_pb2, audit_pb2_grpc
from domain import commitment
from domain.errors import InvalidArgument
from domain.kinds import LogKind
from edge.rpc import CALLER

LOG_SERVICE = audit_pb2.DESCRIPTOR.services_by_name["LogService"].full_name
WITNESS_SERVICE = audit_pb2.DESCRIPTOR.services_by_name["WitnessService"].full_name
MAX_PAGE = 1000
DEFAULT_PAGE = 100


def _start(token: str) -> int:
    if not token:
        return 0
    try:
        start = int(base64.urlsafe_b64decode(token.encode()).decode().removeprefix("entry:"))
    except ValueError:
        raise InvalidArgument("page_token is not valid", reason="PAGE_TOKEN_INVALID") from None
    if start < 0:
        raise InvalidArgument("page_token is not valid", reason="PAGE_TOKEN_INVALID")
    return start


def entries_page_token(index: int) -> str:
    """The ListEntries page token of the page starting at entry `index` (opaque to callers
    outside the project; the broker's witnessing reads a city's log from where it left off)."""
    return base64.urlsafe_b64encode(f"entry:{index}".encode()).decode()


class LogServicer(audit_pb2_grpc.LogServiceServicer):
    """`own_readers` (a node's operators): who may read consent statements logged whole before
    they entered logs as salted commitments (domain.commitment); everyone else gets them
    withheld, with their leaf hash. None (a broker's log): no entry is withheld."""

    def __init__(
        self, log: MerkleLog, own_readers: Callable[[], Iterable[str]] | None = None
    ) -> None:
        self._log = log
        self._own_readers = own_readers

    def GetCheckpoint(
        self, request: audit_pb2.GetCheckpointRequest, context: grpc.ServicerContext
    ) -> audit_pb2.GetCheckpointResponse:
        note = self._log.checkpoint()
        size = int(note.split("\n", 2)[1])
        return audit_pb2.GetCheckpointResponse(checkpoint=note, tree_size=size)

    def ListEntries(
        self, request: audit_pb2.ListEntriesRequest, context: grpc.ServicerContext
    ) -> audit_pb2.ListEntriesResponse:
        size = DEFAULT_PAGE if request.page_size <= 0 else min(request.page_size, MAX_PAGE)
        start, total = _start(request.page_token), self._log.size()
        end = min(start + size, total)
        if start > total:
            raise InvalidArgument(
                "page_token is past the end of the log", reason="PAGE_TOKEN_INVALID"
            )
        records = self._log.records(start, end)
        withhold = self._own_readers is not None and str(CALLER.get(None)) not in set(
            self._own_readers()
        )
        return audit_pb2.ListEntriesResponse(
            entries=[_entry(r, withhold) for r in records],
            next_page_token=entries_page_token(end) if end < total else "",
        )

    def GetInclusionProof(
        self, request: audit_pb2.GetInclusionProofRequest, context: grpc.ServicerContext
    ) -> audit_pb2.GetInclusionProofResponse:
        return audit_pb2.GetInclusionProofResponse(
            hashes=self._log.inclusion_proof(request.index, request.tree_size)
        )

    def GetConsistencyProof(
        self, request: audit_pb2.GetConsistencyProofRequest, context: grpc.ServicerContext
    ) -> audit_pb2.GetConsistencyProofResponse:
        return audit_pb2.GetConsistencyProofResponse(
            hashes=self._log.consistency_proof(request.from_size, request.to_size)
        )


def _entry(record: LogRecord, withhold: bool) -> audit_pb2.LogEntry:
    """The entry as served: a legacy consent statement (logged whole) withheld if asked."""
    if withhold and record.kind == LogKind.CONSENT and not commitment.is_commitment(record.entry):
        return audit_pb2.LogEntry(
            index=record.index, kind=record.kind, withheld=True, leaf_hash=leaf_hash(record.entry)
        )
    return audit_pb2.LogEntry(index=record.index, kind=record.kind, entry=record.entry)


class WitnessServicer(audit_pb2_grpc.WitnessServiceServicer):
    def __init__(self, witness: Witness) -> None:
        self._witness = witness

    def AddCheckpoint(
        self, request: audit_pb2.AddCheckpointRequest, context: grpc.ServicerContext
    ) -> audit_pb2.AddCheckpointResponse:
        broker = str(CALLER.get())  # the guard admitted only brokers of the trust bundle
        line = self._witness.add_checkpoint(
            broker, request.old_size, list(request.proof), request.checkpoint
        )
        return audit_pb2.AddCheckpointResponse(cosignature=line)
