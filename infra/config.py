"""Config files: TOML, with top-level scalars overridable by CITYBROKER_<KEY> environment variables.

Relative paths in a config file are relative to the file, so a federation directory can move.
"""

from __future__ import annotations

import builtins
import difflib
import os
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from domain.errors import ConfigError
from keys import timefmt
from keys.certs import check_tls_pair
from keys.ed25519 import check_private_key

ENV_PREFIX = "CITYBROKER_"


def load_toml(path: Path) -> dict[str, Any]:
    """The TOML of `path`, top-level scalars overridden by CITYBROKER_<KEY>; ConfigError if unreadable."""
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"cannot read config {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config {path} is not valid TOML: {e}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config {path} is not valid TOML: it is not UTF-8 text") from None
    for key, value in list(data.items()):
        env = os.environ.get(ENV_PREFIX + key.upper())
        if env is not None and not isinstance(value, dict | list):
            data[key] = type(value)(env) if not isinstance(value, bool) else env == "true"
    return data


class Section:
    """Typed access to one table of a config file, with errors that name the file and key."""

    def __init__(
        self, data: dict[builtins.str, Any], path: Path, prefix: builtins.str = ""
    ) -> None:
        self.data, self.path, self.prefix = data, path, prefix
        # What the loader asked for, so that a key nobody reads (a typo) is refused: reject_unknown.
        self._asked: set[builtins.str] = set()
        self._tables: list[Section] = []

    def _where(self, key: builtins.str) -> builtins.str:
        return f"{self.path}: {self.prefix}{key}"

    def str(self, key: builtins.str, default: builtins.str | None = None) -> builtins.str:
        """The string at `key` (else `default`); ConfigError unless a string, non-empty when no default."""
        self._asked.add(key)
        v = self.data.get(key, default)
        if not isinstance(v, str) or (default is None and not v):
            raise ConfigError(f"{self._where(key)} must be a non-empty string")
        return v

    def int(self, key: builtins.str, default: builtins.int | None = None) -> builtins.int:
        """The integer at `key` (else `default`); ConfigError unless an integer (booleans are not)."""
        self._asked.add(key)
        v = self.data.get(key, default)
        if not isinstance(v, int) or isinstance(v, bool):
            raise ConfigError(f"{self._where(key)} must be an integer")
        return v

    def float(self, key: builtins.str, default: builtins.float | None = None) -> builtins.float:
        """The number at `key` (else `default`) as a float; ConfigError unless an int or float, not bool."""
        self._asked.add(key)
        v = self.data.get(key, default)
        if not isinstance(v, int | float) or isinstance(v, bool):
            raise ConfigError(f"{self._where(key)} must be a number")
        return float(v)

    def path_(self, key: builtins.str) -> Path:
        """The non-empty string at `key` as a path, a relative one from the config file's directory."""
        p = Path(self.str(key))
        return p if p.is_absolute() else (self.path.parent / p)

    def strs(
        self, key: builtins.str, default: list[builtins.str] | None = None
    ) -> list[builtins.str]:
        """A copy of the list of strings at `key` (else `default`); ConfigError unless it is one."""
        self._asked.add(key)
        v = self.data.get(key, default)
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise ConfigError(f"{self._where(key)} must be a list of strings")
        return list(v)

    def section(self, key: builtins.str, required: bool = True) -> Section:
        """The table at `key` (empty if absent and not `required`); ConfigError unless a table."""
        self._asked.add(key)
        v = self.data.get(key)
        if v is None and not required:
            v = {}
        if not isinstance(v, dict):
            raise ConfigError(f"{self._where(key)} must be a table")
        table = Section(v, self.path, f"{self.prefix}{key}.")
        self._tables.append(table)
        return table

    def __iter__(self) -> Iterator[builtins.str]:
        """The keys of this table (a map: each key is a name its reader takes as given)."""
        self._asked.update(self.data)
        return iter(list(self.data))

    def reject_unknown(self) -> None:
        """ConfigError naming the first key of this table or the tables read from it that no
        accessor asked for: a misspelt option must not fall back silently to its default."""
        for key in self.data:
            if key not in self._asked:
                close = difflib.get_close_matches(key, sorted(self._asked), n=1)
                hint = f"; did you mean {self.prefix}{close[0]}?" if close else ""
                raise ConfigError(f"{self._where(key)} is not a known option{hint}")
        for table in self._tables:
            table.reject_unknown()

    def database_url(self, key: builtins.str) -> builtins.str:
        """A SQLAlchemy URL; a relative SQLite or DuckDB file is relative to the config file."""
        url = self.str(key)
        for prefix in ("sqlite:///", "duckdb:///"):
            if url.startswith(prefix) and not url.startswith(prefix + "/"):
                rel = url.removeprefix(prefix)
                if rel and not rel.startswith((":memory:", "?")):
                    return prefix + str((self.path.parent / rel).resolve())
        return url


