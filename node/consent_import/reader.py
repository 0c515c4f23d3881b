"""Rows of a CSV (with a header) or JSONL file, from the chunks `node.consent_import.chunks`
cuts: each as (the line it starts on, its `Values` in COLUMNS order, or a `BadRow`)."""

from __future__ import annotations

import csv
import io
import operator
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

from keys import bounded_json
from node.consent_import.chunks import Chunk, Lines
from node.consent_import.model import (
    COLUMNS,
    LIST_COLUMNS,
    REQUIRED_COLUMNS,
    ROW_MALFORMED,
    BadRow,
    ImportFormat,
    ImportLimits,
    InputError,
    RawRow,
    Values,
)


def parse_chunk(chunk: Chunk, header: Sequence[str] | None) -> Iterator[RawRow]:
    """The rows of a chunk (`header`: a CSV file's column names; None: JSONL)."""
    lines = Lines(
        io.BytesIO(chunk.data), len(chunk.data) + 1, chunk.first_line - 1, dict(chunk.problems)
    )
    if header is None:
        return _jsonl_rows(lines)
    return _csv_rows(lines, header)


class RowReader:
    """Rows of a CSV (with a header) or JSONL file as (line, values in COLUMNS order), streamed.

    Absent values are None (an empty CSV cell is ""). A row that cannot be read is a `BadRow`.
    Opening checks the file and the header, raising InputError for unusable input.
    """

    def __init__(self, path: Path, fmt: ImportFormat, max_line_bytes: int = 1 << 20) -> None:
        self.path, self.format = path, fmt
        if path.is_dir():
            raise InputError(f"{path} is a directory")
        try:
            self.size = path.stat().st_size
            self._file: IO[bytes] = path.open("rb")
        except OSError as e:
            raise InputError(f"cannot read {path}: {e.strerror}") from None
        self._lines = Lines(self._file, max_line_bytes)
        # The CSV header's column names; None for JSONL.
        self.header: tuple[str, ...] | None = None
        try:
            if fmt is ImportFormat.CSV:
                self.header = self._csv_header()
        except BaseException:
            self._file.close()
            raise

    @property
    def bytes_read(self) -> int:
        """Bytes of the file read so far, the header included; 0 before any is read."""
        return self._lines.bytes

    def chunks(self, records: int) -> Iterator[Chunk]:
        """The rows after the header, as raw chunks of about `records` rows (`parse_chunk`)."""
        return self._lines.chunks(records, self.format is ImportFormat.CSV)

    def __iter__(self) -> Iterator[RawRow]:
        for chunk in self.chunks(1024):
            yield from parse_chunk(chunk, self.header)

    def close(self) -> None:
        """Close the file."""
        self._file.close()

    def __enter__(self) -> RowReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _csv_header(self) -> tuple[str, ...]:
        lines = self._lines
        # The header alone: csv.reader reads no further than the record it returns.
        reader = csv.reader(lines, strict=True)
        try:
            header = next(reader, None)
        except csv.Error as e:
            raise InputError(f"{self.path.name}: the CSV header cannot be read: {e}") from None
        if header is None:
            raise InputError(f"{self.path.name} is empty: a CSV import needs a header row")
        if lines.problems:
            raise InputError(f"{self.path.name}: header: {next(iter(lines.problems.values()))}")
        names = [h.strip().lstrip("\ufeff").strip() for h in header]
        unknown = [n for n in names if n not in COLUMNS]
        if unknown:
            raise InputError(
                f"{self.path.name}: unknown column(s) {', '.join(map(repr, unknown))} in the "
                f"header; the columns are {', '.join(COLUMNS)}"
            )
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise InputError(f"{self.path.name}: column(s) {', '.join(repeated)} repeated")
        missing = [n for n in REQUIRED_COLUMNS if n not in names]
        if missing:
            raise InputError(
                f"{self.path.name}: the header lacks {', '.join(missing)} "
                f"(it has {', '.join(names) or 'no columns'})"
            )
        return tuple(names)


