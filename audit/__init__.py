"""The auditor's toolkit: verify, offline, what a node or broker logged.

Public API, for auditors who script their own checks:

    from audit import (verify_inclusion, verify_consistency, verify_note, parse_checkpoint,
                       verify_envelope, verify_bundle, verify_bundles)

    verify_inclusion(leaf_index, tree_size, leaf_hash(entry), proof, root)   # RFC 9162 2.1.3.2
    verify_consistency(size1, size2, proof, root1, root2)                     # RFC 9162 2.1.4.2
    body = verify_note(note_text, [NoteVerifier.for_key(origin, public_key)]) # C2SP signed-note
    origin, size, root = parse_checkpoint(body)                               # C2SP tlog-checkpoint
    payload, keyids = verify_envelope(envelope, Statement.RESULT, lookup)     # DSSE, verify-then-parse
    summary = verify_bundle(Path("bundle"), authority_public_key)             # one export bundle
    report = verify_bundles(every_partys_bundle, authority_public_key)  # + reconciliation
    report = verify_bundles(bundles, key, exclude=["cascadia"])  # or parties=[...]; see .coverage

Every failure raises a `domain.errors.VerificationError` subclass whose `reason` is an
UPPER_SNAKE code and whose message names what failed (for bundles: file and entry, `BundleError`).
"""

from audit.checks import BundleError, BundleSummary
from audit.cosign import verify_cosignature
from audit.merkle import ProofError, leaf_hash, verify_consistency, verify_inclusion
from audit.note import NoteError, NoteVerifier, parse_checkpoint, verify_note
from audit.verifier import Report, verify_bundle, verify_bundles
from keys.dsse import Envelope
from keys.dsse import verify as verify_envelope

__all__ = [
    "BundleError",
    "BundleSummary",
    "Envelope",
    "NoteError",
    "NoteVerifier",
    "ProofError",
    "Report",
    "leaf_hash",
    "parse_checkpoint",
    "verify_bundle",
    "verify_bundles",
    "verify_consistency",
    "verify_cosignature",
    "verify_envelope",
    "verify_inclusion",
    "verify_note",
]
