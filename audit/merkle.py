"""RFC 6962 / RFC 9162 Merkle tree math: hashes, proof verification and proof construction.

Pure functions and one small value class, no I/O. Storage sits behind a `SubtreeHash` callable, so
the same code builds proofs from a database, from memory, or from an exported bundle.

Ranges are half-open leaf ranges `(start, end)`. A perfect subtree is named `(level, index)`: it
covers the leaves `[index << level, (index + 1) << level)`.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Sequence

from domain.errors import InvalidArgument, VerificationError

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()

SubtreeHash = Callable[[int, int], bytes]
"""`subtree_hash(start, end)` returns MTH(D[start:end]) for a range that is a node of the tree."""


class ProofError(VerificationError):
    """An inclusion or consistency proof did not verify (or was malformed)."""

    default_reason = "PROOF_INVALID"


def leaf_hash(entry: bytes) -> bytes:
    """SHA-256(0x00 || entry), the RFC 6962 leaf hash."""
    return hashlib.sha256(b"\x00" + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """SHA-256(0x01 || left || right), the RFC 6962 interior node hash."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def split_point(size: int) -> int:
    """The largest power of two strictly below `size` (size >= 2): where RFC 6962 splits a tree."""
    if size < 2:
        raise InvalidArgument(f"a tree of {size} leaves has no split point")
    return 1 << ((size - 1).bit_length() - 1)


def root_from_leaf_hashes(leaf_hashes: Sequence[bytes]) -> bytes:
    """MTH of the given leaf hashes (RFC 6962 section 2.1); the empty tree hashes to SHA-256("")."""
    compact = CompactRange()
    for h in leaf_hashes:
        compact.append(h)
    return compact.root()


def perfect_subtrees(start: int, end: int) -> list[tuple[int, int]]:
    """The aligned perfect subtrees folding to MTH(D[start:end]), left to right, as (level, index).

    RFC 6962 splits at the largest power of two, so the pieces follow the binary digits of the
    range size from the highest down. Only ranges that are nodes of some RFC 6962 tree (start
    aligned to the first piece) decompose into stored, aligned subtrees; others are refused.
    """
    if not 0 <= start < end:
        raise InvalidArgument(f"leaf range [{start}, {end}) is empty or negative")
    size = end - start
    top = size.bit_length() - 1
    if start % (1 << top):
        raise InvalidArgument(f"leaf range [{start}, {end}) is not a node of an RFC 6962 tree")
    pieces: list[tuple[int, int]] = []
    offset = start
    for level in range(top, -1, -1):
        if size >> level & 1:
            pieces.append((level, offset >> level))
            offset += 1 << level
    return pieces


def fold_subtrees(hashes: Sequence[bytes]) -> bytes:
    """Combine left-to-right perfect subtree hashes of decreasing size into their MTH."""
    if not hashes:
        return EMPTY_ROOT
    acc = hashes[-1]
    for h in reversed(hashes[:-1]):
        acc = node_hash(h, acc)
    return acc


class CompactRange:
    """The right border of a growing tree: one perfect subtree hash per set bit of the size.

    Appending a leaf merges equal-level subtrees, yielding exactly the new perfect subtree nodes a
    store must persist, so a log never rebuilds the tree to extend it.
    """

    def __init__(self, size: int = 0, hashes: Sequence[bytes] = ()) -> None:
        if size < 0 or len(hashes) != size.bit_count():
            raise InvalidArgument(
                f"a compact range of size {size} needs {max(size, 0).bit_count()} hashes, "
                f"got {len(hashes)}"
            )
        self.size = size
        self.hashes = list(hashes)

    def copy(self) -> CompactRange:
        """An independent copy."""
        return CompactRange(self.size, self.hashes)

    def append(self, leaf: bytes) -> list[tuple[int, int, bytes]]:
        """Add a leaf hash; return the new perfect nodes above level 0 as (level, index, hash)."""
        created: list[tuple[int, int, bytes]] = []
        index = self.size
        acc = leaf
        level = 0
        # Each trailing one bit of the old size is a left sibling that now becomes complete.
        while index >> level & 1:
            acc = node_hash(self.hashes.pop(), acc)
            level += 1
            created.append((level, index >> level, acc))
        self.hashes.append(acc)
        self.size += 1
        return created

    def root(self) -> bytes:
        """The root of the tree this range covers."""
        return fold_subtrees(self.hashes)


def inclusion_proof_ranges(index: int, size: int) -> list[tuple[int, int]]:
    """The node ranges whose hashes form the inclusion proof of `index`, leaf level first."""
    if not 0 <= index < size:
        raise InvalidArgument(f"leaf index {index} is outside a tree of size {size}")
    ranges: list[tuple[int, int]] = []
    start, end = 0, size
    while end - start > 1:
        mid = start + split_point(end - start)
        if index < mid:
            ranges.append((mid, end))
            end = mid
        else:
            ranges.append((start, mid))
            start = mid
    ranges.reverse()
    return ranges