def _csv_rows(lines: Lines, names: Sequence[str]) -> Iterator[RawRow]:
    reader = csv.reader(lines, strict=True)
    problems = lines.problems
    width = len(names)
    # Absent columns read the None appended to each row.
    pick = operator.itemgetter(*[names.index(c) if c in names else width for c in COLUMNS])
    id_at = names.index("record_id")
    base = ended = lines.line  # reader.line_num counts from the chunk's first line
    while True:
        start = ended + 1
        try:
            fields: list[Any] = next(reader)
        except StopIteration:
            yield from _lone_problems(problems, None)
            return
        except csv.Error as e:
            ended = base + reader.line_num
            yield from _lone_problems(problems, start)
            _take_problem(problems, start, ended)
            yield start, BadRow("", ROW_MALFORMED, f"CSV syntax: {e}")
            continue
        ended = base + reader.line_num
        rid = fields[id_at] if len(fields) > id_at else ""
        if problems:
            yield from _lone_problems(problems, start)
            problem = _take_problem(problems, start, ended)
            if problem:
                yield start, BadRow(rid, ROW_MALFORMED, problem)
                continue
        if not fields:
            continue  # a blank line
        if len(fields) != width:
            yield (
                start,
                BadRow(rid, ROW_MALFORMED, f"row has {len(fields)} fields, the header {width}"),
            )
            continue
        fields.append(None)
        yield start, Values._make(pick(fields))


_KNOWN_KEYS = frozenset(COLUMNS)


def _jsonl_rows(lines: Lines) -> Iterator[RawRow]:
    for text in lines:
        line = lines.line
        if line in lines.problems:
            yield line, BadRow("", ROW_MALFORMED, lines.problems.pop(line))
            continue
        if line == 1:
            text = text.lstrip("\ufeff")
        if not text.strip():
            continue
        try:
            obj = bounded_json.loads(text, f"line {line}")
        except ValueError as e:
            yield line, BadRow("", ROW_MALFORMED, f"not JSON: {e}")
            continue
        if not isinstance(obj, dict):
            yield line, BadRow("", ROW_MALFORMED, "a JSONL row must be a JSON object")
            continue
        if not obj.keys() <= _KNOWN_KEYS:
            rid = obj.get("record_id")
            extra = sorted(k for k in obj if k not in _KNOWN_KEYS)
            yield (
                line,
                BadRow(
                    rid if isinstance(rid, str) else "",
                    ROW_MALFORMED,
                    f"unknown key(s) {', '.join(map(repr, extra))}",
                ),
            )
            continue
        values = Values._make([obj.get(c) for c in COLUMNS])
        for name in LIST_COLUMNS:
            if obj.get(name) is not None and not isinstance(obj[name], list):
                rid = values.record_id
                yield (
                    line,
                    BadRow(
                        rid if isinstance(rid, str) else "",
                        "CONSENT_FIELD_INVALID",
                        f"{name} must be an array of codes",
                    ),
                )
                break
        else:
            yield line, values


def _lone_problems(problems: dict[int, str], before: int | None) -> Iterator[RawRow]:
    """Unreadable lines before line `before` (None: all) that no row covered: rows of their own."""
    for line in sorted(n for n in problems if before is None or n < before):
        yield line, BadRow("", ROW_MALFORMED, problems.pop(line))


def _take_problem(problems: dict[int, str], start: int, end: int) -> str | None:
    """The first problem on the lines [start, end] of one row, removing them all."""
    found = None
    for line in sorted(n for n in problems if start <= n <= end):
        message = problems.pop(line)
        if found is None:
            found = message if line == start else f"line {line}: {message}"
    return found


def open_rows(
    path: Path, fmt: ImportFormat | None = None, limits: ImportLimits | None = None
) -> RowReader:
    """Open an input file, checking it (and a CSV header) first: InputError if unusable."""
    limits = limits or ImportLimits()
    return RowReader(path, fmt or ImportFormat.of(path), limits.max_line_bytes)
