"""ConsentService's resident-privacy calls, protobuf in and out: a record's committed statements
opened with inclusion proofs (node.log_openings), and a resident's erasure (node.erasure)."""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa

from citybroker.node.v1 import node_pb2
from domain.errors import InvalidArgument
from node.consent import MAX_ID_CHARS
from node.erasure import erase_resident
from node.log_openings import LogOpenings


@dataclass(frozen=True)
class ResidentPrivacy:
    """What the calls need: the city's openings, and its database to erase from."""

    openings: LogOpenings
    engine: sa.Engine


def consent_evidence_response(
    privacy: ResidentPrivacy, record_id: str
) -> node_pb2.GetConsentEvidenceResponse:
    """Every committed statement about the record, opened and proven."""
    _check_id(record_id, "record_id")
    return node_pb2.GetConsentEvidenceResponse(
        evidence=[
            node_pb2.ConsentEvidence(
                statement=p.opening.statement,
                salt=p.opening.salt,
                log_index=p.opening.index,
                tree_size=p.tree_size,
                inclusion_proof=p.proof,
                checkpoint=p.checkpoint,
                member_payload=p.opening.member_payload,
                member_salt=p.opening.member_salt,
            )
            for p in privacy.openings.for_record(record_id)
        ]
    )


def erase_resident_response(
    privacy: ResidentPrivacy, resident_id: str
) -> node_pb2.EraseResidentResponse:
    """Erase the resident; what was erased."""
    _check_id(resident_id, "resident_id")
    done = erase_resident(privacy.engine, resident_id)
    return node_pb2.EraseResidentResponse(
        records_erased=done.records,
        events_erased=done.events,
        statements_erased=done.statements,
        batch_members_erased=done.batch_members,
    )


def _check_id(value: str, name: str) -> None:
    if not value or len(value) > MAX_ID_CHARS:
        raise InvalidArgument(
            f"{name} must be 1 to {MAX_ID_CHARS} characters", reason="ID_INVALID", field=name
        )
