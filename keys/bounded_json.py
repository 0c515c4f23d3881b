"""JSON from untrusted bytes, bounded: a size and a nesting depth checked before the parser runs.

The standard library's parser recurses once per nesting level, so deeply nested input ends in a
RecursionError (and anything that walks the result recursively, such as canonicalisation, fails the
same way later). Every statement citybroker reads is a few levels deep; anything deeper is refused
here with a reason, before any parse.
"""

from __future__ import annotations

import json
import re
from typing import Any

from domain.errors import InvalidArgument

MAX_DEPTH = 32
MAX_BYTES = 16 * 1024 * 1024

# A JSON string (escapes included), so that brackets inside strings are not counted.
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKET = re.compile(rb"[^\[\]{}]+")
_OPENING = frozenset(b"[{")


class JsonRefused(InvalidArgument, ValueError):
    """Input refused before parsing (too large or too deeply nested). A ValueError too, so that
    callers treating unparsable JSON as malformed input treat it the same way."""


def exceeds_depth(data: bytes, limit: int = MAX_DEPTH) -> bool:
    """True if `data`'s arrays and objects nest more than `limit` deep (brackets inside strings
    not counted). Linear in the number of brackets, and stops at the first one too deep."""
    if data.count(b"[") + data.count(b"{") <= limit:  # most statements: no need to look closer
        return False
    brackets = _NOT_BRACKET.sub(b"", _STRING.sub(b"", data))
    depth = 0
    for b in brackets:
        if b in _OPENING:
            depth += 1
            if depth > limit:
                return True
        else:
            depth -= 1
    return False


def check(data: bytes | str, what: str, max_bytes: int = MAX_BYTES) -> bytes:
    """`data` as bytes if it is within the bounds; JsonRefused (JSON_TOO_LARGE, JSON_TOO_DEEP)
    naming `what` if not."""
    raw = data.encode() if isinstance(data, str) else bytes(data)
    if len(raw) > max_bytes:
        raise JsonRefused(
            f"{what} is {len(raw)} bytes; at most {max_bytes} are accepted",
            reason="JSON_TOO_LARGE",
        )
    if exceeds_depth(raw):
        raise JsonRefused(f"{what} nests more than {MAX_DEPTH} levels deep", reason="JSON_TOO_DEEP")
    return raw


def loads(data: bytes | str, what: str, max_bytes: int = MAX_BYTES) -> Any:
    """`json.loads` of `data` once `check` has passed it; ValueError (json's) if it is not JSON."""
    return json.loads(check(data, what, max_bytes))
