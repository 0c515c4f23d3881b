"""The node's long-lived secret, kept in its database: it keys per-agreement pseudonyms and the
cell keys of observational data.

Derived from the signing key, these would change whenever the key is rotated (or a replica started
on another key): a partner asking the same question before and after would get independent noise to
average, and pseudonyms that no longer link. The secret is drawn once, at random, by the first
process that needs it; replicas on one database share it, so their answers agree.
"""

from __future__ import annotations

import secrets
import threading

import sqlalchemy as sa
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from node.schema import node_secrets

_ROOT = "root"


class NodeSecret:
    """Secrets derived (HKDF-SHA256) from the node's root secret in `engine`'s node_secrets."""

    def __init__(self, engine: sa.Engine) -> None:
        self._engine = engine
        self._root: bytes | None = None
        self._lock = threading.Lock()

    def derive(self, info: bytes) -> bytes:
        """A 32-byte secret for `info`, the same for as long as the node's database lives."""
        return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(self._get())

    def _get(self) -> bytes:
        with self._lock:
            if self._root is None:
                self._root = self._load_or_draw()
            return self._root

    def _load_or_draw(self) -> bytes:
        table = node_secrets
        read = sa.select(table.c.secret).where(table.c.name == _ROOT)
        with self._engine.begin() as conn:
            found = conn.execute(read).scalar()
            if found is None:
                try:
                    with conn.begin_nested():
                        conn.execute(
                            table.insert().values(name=_ROOT, secret=secrets.token_bytes(32))
                        )
                except sa.exc.IntegrityError:
                    pass  # another process drew it first: theirs is the node's
                found = conn.execute(read).scalar_one()
        return bytes(found)
