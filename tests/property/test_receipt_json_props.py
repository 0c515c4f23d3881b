"""The consent import's receipt encoder (orjson) writes exactly what rfc8785 writes for receipt
payloads and record terms: fixed ASCII keys; text, small integers, null and lists of text."""

from __future__ import annotations

from typing import Any

import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from node.consent_import import codec
from tests.property.test_canonical_json_props import texts

KEYS = st.sampled_from(
    ["actor", "at", "city", "data_categories", "notice_url", "purposes", "record_id", "state"]
    + ["retention_days", "terms_digest", "valid_until", "withdrawal_method"]
)
VALUES = st.one_of(texts, st.integers(0, 36500), st.none(), st.lists(texts, max_size=4))


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(KEYS, VALUES, max_size=12))
def test_same_bytes_as_rfc8785(obj: dict[str, Any]) -> None:
    assert codec.receipt_json(obj) == rfc8785.dumps(obj)


def test_a_lone_surrogate_goes_the_canonical_way() -> None:
    # orjson refuses it; the encoder then behaves as dsse.canonical does (rfc8785 refuses too).
    obj = {"actor": "\ud800"}
    try:
        expected: bytes | type[Exception] = rfc8785.dumps(obj)
    except Exception as e:
        expected = type(e)
    try:
        got: bytes | type[Exception] = codec.receipt_json(obj)
    except Exception as e:
        got = type(e)
    assert got == expected