def consistency_proof_ranges(size1: int, size2: int) -> list[tuple[int, int]]:
    """The node ranges of the RFC 6962 SUBPROOF(size1, D[0:size2], true), in proof order."""
    if not 0 < size1 <= size2:
        raise InvalidArgument(
            f"a consistency proof needs 0 < size1 <= size2, got size1={size1} size2={size2}"
        )
    ranges: list[tuple[int, int]] = []
    start, end = 0, size2
    m = size1
    whole_old_tree = True
    while m != end - start:
        mid = start + split_point(end - start)
        if start + m <= mid:
            ranges.append((mid, end))
            end = mid
        else:
            ranges.append((start, mid))
            m -= mid - start
            start = mid
            whole_old_tree = False
    # The verifier already holds the old root; any other old subtree must be given.
    if not whole_old_tree:
        ranges.append((start, end))
    ranges.reverse()
    return ranges


def inclusion_proof(index: int, size: int, subtree_hash: SubtreeHash) -> list[bytes]:
    """The inclusion proof of `index` in the tree of `size` leaves."""
    return [subtree_hash(s, e) for s, e in inclusion_proof_ranges(index, size)]


def consistency_proof(size1: int, size2: int, subtree_hash: SubtreeHash) -> list[bytes]:
    """The proof that the tree of `size2` leaves extends that of `size1`."""
    if size1 == size2:
        return []
    return [subtree_hash(s, e) for s, e in consistency_proof_ranges(size1, size2)]


def _check_hashes(what: str, proof: Sequence[bytes]) -> None:
    for i, h in enumerate(proof):
        if not isinstance(h, bytes) or len(h) != HASH_SIZE:
            raise ProofError(f"{what} element {i} is not a {HASH_SIZE}-byte hash")


def _eq(a: bytes, b: bytes) -> bool:
    return hmac.compare_digest(a, b)


def verify_inclusion(
    leaf_index: int, tree_size: int, leaf_hash: bytes, proof: Sequence[bytes], root: bytes
) -> None:
    """RFC 9162 section 2.1.3.2; raises ProofError unless `proof` puts the leaf under `root`."""
    if leaf_index < 0 or tree_size < 0:
        raise ProofError("leaf index and tree size must not be negative")
    if leaf_index >= tree_size:
        raise ProofError(f"leaf index {leaf_index} is not below tree size {tree_size}")
    if not isinstance(leaf_hash, bytes) or len(leaf_hash) != HASH_SIZE:
        raise ProofError(f"leaf hash is not a {HASH_SIZE}-byte hash")
    _check_hashes("inclusion proof", proof)
    fn, sn = leaf_index, tree_size - 1
    r = leaf_hash
    for p in proof:
        if sn == 0:
            raise ProofError("inclusion proof is longer than the tree is deep")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("inclusion proof is too short for the tree size")
    if not _eq(r, root):
        raise ProofError("inclusion proof does not lead to the expected root")


def verify_consistency(
    size1: int, size2: int, proof: Sequence[bytes], root1: bytes, root2: bytes
) -> None:
    """RFC 9162 section 2.1.4.2; raises ProofError unless tree `root2` extends tree `root1`.

    Equal sizes need an empty proof and equal roots. A proof from the empty tree is refused: every
    tree extends it, so such a "proof" proves nothing and a caller asking for one has a bug (the
    shared RFC 6962 vectors expect that refusal). A verifier with no earlier checkpoint simply has
    nothing to check.
    """
    if size1 < 0 or size2 < 0:
        raise ProofError("tree sizes must not be negative")
    if size1 > size2:
        raise ProofError(f"size1 {size1} is greater than size2 {size2}: a log cannot shrink")
    if size1 == 0:
        raise ProofError("a consistency proof from the empty tree is meaningless")
    if size1 == size2:
        if proof:
            raise ProofError("trees of equal size need an empty consistency proof")
        if not _eq(root1, root2):
            raise ProofError("trees of equal size have different roots")
        return
    if not proof:
        raise ProofError("consistency proof is empty")
    _check_hashes("consistency proof", proof)
    path = list(proof)
    if size1 & (size1 - 1) == 0:
        path.insert(0, root1)
    fn, sn = size1 - 1, size2 - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofError("consistency proof is longer than the tree is deep")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("consistency proof is too short for the tree sizes")
    if not _eq(fr, root1):
        raise ProofError("consistency proof does not lead to the old root")
    if not _eq(sr, root2):
        raise ProofError("consistency proof does not lead to the new root")
