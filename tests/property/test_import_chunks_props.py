"""The consent import cuts its input into chunks by reading blocks and searching them. This holds
it to the plain model it replaced, line by line (readline): the same chunks, cut at the same
lines, with the same problems and byte counts, wherever the blocks happen to end."""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from node.consent_import import chunks

LIMIT = 64  # bytes a line may have


def model_chunks(data: bytes, records: int, quoted_fields: bool) -> Iterator[tuple[Any, ...]]:
    """Line by line: a line is read with readline(LIMIT); an over-long one travels empty."""
    f = io.BytesIO(data)
    line = read = 0
    problems: dict[int, str] = {}
    while True:
        first, parts, ended, quoted = line + 1, [], 0, False
        while ended < records:
            raw = f.readline(LIMIT)
            if not raw:
                break
            read += len(raw)
            line += 1
            if len(raw) == LIMIT and not raw.endswith(b"\n"):
                while True:
                    more = f.readline(LIMIT)
                    read += len(more)
                    if not more or more.endswith(b"\n"):
                        break
                problems[line] = f"line is longer than {LIMIT} bytes"
                raw = b"\n"
            elif quoted_fields and raw.count(b'"') & 1:
                quoted = not quoted
            parts.append(raw)
            if not quoted:
                ended += 1
            elif len(parts) >= records * 8:
                break
        if not parts:
            return
        mine = {n: problems.pop(n) for n in sorted(problems) if n >= first}
        yield (first, b"".join(parts), mine, read)


lines = st.lists(
    st.one_of(
        st.text("ab,;", max_size=20),
        st.text('ab,"', max_size=20),
        st.text("x", min_size=LIMIT - 3, max_size=LIMIT * 3),  # around the limit, and over it
    ),
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(
    lines,
    st.booleans(),
    st.integers(1, 6),
    st.booleans(),
    st.integers(1, 3 * LIMIT),
)
# an over-long line that fills a chunk inside an open quote cuts the chunk there
@example(['"', "", "", "", "", "", "", "x" * LIMIT, ""], True, 1, True, 1)
def test_block_reading_cuts_as_line_reading_does(
    body: list[str], final_newline: bool, records: int, quoted: bool, block: int
) -> None:
    data = "\n".join(body).encode() + (b"\n" if final_newline and body else b"")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(chunks, "READ_BYTES", block)
        reader = chunks.Lines(io.BytesIO(data), LIMIT)
        got = [tuple(c) for c in reader.chunks(records, quoted)]
    assert got == list(model_chunks(data, records, quoted))
    assert reader.bytes == len(data)
