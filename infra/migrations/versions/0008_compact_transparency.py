"""compact transparency record

exchange_residents (one row per resident per exchange) becomes resident_numbers (a node-local
number per resident) and exchange_contributors (per exchange, zlib-compressed bitmaps over those
numbers, one row per block of 2**13 numbers): see node.transparency. Existing rows are converted,
and converted back on downgrade.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-25 07:00:00
"""

from __future__ import annotations

import sys
import zlib
from array import array
from collections.abc import Iterator

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

# The block layout of node.transparency, fixed here: a later change of the module must not change
# what this migration writes. Bits are 32-bit little-endian words, bit n & 31 of word n >> 5.
_BLOCK_BITS = 13
_WORDS = 1 << (_BLOCK_BITS - 5)
_CHUNK = 10_000

_old = sa.table("exchange_residents", sa.column("resident_id"), sa.column("request_id"))
_numbers = sa.table("resident_numbers", sa.column("number"), sa.column("resident_id"))
_blocks = sa.table(
    "exchange_contributors", sa.column("request_id"), sa.column("block"), sa.column("bits")
)


def _pack(words: array[int]) -> bytes:
    if sys.byteorder == "big":
        words = array("I", words)
        words.byteswap()
    return zlib.compress(words.tobytes())


def _unpack(bits: bytes) -> array[int]:
    words = array("I", zlib.decompress(bits))
    if sys.byteorder == "big":
        words.byteswap()
    return words


def upgrade() -> None:
    op.create_table(
        "resident_numbers",
        sa.Column(
            "number",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("resident_id", sa.String(length=128), nullable=False),
        sa.PrimaryKeyConstraint("number"),
        sa.UniqueConstraint("resident_id"),
    )
    op.create_table(
        "exchange_contributors",
        sa.Column("request_id", sa.String(length=64), nullable=False),
        sa.Column("block", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("bits", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(["request_id"], ["exchanges.request_id"]),
        sa.PrimaryKeyConstraint("request_id", "block"),
    )
    op.create_index("ix_exchanges_released", "exchanges", ["released_at", "log_index"])
    conn = op.get_bind()
    conn.execute(
        _numbers.insert().from_select(
            ["resident_id"],
            sa.select(_old.c.resident_id).distinct().order_by(_old.c.resident_id),
        )
    )
    rows = conn.execute(
        sa.select(_old.c.request_id, _numbers.c.number)
        .join(_numbers, _numbers.c.resident_id == _old.c.resident_id)
        .order_by(_old.c.request_id, _numbers.c.number)
    )
    pending: list[dict[str, object]] = []
    current: tuple[str, int] | None = None
    words = array("I")
    for request_id, number in rows:
        key = (request_id, number >> _BLOCK_BITS)
        if key != current:
            if current is not None:
                pending.append(
                    {"request_id": current[0], "block": current[1], "bits": _pack(words)}
                )
            current, words = key, array("I", bytes(4 * _WORDS))
        words[(number >> 5) % _WORDS] |= 1 << (number & 31)
        if len(pending) >= _CHUNK:
            conn.execute(_blocks.insert(), pending)
            pending = []
    if current is not None:
        pending.append({"request_id": current[0], "block": current[1], "bits": _pack(words)})
    if pending:
        conn.execute(_blocks.insert(), pending)
    op.drop_table("exchange_residents")


def _members(block: int, bits: bytes) -> Iterator[int]:
    for i, word in enumerate(_unpack(bits)):
        while word:
            low = word & -word
            yield (block << _BLOCK_BITS) + i * 32 + low.bit_length() - 1
            word ^= low


def downgrade() -> None:
    op.create_table(
        "exchange_residents",
        sa.Column("resident_id", sa.String(length=128), nullable=False),
        sa.Column("request_id", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(["request_id"], ["exchanges.request_id"]),
        sa.PrimaryKeyConstraint("resident_id", "request_id"),
    )
    conn = op.get_bind()
    residents = {
        n: r for n, r in conn.execute(sa.select(_numbers.c.number, _numbers.c.resident_id))
    }
    pending: list[dict[str, object]] = []
    for request_id, block, bits in conn.execute(
        sa.select(_blocks.c.request_id, _blocks.c.block, _blocks.c.bits)
    ).all():
        for number in _members(block, bits):
            pending.append({"resident_id": residents[number], "request_id": request_id})
            if len(pending) >= _CHUNK:
                conn.execute(_old.insert(), pending)
                pending = []
    if pending:
        conn.execute(_old.insert(), pending)
    op.drop_index("ix_exchanges_released", table_name="exchanges")
    op.drop_table("exchange_contributors")
    op.drop_table("resident_numbers")
