"""TLS certificate rotation without downtime: server credentials that re-read the certificate,
key and CA files when they change (the broker's client side, edge.city_gateway, uses the same
TlsWatch).

gRPC asks the fetcher before every new connection's handshake; it stats the three files and
returns a new configuration only when one changed and the new files make a valid pair (the same
checks as at start-up: owner-only key, certificate valid now, key matching it). Otherwise the
certificate in use stays, with a warning. Connections already open keep their session.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import cast

import grpc

from domain.errors import CitybrokerError
from infra.config import TlsFiles

log = logging.getLogger("citybroker.rotation")


def _states(tls: TlsFiles) -> tuple[tuple[int, int, int] | None, ...]:
    def state(path: Path) -> tuple[int, int, int] | None:
        try:
            st = path.stat()
        except OSError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    return (state(tls.ca_cert), state(tls.cert), state(tls.key))


class TlsWatch:
    """Tells when `tls` files changed into a valid set, from the state they were in when made."""

    def __init__(self, tls: TlsFiles) -> None:
        self.tls = tls
        self._lock = threading.Lock()
        self._seen = _states(tls)

    def replaced(self) -> tuple[bytes, bytes, bytes] | None:
        """The CA certificate, certificate and key bytes if the files changed since the last look
        and pass the start-up checks; None if unchanged, or changed into files that fail them
        (one warning per change: they are not looked at again until they change again)."""
        states = _states(self.tls)
        with self._lock:
            if states == self._seen:
                return None
            self._seen = states
            try:
                return self.tls.read()
            except CitybrokerError as e:
                log.warning("TLS files changed but not taken up: %s", e.message)
                return None


class ReloadingCredentials:
    """Server credentials from `tls`, taking up replaced files at the next handshake."""

    def __init__(self, tls: TlsFiles, require_client_cert: bool) -> None:
        self._tls, self._require = tls, require_client_cert
        self._watch = TlsWatch(tls)
        self._initial = self._configuration(*tls.read())  # bad files refuse the start

    def _configuration(
        self, ca: bytes, cert: bytes, key: bytes
    ) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration(
            [(key, cert)], root_certificates=ca if self._require else None
        )

    def credentials(self) -> grpc.ServerCredentials:
        """The credentials to add a listener with."""
        # gRPC takes None from the fetcher as "no change"; its type stubs leave that out.
        fetch = cast(Callable[[], grpc.ServerCertificateConfiguration], self._fetch)
        return grpc.dynamic_ssl_server_credentials(
            self._initial, fetch, require_client_authentication=self._require
        )

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """A new configuration if the files changed into a valid one, else None (keep)."""
        try:
            files = self._watch.replaced()
            if files is None:
                return None
            log.info("TLS certificate %s taken up for new connections", self._tls.cert)
            return self._configuration(*files)
        except Exception:  # never fail a handshake because of the watch itself
            log.exception("TLS reload check failed; the certificate in use stays")
            return None