@dataclass(frozen=True)
class TlsFiles:
    """The federation CA certificate and this party's certificate and private key."""

    # The federation CA's certificate (PEM): peers' certificates must chain to it.
    ca_cert: Path
    # This party's certificate (PEM), issued by the federation CA for the name peers dial.
    cert: Path
    # The private key of `cert` (PEM), readable by the service's user only.
    key: Path

    def read(self) -> tuple[bytes, bytes, bytes]:
        """The CA certificate, certificate and key bytes; ConfigError naming an unreadable file,
        or a key file group or others can read (held to the rule signing keys are held to)."""
        check_private_key(self.key, "TLS private key")
        try:
            ca, cert, key = self.ca_cert.read_bytes(), self.cert.read_bytes(), self.key.read_bytes()
        except OSError as e:
            raise ConfigError(f"cannot read TLS file {e.filename}: {e.strerror}") from None
        check_tls_pair(cert, key, str(self.cert), timefmt.now())  # expired, or not its key
        return ca, cert, key


@dataclass(frozen=True)
class PartyConfig:
    """What every party (node or broker) is configured with: where it listens, its database, its
    signing key, its TLS files and the federation's trust files. Node and broker configs extend it."""

    # Address (HOST:PORT) of the main gRPC listener, with TLS.
    listen: str
    # SQLAlchemy URL of the party's own database (log, and for a node consents and agreements):
    # sqlite:///FILE (relative to the config file) or postgresql://USER@HOST/DB.
    database: str
    # The party's Ed25519 signing key (PEM), mode 600 or stricter: it signs log checkpoints,
    # receipts and agreements.
    signing_key: Path
    # TLS files of the federation's mTLS.
    tls: TlsFiles
    # The federation's signed trust bundle: parties, their keys, roles and addresses.
    trust_bundle: Path
    # The federation authority's public key, which the trust bundle must be signed with.
    authority_key: Path
    # Address (HOST:PORT) of a plaintext listener serving only gRPC health, for probes that cannot
    # present a client certificate (Kubernetes `grpc` probes, `citybroker health`); "" for none.
    health_listen: str
    # Address (HOST:PORT) of a plaintext HTTP listener serving Prometheus metrics on /metrics
    # (call counts and latency, refusals, rate limiting, log size, ...); "" for none.
    metrics_listen: str
    # Seconds that calls in flight get to finish after SIGTERM or SIGINT (new calls are refused at
    # once and health says NOT_SERVING); then the log is committed and the process exits.
    shutdown_grace_s: float

    @staticmethod
    def fields_from(top: Section, default_listen: str) -> dict[str, Any]:
        """The shared fields read from a config file's top table, as keyword arguments."""
        tls, trust = top.section("tls"), top.section("trust")
        return {
            "listen": top.str("listen", default_listen),
            "database": top.database_url("database"),
            "signing_key": top.path_("signing_key"),
            "tls": TlsFiles(tls.path_("ca_cert"), tls.path_("cert"), tls.path_("key")),
            "trust_bundle": trust.path_("bundle"),
            "authority_key": trust.path_("authority_key"),
            "health_listen": top.str("health_listen", ""),
            "metrics_listen": top.str("metrics_listen", ""),
            "shutdown_grace_s": _grace(top),
        }


MAX_SHUTDOWN_GRACE_S = 3600.0


def _grace(top: Section) -> float:
    """`shutdown_grace_s`, 0 to an hour (default 10)."""
    grace = top.float("shutdown_grace_s", 10.0)
    if not 0 <= grace <= MAX_SHUTDOWN_GRACE_S:
        raise ConfigError(f"{top.path}: shutdown_grace_s must be 0 to {MAX_SHUTDOWN_GRACE_S:g}")
    return grace
