"""Reading an import's input: CSV and JSONL rows, chunks cut between records, bad lines and
unusable files."""

from __future__ import annotations

from pathlib import Path

import pytest

from node.consent_import import (
    COLUMNS,
    ImportFormat,
    ImportLimits,
    InputError,
    open_rows,
    parse,
    parse_chunk,
)
from node.consent_import.model import BadRow
from tests.unit.node.consent_import.support import (
    read,
)


def test_csv_rows_come_in_column_order_with_absent_columns_none(tmp_path: Path) -> None:
    path = tmp_path / "e.csv"
    lines = ["\ufeffrecord_id , event,purposes", "r1,given,a;b ; c", "", 'r2,withdrawn,"x;', 'y"']
    path.write_text("\n".join([*lines, "r3,revoked,"]) + "\n")
    rows = read(path)
    assert [line for line, _ in rows] == [2, 4, 6]
    values = dict(zip(COLUMNS, rows[0][1], strict=True))
    assert values["record_id"] == "r1" and values["event"] == "given"
    assert values["purposes"] == "a;b ; c"
    assert values["resident_id"] is None and values["actor"] is None
    assert parse._codes(rows[0][1].purposes, "purposes") == ("a", "b", "c")
    assert rows[1][1][COLUMNS.index("purposes")] == "x;\ny"


def test_jsonl_rows_keep_arrays_and_report_bad_lines(tmp_path: Path) -> None:
    path = tmp_path / "e.jsonl"
    path.write_bytes(
        b'{"event": "given", "record_id": "r1", "purposes": ["a", "b"], "retention_days": 30}\n'
        b"\n"
        b"not json\n"
        b"[1, 2]\n"
        b'{"event": "given", "record_id": "r2", "colour": "blue"}\n'
        b'{"event": "given", "record_id": "r\xff"}\n'
    )
    rows = read(path)
    assert [line for line, _ in rows] == [1, 3, 4, 5, 6]
    values = dict(zip(COLUMNS, rows[0][1], strict=True))
    assert values["purposes"] == ["a", "b"] and values["retention_days"] == 30
    assert values["valid_until"] is None
    bad = [v for _, v in rows[1:]]
    assert all(isinstance(v, BadRow) for v in bad)
    assert [b.reason for b in bad] == ["ROW_MALFORMED"] * 4
    assert "not JSON" in bad[0].message
    assert "JSON object" in bad[1].message
    assert "'colour'" in bad[2].message and bad[2].record_id == "r2"
    assert "UTF-8" in bad[3].message


def test_csv_rows_with_the_wrong_width_bad_utf8_or_an_over_long_line(tmp_path: Path) -> None:
    path = tmp_path / "e.csv"
    path.write_bytes(
        b"event,record_id\n"
        b"given,r1,extra\n"
        b"given,r\xff\n" + b"given," + b"x" * 2000 + b"\n" + b"given,r4\n"
    )
    with open_rows(path, limits=ImportLimits(max_line_bytes=1024)) as reader:
        rows = list(reader)
    assert [line for line, _ in rows] == [2, 3, 4, 5]
    bad = [v for _, v in rows[:3] if isinstance(v, BadRow)]
    assert len(bad) == 3
    assert "3 fields" in bad[0].message and bad[0].record_id == "r1"
    assert "UTF-8" in bad[1].message
    assert "longer than 1024 bytes" in bad[2].message
    assert rows[3][1][:2] == ("given", "r4")


def test_chunks_are_cut_between_records_and_parse_to_the_same_rows(tmp_path: Path) -> None:
    path = tmp_path / "e.csv"
    lines = ["event,record_id,purposes", "given,r1,a", 'given,r2,"x;', "y;", 'z"', "given,r3,b"]
    path.write_text("\n".join([*lines, "", "given,r4,c", "given,r5,d"]) + "\n")
    with open_rows(path) as reader:
        header = reader.header
        chunks = list(reader.chunks(1))
    # One record per chunk: the quoted field's three lines travel together; the blank line
    # counts as a record of its own (and parses to nothing).
    assert [c.first_line for c in chunks] == [2, 3, 6, 7, 8, 9]
    assert chunks[1].data == b'given,r2,"x;\ny;\nz"\n'
    rows = [r for c in chunks for r in parse_chunk(c, header)]
    assert rows == read(path)
    assert [line for line, _ in rows] == [2, 3, 6, 8, 9]
    assert rows[1][1][COLUMNS.index("purposes")] == "x;\ny;\nz"


def test_an_unclosed_quote_is_cut_off_and_reported_not_read_to_the_end(tmp_path: Path) -> None:
    path = tmp_path / "e.csv"
    body = ['given,r0,"never closed'] + [f"given,r{i},a" for i in range(1, 60)]
    path.write_text("event,record_id,purposes\n" + "\n".join(body) + "\n")
    with open_rows(path) as reader:
        header = reader.header
        chunks = list(reader.chunks(2))
    # A chunk holds at most 8 times its records in lines, whatever the quotes say.
    assert max(c.data.count(b"\n") for c in chunks) <= 16
    rows = [r for c in chunks for r in parse_chunk(c, header)]
    bad = [v for _, v in rows if isinstance(v, BadRow)]
    assert bad and all(b.reason == "ROW_MALFORMED" for b in bad)
    # Past the cut, the rows read as rows again.
    line, values = rows[-1]
    assert (line, values[:2], values[COLUMNS.index("purposes")]) == (61, ("given", "r59"), "a")


def test_problems_keep_their_line_numbers_across_chunks(tmp_path: Path) -> None:
    path = tmp_path / "e.csv"
    body = [b"given,r1", b"given,r2", b"given,r\xff", b"given," + b"x" * 2000, b"given,r5"]
    path.write_bytes(b"event,record_id\n" + b"\n".join(body) + b"\n")
    with open_rows(path, limits=ImportLimits(max_line_bytes=1024)) as reader:
        header = reader.header
        rows = [r for c in reader.chunks(2) for r in parse_chunk(c, header)]
    assert [line for line, _ in rows] == [2, 3, 4, 5, 6]
    messages = [v.message for _, v in rows if isinstance(v, BadRow)]
    assert len(messages) == 2
    assert "UTF-8" in messages[0] and "longer than 1024" in messages[1]
    assert rows[4][1][:2] == ("given", "r5")


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("", "is empty"),
        ("record_id,actor\n", "lacks event"),
        ("event,record_id,colour\n", "unknown column(s) 'colour'"),
        ("event,record_id,event\n", "event repeated"),
    ],
)
def test_unusable_csv_headers(tmp_path: Path, content: str, expected: str) -> None:
    path = tmp_path / "e.csv"
    path.write_text(content)
    with pytest.raises(InputError) as e:
        open_rows(path)
    assert expected in e.value.message


def test_unusable_files(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="cannot read"):
        open_rows(tmp_path / "missing.csv")
    with pytest.raises(InputError, match="format"):
        open_rows(tmp_path / "events.txt")
    (tmp_path / "d.csv").mkdir()
    with pytest.raises(InputError, match="directory"):
        open_rows(tmp_path / "d.csv")
    assert ImportFormat.of(Path("x.JSONL")) is ImportFormat.JSONL
    assert ImportFormat.of(Path("x.ndjson")) is ImportFormat.JSONL
