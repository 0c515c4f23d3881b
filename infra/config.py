"""Config files: TOML, with top-level scalars overridable by CITYBROKER_<KEY> environment variables.

Relative paths in a config file are relative to the file, so a federation directory can move.
"""

from __future__ import annotations

import builtins
import os
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from domain.errors import ConfigError

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

    def _where(self, key: builtins.str) -> builtins.str:
        return f"{self.path}: {self.prefix}{key}"

    def str(self, key: builtins.str, default: builtins.str | None = None) -> builtins.str:
        """The string at `key` (else `default`); ConfigError unless a string, non-empty when no default."""
        v = self.data.get(key, default)
        if not isinstance(v, str) or (default is None and not v):
            raise ConfigError(f"{self._where(key)} must be a non-empty string")
        return v

    def int(self, key: builtins.str, default: builtins.int | None = None) -> builtins.int:
        """The integer at `key` (else `default`); ConfigError unless an integer (booleans are not)."""
        v = self.data.get(key, default)
        if not isinstance(v, int) or isinstance(v, bool):
            raise ConfigError(f"{self._where(key)} must be an integer")
        return v

    def float(self, key: builtins.str, default: builtins.float | None = None) -> builtins.float:
        """The number at `key` (else `default`) as a float; ConfigError unless an int or float, not bool."""
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
        v = self.data.get(key, default)
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise ConfigError(f"{self._where(key)} must be a list of strings")
        return list(v)

    def section(self, key: builtins.str, required: bool = True) -> Section:
        """The table at `key` (empty if absent and not `required`); ConfigError unless a table."""
        v = self.data.get(key)
        if v is None and not required:
            return Section({}, self.path, f"{self.prefix}{key}.")
        if not isinstance(v, dict):
            raise ConfigError(f"{self._where(key)} must be a table")
        return Section(v, self.path, f"{self.prefix}{key}.")

    def __iter__(self) -> Iterator[builtins.str]:
        """The keys of this table."""
        return iter(list(self.data))

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

    ca_cert: Path
    cert: Path
    key: Path

    def read(self) -> tuple[bytes, bytes, bytes]:
        """The CA certificate, certificate and key bytes; ConfigError naming an unreadable file."""
        try:
            return self.ca_cert.read_bytes(), self.cert.read_bytes(), self.key.read_bytes()
        except OSError as e:
            raise ConfigError(f"cannot read TLS file {e.filename}: {e.strerror}") from None


@dataclass(frozen=True)
class PartyConfig:
    """What every party (node or broker) is configured with: where it listens, its database, its
    signing key, its TLS files and the federation's trust files. Node and broker configs extend it."""

    listen: str
    database: str
    signing_key: Path
    tls: TlsFiles
    trust_bundle: Path
    authority_key: Path

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
        }
