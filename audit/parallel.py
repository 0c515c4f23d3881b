"""The entries' signature checks, inline or in a pool of worker processes.

I/O boundary: this module starts and stops the worker processes; it reads no files. What must
be signed, by whom, is decided by audit.checks (`UnverifiedEntry`); which keys were in force,
by `audit.checks.Keys`. Work in flight is bounded (batches per worker), so memory stays flat
whatever the bundle size.
"""

from __future__ import annotations

import multiprocessing
import os
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from datetime import datetime
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from audit.checks import BundleError, Keys, UnverifiedEntry
from keys import timefmt

# Bundles of at least this many entries check their entries' signatures in worker processes (one
# per CPU) while this process reads, parses and checks everything else; smaller ones, inline.
PARALLEL_MIN_ENTRIES = 20_000
MAX_WORKERS = 8
_BATCH = 256  # signature checks sent to a worker at once
_IN_FLIGHT = 4  # batches in flight per worker, so memory stays bounded whatever the bundle size

# One signature check for a worker: for each signer, the (raw public key, signature) pairs that
# may carry its signature (its keys in force at the time, by key id), and the signed message.
_SigJob = tuple[tuple[tuple[tuple[bytes, bytes], ...], ...], bytes]
# Where a job came from, to name the entry if it fails: (entry number, thing, signers, at).
_Where = tuple[int, str, list[str], datetime]
# Parsed keys a worker process keeps between batches (each worker has its own).
_worker_keys: dict[bytes, Ed25519PublicKey] = {}


def _check_batch(jobs: list[_SigJob]) -> tuple[int, int] | None:
    """In a worker process: (job, signer) of the first signer without a valid signature, or None."""
    for j, (signers, message) in enumerate(jobs):
        for s, candidates in enumerate(signers):
            if not any(_verify_raw(raw, sig, message) for raw, sig in candidates):
                return j, s
    return None


def _verify_raw(raw: bytes, sig: bytes, message: bytes) -> bool:
    key = _worker_keys.get(raw)
    if key is None:
        key = _worker_keys[raw] = Ed25519PublicKey.from_public_bytes(raw)
    try:
        key.verify(sig, message)
        return True
    except InvalidSignature:
        return False


def default_workers(size: int) -> int:
    """Signature-checking processes for a bundle of `size` entries: 1 (inline) for small ones."""
    if size < PARALLEL_MIN_ENTRIES:
        return 1
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, MAX_WORKERS))


class SignatureChecks:
    """The entries' signature checks, inline or in worker processes.

    Either way the bundle fails at its first bad entry, with the same error: with workers, an
    error found while the checks of earlier entries are still running is raised only once they
    have all passed (`first_failure`), and a bad signature is reported for the entry it is in.
    """

    def __init__(self, keys: Keys, path: Path, workers: int) -> None:
        self._keys, self._path = keys, path
        self._pool = (
            ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
            if workers > 1
            else None
        )
        self._limit = _IN_FLIGHT * workers
        self._jobs: list[_SigJob] = []
        self._where: list[_Where] = []
        self._in_flight: deque[tuple[Future[tuple[int, int] | None], list[_Where]]] = deque()
        self._raw: dict[int, bytes] = {}
        self._failure: BundleError | None = None

    def __enter__(self) -> SignatureChecks:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def require(self, entry: UnverifiedEntry) -> None:
        """Each signer must have signed the entry's message with a key in force at its time."""
        at, message = entry.at, entry.message
        if self._pool is None:
            for signer in entry.signers:
                if not any(
                    self._keys.verify(signer, keyid, at, sig, message) for keyid, sig in entry.sigs
                ):
                    raise self._error(entry.number, entry.thing, signer, at)
            return
        candidates = []
        for signer in entry.signers:
            mine = []
            for keyid, sig in entry.sigs:
                key = self._keys.key_at(signer, keyid, at)
                if key is not None:
                    # Raw bytes per key object, so each key crosses to the workers cheaply.
                    raw = self._raw.get(id(key))
                    if raw is None:
                        raw = self._raw[id(key)] = key.public_bytes_raw()
                    mine.append((raw, sig))
            candidates.append(tuple(mine))
        self._jobs.append((tuple(candidates), message))
        self._where.append((entry.number, entry.thing, entry.signers, at))
        if len(self._jobs) >= _BATCH:
            self._submit()

    def _submit(self) -> None:
        assert self._pool is not None
        if self._jobs:
            self._in_flight.append((self._pool.submit(_check_batch, self._jobs), self._where))
            self._jobs, self._where = [], []
        while len(self._in_flight) > self._limit:
            self._settle_oldest()

    def _settle_oldest(self) -> None:
        future, where = self._in_flight.popleft()
        failed = future.result()
        if failed is not None:
            number, thing, signers, at = where[failed[0]]
            self._failure = self._error(number, thing, signers[failed[1]], at)
            raise self._failure

    def drain(self) -> None:
        """Wait for every check required so far; raise for the first that failed."""
        if self._failure is not None:
            raise self._failure
        if self._pool is None:
            return
        self._submit()
        while self._in_flight:
            self._settle_oldest()

    def first_failure(self) -> BundleError | None:
        """After an error: the bad signature of an earlier entry (or this one), if there is one."""
        try:
            self.drain()
        except BundleError as e:
            return e
        return None

    def _error(self, number: int, thing: str, signer: str, at: datetime) -> BundleError:
        return BundleError(
            f"{thing} lacks a valid signature of {signer} with a key in force at {timefmt.fmt(at)}",
            "SIGNATURE_INVALID",
            self._path,
            number,
        )
