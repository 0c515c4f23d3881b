"""keys.dsse.canonical (with its standard-library fast path) writes exactly what rfc8785 writes, for
any JSON value."""

from __future__ import annotations

from typing import Any

import pytest
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from keys import dsse

SAFE = 2**53 - 1

ascii_text = st.text(alphabet=st.characters(max_codepoint=0x7F), max_size=12)
control_text = st.text(
    alphabet=st.sampled_from(
        ["\x00", "\x01", "\x08", "\t", "\n", "\x0b", "\x0c", "\r", "\x1f"]
        + ["\x7f", '"', "\\", "/", "a", " "]
    ),
    max_size=8,
)
# Every code point UTF-8 can carry (no lone surrogates): non-ASCII, astral, controls.
any_text = st.text(alphabet=st.characters(codec="utf-8"), max_size=12)
texts = st.one_of(ascii_text, control_text, any_text, st.sampled_from(["é", "€", "😀", "\u2028"]))

ints = st.one_of(
    st.integers(-SAFE, SAFE),
    st.integers(-1000, 1000),
    st.sampled_from([SAFE, -SAFE, 0, -1, 2**31, 2**32 + 1]),
)
EDGE_FLOATS = [
    0.0,
    -0.0,
    1.0,
    -3.0,
    0.1,
    1e-4,
    9.999999999999999e-5,
    1.5e-4,
    1e-6,
    1e-7,
    5e-324,
    2.2250738585072014e-308,
    1e15,
    1e16,
    1234567890123456.8,
    float(SAFE),
    float(SAFE + 1),
    1e20,
    1e21,
    1.7976931348623157e308,
    -1.7976931348623157e308,
    123456789012345680000.0,
    0.30000000000000004,
    333333333.3333333,
]
floats = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(-SAFE, SAFE).map(float),  # integers as floats
    st.integers(-(2**70), 2**70).map(float),
    st.floats(min_value=-1e-3, max_value=1e-3, allow_subnormal=True),  # tiny
    st.floats(min_value=1e15, max_value=1e300),  # huge
    st.floats(min_value=-1e300, max_value=-1e15),
    st.sampled_from(EDGE_FLOATS),
)
scalars = st.one_of(st.none(), st.booleans(), ints, floats, texts)
# Where UTF-16 order and code point order disagree: astral characters against U+E000..U+FFFF.
tricky_keys = st.text(
    alphabet=st.sampled_from(["a", "Z", "é", "\ue000", "\uffff", "\U00010000", "\U0001f600"]),
    max_size=3,
)
keys = st.one_of(ascii_text, any_text, tricky_keys)


def json_values(leaves: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.recursive(
        leaves,
        lambda inner: st.one_of(
            st.lists(inner, max_size=5),
            st.dictionaries(keys, inner, max_size=5),
        ),
        max_leaves=25,
    )


# Values that stay inside the fast path (ASCII only), so it is exercised, not just bypassed.
plain_values = json_values(
    st.one_of(
        st.none(),
        st.booleans(),
        ints,
        floats,
        ascii_text,
        control_text,
    )
).map(lambda v: _ascii_keys(v))


def _ascii_keys(v: Any) -> Any:
    if isinstance(v, dict):
        return {k.encode("ascii", "replace").decode(): _ascii_keys(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_ascii_keys(x) for x in v]
    return v


@settings(max_examples=300, deadline=None)
@given(json_values(scalars))
def test_canonical_is_rfc8785(value: Any) -> None:
    assert dsse.canonical(value) == rfc8785.dumps(value)


@settings(max_examples=300, deadline=None)
@given(plain_values)
def test_canonical_is_rfc8785_on_the_fast_path(value: Any) -> None:
    assert dsse.canonical(value) == rfc8785.dumps(value)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(tricky_keys, scalars, min_size=2, max_size=8))
def test_keys_sort_by_utf16_code_units(value: dict[str, Any]) -> None:
    assert dsse.canonical(value) == rfc8785.dumps(value)


@settings(max_examples=300, deadline=None)
@given(floats)
def test_numbers_alone_and_wrapped(x: float) -> None:
    assert dsse.canonical(x) == rfc8785.dumps(x)
    assert dsse.canonical([x, {"x": x}]) == rfc8785.dumps([x, {"x": x}])


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (3.0, b"3"),
        (-0.0, b"0"),
        (1e21, b"1e+21"),
        (1e-7, b"1e-7"),
        (1e-4, b"0.0001"),
        ({"b": 1, "a": [True, None]}, b'{"a":[true,null],"b":1}'),
        ("\u2028\x1f\x7f", '"\u2028\\u001f\x7f"'.encode()),
        ({"\U0001f600": 1, "\uffff": 2}, '{"\U0001f600":1,"\uffff":2}'.encode()),
    ],
)
def test_known_encodings(value: Any, expected: bytes) -> None:
    assert dsse.canonical(value) == expected == rfc8785.dumps(value)


@pytest.mark.parametrize("value", [SAFE + 1, -(SAFE + 1), [2**64], {"n": 2**60}])
def test_integers_outside_the_safe_domain_are_refused_alike(value: Any) -> None:
    with pytest.raises(rfc8785.IntegerDomainError):
        rfc8785.dumps(value)
    with pytest.raises(rfc8785.IntegerDomainError):
        dsse.canonical(value)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), [float("-inf")]])
def test_non_finite_floats_are_refused(value: Any) -> None:
    with pytest.raises(rfc8785.FloatDomainError):
        dsse.canonical(value)
