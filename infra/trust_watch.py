"""Rotation without restart: a node or broker watches its trust bundle file and its signing key
file, and takes up what changed when it is valid.

- A trust bundle file holding a newer version signed by the federation authority is installed
  (keys.trust.TrustStore; everything reads `current`) and recorded for exports
  (audit.trust_history), so the auditor gets every version in force. An invalid, older or
  unreadable one is ignored with a warning; the version in force stays.
- A signing key file holding another key is taken up once the trust bundle in force grants that
  key to this party now (keys.rotation.accepts); until then the old key keeps signing, with a
  warning. Publish the bundle first, let every party pick it up, then replace the key file.

Files are polled (stat every POLL_INTERVAL_S seconds): replace them by rename, so a poll never
reads half a file.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from audit import trust_history
from domain.errors import CitybrokerError
from infra.config import PartyConfig
from infra.party import Opened
from keys import dsse, rotation, timefmt
from keys.ed25519 import Signer
from keys.trust import verify_bundle

POLL_INTERVAL_S = 5.0
log = logging.getLogger("citybroker.rotation")

FileState = tuple[int, int, int] | None


def _state(path: Path) -> FileState:
    """What tells a changed file: inode (a rename), size and modification time; None if absent."""
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


class RotationWatch:
    """Polls a party's trust bundle and signing key files in a background thread (`start`,
    `stop`); `check` is one poll, for tests and for callers that want it now."""

    def __init__(
        self,
        config: PartyConfig,
        party_id: str,
        opened: Opened,
        interval_s: float | None = None,
    ) -> None:
        self._bundle_path, self._key_path = config.trust_bundle, config.signing_key
        self._party_id, self._opened = party_id, opened
        self._interval_s = POLL_INTERVAL_S if interval_s is None else interval_s
        # Start-up read both files: only what changes after it is news.
        self._bundle_seen = _state(self._bundle_path)
        self._key_seen: tuple[FileState, int] = (_state(self._key_path), self._version())
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def _version(self) -> int:
        return self._opened.trust.current.version

    @property
    def version(self) -> int:
        """The trust bundle version in force."""
        return self._version()

    @property
    def keyid(self) -> str:
        """The id of the key the party signs with now."""
        return self._opened.signer.keyid

    def start(self) -> None:
        """Poll in a daemon thread until `stop`."""
        self._thread = threading.Thread(target=self._run, name="rotation-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop polling and wait for a poll in progress."""
        self._stopped.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        while not self._stopped.wait(self._interval_s):
            try:
                self.check()
            except Exception:  # a poll must never end the watch
                log.exception("rotation check failed; retrying next poll")

    def check(self) -> None:
        """Take up a newer valid trust bundle, then a new signing key the bundle grants."""
        with self._lock:
            self._check_bundle()
            self._check_key()

    def _check_bundle(self) -> None:
        state = _state(self._bundle_path)
        if state == self._bundle_seen:
            return
        self._bundle_seen = state
        store, path = self._opened.trust, self._bundle_path
        try:
            envelope = dsse.Envelope.from_json(path.read_bytes())
            bundle = verify_bundle(envelope, store.authority)
        except OSError as e:
            log.warning("trust bundle %s unreadable (%s); version %d stays in force",
                        path, e.strerror, self._version())  # fmt: skip
            return
        except CitybrokerError as e:
            log.warning("trust bundle %s ignored: %s (%s); version %d stays in force",
                        path, e.message, e.reason, self._version())  # fmt: skip
            return
        if bundle.version <= self._version():
            if bundle.version < self._version():
                log.warning("trust bundle %s holds version %d, older than version %d in force; "
                            "ignored", path, bundle.version, self._version())  # fmt: skip
            return
        store.install(envelope)
        trust_history.record(self._opened.engine, bundle, envelope)
        log.info("trust bundle version %d now in force (from %s)", bundle.version, path)

    def _check_key(self) -> None:
        seen = (_state(self._key_path), self._version())
        if seen == self._key_seen:
            return
        self._key_seen = seen
        signer = self._opened.signer
        try:
            new = Signer.load(self._key_path)
        except CitybrokerError as e:
            log.warning("signing key file ignored: %s; still signing with key %s",
                        e.message, signer.keyid[:16])  # fmt: skip
            return
        if new.keyid == signer.keyid:
            return
        refused = rotation.accepts(self._opened.trust.current, self._party_id, new, timefmt.now())
        if refused is not None:
            log.warning("signing key %s not taken up: %s; still signing with key %s",
                        self._key_path, refused, signer.keyid[:16])  # fmt: skip
            return
        old = signer.keyid
        signer.rotate(new)
        log.info("signing key rotated: %s… replaces %s…", new.keyid[:16], old[:16])
