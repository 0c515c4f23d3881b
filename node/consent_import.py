"""Bulk import of consent events from CSV or JSONL (`citybroker node consent import FILE`).

Input: a CSV file with a header, or JSONL, with the columns (keys) in COLUMNS; `event` and
`record_id` are required, purposes, recipients and data categories are ';'-separated in CSV and
arrays in JSONL. Absent values take ConsentRecord's defaults, the actor defaults to "import via
<file name>". Unlike the API, which takes "now", `valid_from` is required to create a record, so
that importing the file again finds the same terms. A row is numbered by the line of the file it
starts on (a CSV header is line 1).

The file is streamed in fixed-size batches and its rows are applied in file order, with the same
rules as the ConsentService API:

- `given` / `refused` create a record, validated by `ConsentRecord.validate` (with the trust
  bundle's parties as known recipients when run with a node config). A record id that exists with
  the same terms (as they were when the record was created) is already applied: counted as a
  duplicate, nothing written. Other terms under that id are an error row
  (CONSENT_RECORD_CONFLICT).
- `renewed` / `withdrawn` / `revoked` / `invalidated` follow `node.consent_lifecycle.next_state`.
  An event the record's history already holds is already applied (for the end events that is the
  state the record is in; for `renewed`, a renewal to the same `valid_until`), so importing the same
  file again changes nothing. One limit follows: a file that renews a record to a date, then to
  another, then back to the first, imports the third renewal as a duplicate.
- Every other problem is an error row (row, record id, reason, message) that never stops the rest.

Each batch's good rows commit in one transaction: a database failure rolls the whole batch back and
reports each of its rows (BATCH_FAILED); nothing is ever partly applied.

Evidence: one signature per batch, not per event. Every applied event has the receipt payload the
API would sign for it (`node.consent.receipt_payload`, RFC 8785 canonical JSON). It is not stored
whole: everything in it is in the event's row (event, actor, time, and the record's validity end
as of the event) or its record (whose other terms never change), and `node.consent.
imported_payload` rebuilds it byte for byte. The batch's statement (DSSE, type `consent-batch`,
signed with the city's key) lists the SHA-256 digest of each of those payloads, in the order
applied, with the city and the time; a batch of more than MAX_STATEMENT_EVENTS events gets
several. The statements are stored in consent_batches, in the batch's transaction (each event
names its statement), and once it has committed they are appended to the node's Merkle log (kind
"consent"), whose own transaction stores their log indexes, before the next batch is written. So
every imported event is provable: its payload, a signed statement listing its digest, and that
statement's place in the log (the auditor's verifier checks the statements like any logged one).
A resident's or an exporter's receipt for an imported event (history, ExportConsentReceipt,
Kantara) is signed when asked for, over its payload: `ConsentRegistry.stored_receipt`, byte for
byte the receipt the API gives (Ed25519 signatures are deterministic) while the city's key stays
the same.

Throughput: this process only cuts the file into chunks of raw lines (between records, by
counting quotes: no decoding or parsing here); parsing, validation and the building of rows and
receipt payloads run in worker processes (`ImportLimits.workers`). This process then looks the
batch's records up and resolves its rows in file order, while the workers prepare the next batch
and a writer thread writes the one before (executemany; on SQLite straight to the driver, values
processed as SQLAlchemy would) and appends its statements to the log. At most one batch is being
prepared, one resolved and one written, so memory stays bounded whatever the size of the file.
The workers never see the city's key.

The import may run while the node serves: before writing, a batch takes the database's write
lock and checks that the records it changes are still as it read them; if the API changed one in
the meantime the batch is resolved again (from the same parsed rows) before it is written.
"""

from __future__ import annotations

import csv
import gc
import hashlib
import io
import itertools
import json
import multiprocessing
import operator
import os
import re
import sqlite3
import threading
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import IO, Any, NamedTuple

import orjson
import sqlalchemy as sa
from sqlalchemy.dialects.sqlite import dialect as sqlite_dialect

from audit.log import MerkleLog
from domain.errors import CitybrokerError, InvalidArgument, StoreError
from domain.kinds import LogKind, Statement
from keys import dsse, timefmt
from keys.ed25519 import Signer
from node.consent import (
    MAX_ID_CHARS,
    RECEIPT,
    ConsentRecord,
    event_payload,
    receipt_payload,
    record_from_row,
    record_row,
)
from node.consent_lifecycle import STARTING, Event, State, next_state
from node.schema import consent_batches, consent_events, consent_records, consent_scopes

# The input's columns (CSV header names, JSONL keys), in the order rows travel internally.
COLUMNS = (
    "event",
    "record_id",
    "resident_id",
    "purposes",
    "recipients",
    "data_categories",
    "valid_from",
    "valid_until",
    "lawful_basis",
    "notice_url",
    "notice_hash",
    "language",
    "jurisdiction",
    "retention_days",
    "collection_method",
    "withdrawal_method",
    "actor",
)
REQUIRED_COLUMNS = ("event", "record_id")
LIST_SEPARATOR = ";"
# Events a file may carry; `expired` is the node's own to record, as time runs out.
IMPORTABLE: dict[str, Event] = {
    e.value: e
    for e in (
        Event.GIVE,
        Event.REFUSE,
        Event.RENEW,
        Event.WITHDRAW,
        Event.REVOKE,
        Event.INVALIDATE,
    )
}
# The statement signed for each batch (see the module docstring), and the most receipt payloads
# one covers: 8192 digests make about 800 KB of envelope, within the log's 1 MB entry limit.
BATCH_STATEMENT = Statement.CONSENT_BATCH
MAX_STATEMENT_EVENTS = 8192
BATCH_FAILED = "BATCH_FAILED"
ROW_MALFORMED = "ROW_MALFORMED"
ERROR_REPORT_COLUMNS = ("row", "record_id", "reason", "message")
LOG_KIND = LogKind.CONSENT

(
    _EVENT,
    _RECORD_ID,
    _RESIDENT_ID,
    _PURPOSES,
    _RECIPIENTS,
    _CATEGORIES,
    _VALID_FROM,
    _VALID_UNTIL,
    _LAWFUL_BASIS,
    _NOTICE_URL,
    _NOTICE_HASH,
    _LANGUAGE,
    _JURISDICTION,
    _RETENTION_DAYS,
    _COLLECTION_METHOD,
    _WITHDRAWAL_METHOD,
    _ACTOR,
) = range(len(COLUMNS))
_WHOLE_NUMBER = re.compile(r"^-?[0-9]{1,9}$")
_LIST_FIELDS = (_PURPOSES, _RECIPIENTS, _CATEGORIES)
_STATE_OF = {e: State(e.value) for e in STARTING}
_STATE_BY_NAME = {s.value: s for s in State}
_STARTING_NAMES = frozenset(e.value for e in STARTING)
_IN_CHUNK = 500  # ids per IN (...) query
_COLLECT_EVERY = 100  # batches between collector passes (see _Run.run)
_CHECKPOINT_PAGES = 20_000  # WAL pages (80 MB of 4 KiB) after which an import lets it start over
_SQLITE_CHECKPOINT_PAGES = 1000  # SQLite's default, which the node's connections keep
_COMMON_VALUES = 4096  # recurring values a worker keeps one object of (`_Codec.common`)
_READ_BYTES = 1 << 20  # the input is read in blocks of this size
_AHEAD = 1  # batches handed to the workers before the one being resolved is written
_LOG_CHUNK, _LOG_CHUNK_BYTES = 4096, 32 << 20  # per append_many, within the log's limits


class ImportFormat(StrEnum):
    CSV = "csv"
    JSONL = "jsonl"

    @classmethod
    def of(cls, path: Path) -> ImportFormat:
        suffix = path.suffix.lower()
        if suffix == ".csv":
            return cls.CSV
        if suffix in (".jsonl", ".ndjson"):
            return cls.JSONL
        raise InputError(
            f"cannot tell the format of {path.name} from its extension; "
            "name it .csv or .jsonl, or give --format csv|jsonl"
        )


class InputError(InvalidArgument):
    """The input cannot be imported at all (missing or unreadable file, bad CSV header)."""

    default_reason = "IMPORT_INPUT_INVALID"


@dataclass(frozen=True)
class ImportLimits:
    """How an import runs. `workers`: processes that parse and validate rows (None: one per CPU
    but one, at least one, once the input turns out to be larger than one batch; 0: everything
    in this process)."""

    batch_size: int = 5000
    workers: int | None = None
    max_line_bytes: int = 1 << 20
    # Attempts at writing one batch when a concurrent writer changed the records it touches.
    write_attempts: int = 3
    # SQLite page cache of the connection that writes (KiB).
    cache_kib: int = 32 << 10

    def __post_init__(self) -> None:
        if not 1 <= self.batch_size <= 50_000:
            raise InvalidArgument("batch size must be 1 to 50000")
        if self.workers is not None and not 0 <= self.workers <= 64:
            raise InvalidArgument("workers must be 0 to 64")
        if self.max_line_bytes < 1024 or self.write_attempts < 1 or self.cache_kib < 1:
            raise InvalidArgument("import limits are too small")


@dataclass(frozen=True)
class RowError:
    """One row that was not applied: the file line it starts on, its record id, why."""

    row: int
    record_id: str
    reason: str
    message: str


@dataclass
class ImportReport:
    """Counts of one run: rows read, events applied, rows already applied, error rows by
    reason, batches (and how many were rolled back), input bytes read so far."""

    rows: int = 0
    applied: int = 0
    duplicates: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    batches: int = 0
    failed_batches: int = 0
    bytes_read: int = 0

    @property
    def error_rows(self) -> int:
        return sum(self.errors.values())


ErrorSink = Callable[[RowError], None]
Progress = Callable[[ImportReport], None]


# -- reading ----------------------------------------------------------------------------------


class _Bad(NamedTuple):
    """A row the reader could not turn into values."""

    record_id: str
    reason: str
    message: str


RawRow = tuple[int, "tuple[Any, ...] | _Bad"]


class _Lines:
    """Binary lines decoded one at a time: counts bytes, bounds line length, notes bad UTF-8."""

    def __init__(
        self, f: IO[bytes], max_bytes: int, line: int = 0, problems: dict[int, str] | None = None
    ) -> None:
        self._f, self._max = f, max_bytes
        self.bytes = 0
        self.line = line  # of the last line read
        self.problems: dict[int, str] = problems if problems is not None else {}

    def __iter__(self) -> _Lines:
        return self

    def __next__(self) -> str:
        raw = self._f.readline(self._max)
        if not raw:
            raise StopIteration
        self.bytes += len(raw)
        self.line += 1
        if len(raw) == self._max and not raw.endswith(b"\n"):
            self._skip_long()
            return "\n"
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            self.problems[self.line] = "line is not valid UTF-8"
            return raw.decode("utf-8", "replace")

    def _skip_long(self) -> None:
        """Skip the rest of an over-long line without holding it; note the line."""
        while True:
            more = self._f.readline(self._max)
            self.bytes += len(more)
            if not more or more.endswith(b"\n"):
                break
        self.problems[self.line] = f"line is longer than {self._max} bytes"

    def chunks(self, records: int, quoted_fields: bool) -> Iterator[_Chunk]:
        """The rest of the file as chunks of about `records` records each, as raw bytes, cut
        only between records (CSV: outside quotes), for `parse_chunk`. The file is read in
        blocks and each line only searched for its end (and counted for quotes): no decoding
        or parsing here. An over-long line travels as an empty line, its problem noted. A quote
        left open (malformed CSV) for much longer than a chunk is cut anyway, so a chunk stays
        bounded; the rows around that cut then fail to parse, and say so."""
        f, limit = self._f, self._max
        most_lines, most_bytes = records * 8, 64 << 20
        buf, pos, eof = b"", 0, False
        while True:
            first = self.line + 1
            out: list[bytes] = []
            kept = pos  # buf[kept:pos]: read lines not yet in `out`
            lines = ended = 0
            quoted = False
            while ended < records:
                end = buf.find(b"\n", pos, pos + limit)
                if end < 0:
                    if not eof and len(buf) - pos < limit:  # the line may go on in the next block
                        out.append(buf[kept:pos])
                        more = f.read(_READ_BYTES)
                        eof = not more
                        buf, pos, kept = buf[pos:] + more, 0, 0
                        continue
                    if pos == len(buf):
                        break  # the end of the file
                    if len(buf) - pos < limit:
                        end = len(buf) - 1  # the last line, with no line break
                if end < 0:  # over-long: it travels as an empty line
                    out.append(buf[kept:pos])
                    out.append(b"\n")
                    buf, pos, eof = self._skip_long_in(buf, pos, eof)
                    kept = pos
                else:
                    if quoted_fields and buf.count(b'"', pos, end) & 1:
                        quoted = not quoted
                    self.bytes += end + 1 - pos
                    self.line += 1
                    pos = end + 1
                lines += 1
                if not quoted:
                    ended += 1
                elif lines >= most_lines or sum(map(len, out)) + pos - kept >= most_bytes:
                    break
            out.append(buf[kept:pos])
            if not lines:
                return
            problems = {n: self.problems.pop(n) for n in sorted(self.problems) if n >= first}
            yield _Chunk(first, b"".join(out), problems, self.bytes)

    def _skip_long_in(self, buf: bytes, pos: int, eof: bool) -> tuple[bytes, int, bool]:
        """Skip an over-long line starting at buf[pos], reading on as far as its end without
        holding it; note the line. Returns the buffer and position after it."""
        self.line += 1
        self.problems[self.line] = f"line is longer than {self._max} bytes"
        while True:
            end = buf.find(b"\n", pos)
            if end >= 0:
                self.bytes += end + 1 - pos
                return buf, end + 1, eof
            self.bytes += len(buf) - pos
            if eof:
                return b"", 0, True
            buf, pos = self._f.read(_READ_BYTES), 0
            eof = not buf


class _Chunk(NamedTuple):
    """Consecutive lines of the input, from line `first_line`, with the problems of its lines
    (over-long ones arrive empty); `bytes_read`: of the file, up to its end."""

    first_line: int
    data: bytes
    problems: dict[int, str]
    bytes_read: int


def parse_chunk(chunk: _Chunk, header: Sequence[str] | None) -> Iterator[RawRow]:
    """The rows of a chunk (`header`: a CSV file's column names; None: JSONL)."""
    lines = _Lines(
        io.BytesIO(chunk.data), len(chunk.data) + 1, chunk.first_line - 1, dict(chunk.problems)
    )
    if header is None:
        return _jsonl_rows(lines)
    return _csv_rows(lines, header)


class RowReader:
    """Rows of a CSV (with a header) or JSONL file as (line, values in COLUMNS order), streamed.

    Absent values are None (an empty CSV cell is ""). A row that cannot be read is a `_Bad`.
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
        self._lines = _Lines(self._file, max_line_bytes)
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
        return self._lines.bytes

    def chunks(self, records: int) -> Iterator[_Chunk]:
        """The rows after the header, as raw chunks of about `records` rows (`parse_chunk`)."""
        return self._lines.chunks(records, self.format is ImportFormat.CSV)

    def __iter__(self) -> Iterator[RawRow]:
        for chunk in self.chunks(1024):
            yield from parse_chunk(chunk, self.header)

    def close(self) -> None:
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


def _csv_rows(lines: _Lines, names: Sequence[str]) -> Iterator[RawRow]:
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
            yield start, _Bad("", ROW_MALFORMED, f"CSV syntax: {e}")
            continue
        ended = base + reader.line_num
        rid = fields[id_at] if len(fields) > id_at else ""
        if problems:
            yield from _lone_problems(problems, start)
            problem = _take_problem(problems, start, ended)
            if problem:
                yield start, _Bad(rid, ROW_MALFORMED, problem)
                continue
        if not fields:
            continue  # a blank line
        if len(fields) != width:
            yield (
                start,
                _Bad(rid, ROW_MALFORMED, f"row has {len(fields)} fields, the header {width}"),
            )
            continue
        fields.append(None)
        yield start, pick(fields)


_KNOWN_KEYS = frozenset(COLUMNS)


def _jsonl_rows(lines: _Lines) -> Iterator[RawRow]:
    for text in lines:
        line = lines.line
        if line in lines.problems:
            yield line, _Bad("", ROW_MALFORMED, lines.problems.pop(line))
            continue
        if line == 1:
            text = text.lstrip("\ufeff")
        if not text.strip():
            continue
        try:
            obj = json.loads(text)
        except ValueError as e:
            yield line, _Bad("", ROW_MALFORMED, f"not JSON: {e}")
            continue
        if not isinstance(obj, dict):
            yield line, _Bad("", ROW_MALFORMED, "a JSONL row must be a JSON object")
            continue
        if not obj.keys() <= _KNOWN_KEYS:
            rid = obj.get("record_id")
            extra = sorted(k for k in obj if k not in _KNOWN_KEYS)
            yield (
                line,
                _Bad(
                    rid if isinstance(rid, str) else "",
                    ROW_MALFORMED,
                    f"unknown key(s) {', '.join(map(repr, extra))}",
                ),
            )
            continue
        values = tuple([obj.get(c) for c in COLUMNS])
        for i in _LIST_FIELDS:
            if values[i] is not None and not isinstance(values[i], list):
                rid = values[_RECORD_ID]
                yield (
                    line,
                    _Bad(
                        rid if isinstance(rid, str) else "",
                        "CONSENT_FIELD_INVALID",
                        f"{COLUMNS[i]} must be an array of codes",
                    ),
                )
                break
        else:
            yield line, values


def _lone_problems(problems: dict[int, str], before: int | None) -> Iterator[RawRow]:
    """Unreadable lines before line `before` (None: all) that no row covered: rows of their own."""
    for line in sorted(n for n in problems if before is None or n < before):
        yield line, _Bad("", ROW_MALFORMED, problems.pop(line))


def _take_problem(problems: dict[int, str], start: int, end: int) -> str | None:
    """The first problem on the lines [start, end] of one row, removing them all."""
    found = None
    for line in sorted(n for n in problems if start <= n <= end):
        message = problems.pop(line)
        if found is None:
            found = message if line == start else f"line {line}: {message}"
    return found


# -- one row: parse, validate, build rows, sign (in a worker process or here) -----------------


class _RowFailure(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason, self.message = reason, message


def _text(values: tuple[Any, ...], i: int, default: str = "") -> str:
    v = values[i]
    if v is None or v == "":
        return default
    if not isinstance(v, str):
        raise _RowFailure("CONSENT_FIELD_INVALID", f"{COLUMNS[i]} must be a string")
    return v


def _codes(values: tuple[Any, ...], i: int) -> tuple[str, ...]:
    v = values[i]
    if v is None:
        return ()
    if isinstance(v, str):  # CSV: "a;b;c"
        return tuple(s for s in (p.strip() for p in v.split(LIST_SEPARATOR)) if s)
    if isinstance(v, list):
        return tuple(v)
    raise _RowFailure("CONSENT_FIELD_INVALID", f"{COLUMNS[i]} must be an array of codes")


def _time(values: tuple[Any, ...], i: int, required: bool) -> datetime | None:
    v = values[i]
    if v is None or v == "":
        if required:
            raise _RowFailure("TIMESTAMP_INVALID", f"{COLUMNS[i]} is required (RFC 3339)")
        return None
    if not isinstance(v, str):
        raise _RowFailure("TIMESTAMP_INVALID", f"{COLUMNS[i]} must be an RFC 3339 string")
    try:
        return timefmt.parse(v)
    except ValueError as e:
        raise _RowFailure("TIMESTAMP_INVALID", f"{COLUMNS[i]}: {e}") from None


def _whole(values: tuple[Any, ...], i: int) -> int:
    v = values[i]
    if v is None or v == "":
        return 0
    if isinstance(v, bool) or not isinstance(v, int | str):
        raise _RowFailure("CONSENT_FIELD_INVALID", f"{COLUMNS[i]} must be a whole number")
    if isinstance(v, int):
        return v
    if not _WHOLE_NUMBER.match(v.strip()):
        raise _RowFailure("CONSENT_FIELD_INVALID", f"{COLUMNS[i]} must be a whole number")
    return int(v)


def batch_statement(city: str, at: datetime, digests: Iterable[str]) -> dict[str, Any]:
    """What a batch's statement signs: the city, when, and the digest (`receipt_digest`) of each
    imported event's canonical receipt payload (of type `receipt_type`), in the order they were
    applied."""
    return {
        "city": city,
        "at": timefmt.fmt(at),
        "receipt_type": _RECEIPT_TYPE,
        "receipts": list(digests),
    }


def receipt_digest(payload: bytes) -> str:
    """How a batch's statement names a receipt payload: its SHA-256."""
    return "sha256:" + hashlib.sha256(payload).hexdigest()


def parse_record(values: tuple[Any, ...]) -> ConsentRecord:
    """The record a `given`/`refused` row describes (unvalidated), with the API's defaults."""
    valid_from = _time(values, _VALID_FROM, required=True)
    assert valid_from is not None
    return ConsentRecord(
        record_id=_text(values, _RECORD_ID),
        resident_id=_text(values, _RESIDENT_ID),
        purposes=_codes(values, _PURPOSES),
        recipients=_codes(values, _RECIPIENTS),
        data_categories=_codes(values, _CATEGORIES),
        valid_from=valid_from,
        valid_until=_time(values, _VALID_UNTIL, required=False),
        lawful_basis=_text(values, _LAWFUL_BASIS, "consent"),
        notice_url=_text(values, _NOTICE_URL),
        notice_hash=_text(values, _NOTICE_HASH),
        language=_text(values, _LANGUAGE, "en"),
        jurisdiction=_text(values, _JURISDICTION),
        retention_days=_whole(values, _RETENTION_DAYS),
        collection_method=_text(values, _COLLECTION_METHOD),
        withdrawal_method=_text(values, _WITHDRAWAL_METHOD),
    )


# What a row becomes. Tuples, since they cross process boundaries by the million.
ERR, START, MOVE = 0, 1, 2
# (ERR, line, record_id, reason, message)
# (START, line, event, record_id, terms digest, actor, record_tuple, scope_tuples, receipt digest)
# (MOVE, line, event, record_id, valid_until | None, actor)
Prepared = tuple[Any, ...]

_RECORD_COLUMNS = tuple(c.name for c in consent_records.columns)
_SCOPE_COLUMNS = tuple(c.name for c in consent_scopes.columns)
_EVENT_COLUMNS = ("record_id", "event", "actor", "at", "batch_id", "valid_until")
_R_ID = _RECORD_COLUMNS.index("record_id")
_R_RESIDENT = _RECORD_COLUMNS.index("resident_id")
_R_STATE = _RECORD_COLUMNS.index("state")
# Columns whose values recur from record to record (`_Codec.common`).
_R_RECURRING = tuple(
    _RECORD_COLUMNS.index(c)
    for c in (
        "lawful_basis",
        "notice_url",
        "notice_hash",
        "language",
        "jurisdiction",
        "retention_days",
        "collection_method",
        "withdrawal_method",
        "state",
    )
)
_R_FROM = _RECORD_COLUMNS.index("valid_from")
_R_UNTIL = _RECORD_COLUMNS.index("valid_until")
_R_DIGEST = _RECORD_COLUMNS.index("content_digest")
_S_STATE = _SCOPE_COLUMNS.index("state")
_IDS: sa.BindParameter[str] = sa.bindparam("ids", expanding=True)
_SELECT_RECORDS = sa.select(consent_records).where(consent_records.c.record_id.in_(_IDS))
_SELECT_SCOPES = sa.select(
    consent_scopes.c.record_id,
    consent_scopes.c.purpose,
    consent_scopes.c.recipient,
    consent_scopes.c.data_category,
).where(consent_scopes.c.record_id.in_(_IDS))
_S_UNTIL = _SCOPE_COLUMNS.index("valid_until")
_IN_JSON = "IN (SELECT value FROM json_each(?))"
_LOOKUP_RECORDS_SQLITE = (
    f"SELECT {', '.join(_RECORD_COLUMNS)} FROM consent_records WHERE record_id {_IN_JSON}"
)
_CHECK_SQLITE = (
    f"SELECT record_id, state, content_digest FROM consent_records WHERE record_id {_IN_JSON}"
)
_LOOKUP_SCOPES_SQLITE = (
    "SELECT record_id, purpose, recipient, data_category FROM consent_scopes "
    f"WHERE record_id {_IN_JSON}"
)
_INSERT_BATCH = consent_batches.insert()
_P_ID = sa.bindparam("b_id", type_=sa.String())
_P_STATE = sa.bindparam("b_state", type_=sa.String())
_P_UNTIL = sa.bindparam("b_until", type_=sa.DateTime())
# (name, statement, its parameters in the order of SQLite's positional SQL)
_STATEMENTS: tuple[tuple[str, sa.Insert | sa.Update, tuple[str, ...]], ...] = (
    ("records", consent_records.insert(), _RECORD_COLUMNS),
    ("scopes", consent_scopes.insert(), _SCOPE_COLUMNS),
    ("events", consent_events.insert(), _EVENT_COLUMNS),
    (
        "move records",
        consent_records.update().where(consent_records.c.record_id == _P_ID).values(state=_P_STATE),
        ("b_state", "b_id"),
    ),
    (
        "move scopes",
        consent_scopes.update().where(consent_scopes.c.record_id == _P_ID).values(state=_P_STATE),
        ("b_state", "b_id"),
    ),
    (
        "renew records",
        consent_records.update()
        .where(consent_records.c.record_id == _P_ID)
        .values(valid_until=_P_UNTIL, state=_P_STATE, content_digest=sa.bindparam("b_digest")),
        ("b_until", "b_state", "b_digest", "b_id"),
    ),
    (
        "renew scopes",
        consent_scopes.update()
        .where(consent_scopes.c.record_id == _P_ID)
        .values(valid_until=_P_UNTIL, state=_P_STATE),
        ("b_state", "b_until", "b_id"),
    ),
)
_MARK_LOGGED = (
    consent_batches.update()
    .where(consent_batches.c.batch_id == sa.bindparam("b_id"))
    .values(log_index=sa.bindparam("b_index"))
)


class _Codec:
    """Row values as the database driver gets them. On SQLite the rows go straight to the
    driver's executemany, so datetimes are turned into text here, exactly as SQLAlchemy's SQLite
    DATETIME type does; elsewhere they stay Python values for a SQLAlchemy Core executemany."""

    def __init__(self, driver_level: bool) -> None:
        self.driver_level = driver_level
        self.dt: Callable[[Any], Any] = sqlite_datetime if driver_level else _identity
        self._common: dict[Any, Any] = {}

    def common(self, value: Any) -> Any:
        """One object for each recurring value (a notice, a language, a purpose...): a batch's
        rows then pickle each just once, and the importing process, whose time is what limits
        an import, unpickles and frees a third fewer objects."""
        common = self._common
        if len(common) >= _COMMON_VALUES:
            common.clear()  # values that do not recur, after all: stay bounded
        return common.setdefault(value, value)

    def record(self, row: dict[str, Any]) -> tuple[Any, ...]:
        out = [row[c] for c in _RECORD_COLUMNS]
        for i in _R_RECURRING:
            out[i] = self.common(out[i])
        out[_R_FROM] = self.dt(out[_R_FROM])
        out[_R_UNTIL] = self.dt(out[_R_UNTIL])
        return tuple(out)

    def scopes(
        self, record: ConsentRecord, state: str, row: tuple[Any, ...]
    ) -> tuple[tuple[Any, ...], ...]:
        """The record's consent_scopes rows (`scope_rows`, as tuples), its times taken from its
        consent_records row `row` (already processed)."""
        rid, resident = row[_R_ID], row[_R_RESIDENT]
        valid_from, valid_until = row[_R_FROM], row[_R_UNTIL]
        common = self.common
        return tuple(
            (rid, common(p), common(r), common(c), resident, state, valid_from, valid_until)
            for p, r, c in record.scopes()
        )


assert _SCOPE_COLUMNS == (
    "record_id",
    "purpose",
    "recipient",
    "data_category",
    "resident_id",
    "state",
    "valid_from",
    "valid_until",
)


def _identity(v: Any) -> Any:
    return v


_SQLITE_DATETIME: Callable[[Any], Any] = _identity
if _sqlite_dt := sa.DateTime().dialect_impl(sqlite_dialect()).bind_processor(sqlite_dialect()):
    _SQLITE_DATETIME = _sqlite_dt


def sqlite_datetime(value: datetime | None) -> str | None:
    """A datetime as SQLAlchemy's SQLite DATETIME type stores it: for the naive (UTC) ones the
    tables hold, isoformat writes the same text in less than half the time."""
    if value is None:
        return None
    if value.tzinfo is None:
        return value.isoformat(" ", "microseconds")
    return _SQLITE_DATETIME(value)  # type: ignore[no-any-return]


_RECEIPT_TYPE = dsse.media_type(RECEIPT)


def _receipt_json(obj: Any) -> bytes:
    """`dsse.canonical` for a receipt payload or a record's terms, through orjson.

    Their keys are fixed ASCII names and their values only strings, integers from 0 to 36500,
    None and lists of strings, built here from a validated record. For those, orjson with sorted
    keys writes exactly RFC 8785: the same escapes (short ones for \\b \\t \\n \\f \\r, lowercase
    \\u00xx for other controls), everything else as UTF-8. A property test compares the two on
    arbitrary text; a string orjson refuses (a lone surrogate) goes through dsse.canonical.
    """
    try:
        # A copy of the exact size: orjson's own result keeps its larger working buffer (about
        # 8 KB for a 700-byte payload), which thousands of payloads in flight would hold.
        return bytes(memoryview(orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)))
    except orjson.JSONEncodeError:
        return dsse.canonical(obj)


@dataclass(frozen=True)
class _Setup:
    """What a worker needs; sent once to each worker process."""

    city: str
    known_parties: frozenset[str] | None
    default_actor: str
    driver_level: bool
    header: tuple[str, ...] | None  # the CSV file's columns; None: JSONL


class _Preparer:
    """Parses, validates, builds rows and receipt payloads, one row at a time."""

    def __init__(self, setup: _Setup) -> None:
        self.city = setup.city
        self.known_party = (
            setup.known_parties.__contains__ if setup.known_parties is not None else None
        )
        self.default_actor = setup.default_actor
        self.header = setup.header
        self.codec = _Codec(setup.driver_level)

    def record(self, values: tuple[Any, ...]) -> ConsentRecord:
        return parse_record(values).validate(self.known_party)

    def payload(
        self, record: ConsentRecord, event: Event, actor: str, at: datetime, state: State
    ) -> dict[str, Any]:
        return receipt_payload(self.city, record, event, actor, at, state, _receipt_json)

    def prepare_chunk(self, chunk: _Chunk, at: datetime) -> list[Prepared]:
        prepare = self.prepare
        return [prepare(line, values, at) for line, values in parse_chunk(chunk, self.header)]

    def prepare(self, line: int, values: tuple[Any, ...] | _Bad, at: datetime) -> Prepared:
        if isinstance(values, _Bad):
            return (ERR, line, values.record_id, values.reason, values.message)
        rid = values[_RECORD_ID]
        rid_text = rid if isinstance(rid, str) else ""
        try:
            name = values[_EVENT]
            event = IMPORTABLE.get(name) if isinstance(name, str) else None
            if event is None:
                if name == Event.EXPIRE.value:
                    raise _RowFailure(
                        "CONSENT_EVENT_NOT_ALLOWED", "expired is recorded by the node itself"
                    )
                raise _RowFailure(
                    "CONSENT_EVENT_UNKNOWN",
                    f"event must be one of {', '.join(IMPORTABLE)}, not {name!r}",
                )
            actor = self.codec.common(_text(values, _ACTOR, self.default_actor))
            if len(actor) > MAX_ID_CHARS:
                raise _RowFailure(
                    "CONSENT_FIELD_INVALID", f"actor must be at most {MAX_ID_CHARS} characters"
                )
            if event in STARTING:
                record = self.record(values)
                state = _STATE_OF[event]
                payload = self.payload(record, event, actor, at, state)
                digest = payload["terms_digest"]
                row = self.codec.record(record_row(record, state, digest))
                return (
                    START,
                    line,
                    event.value,
                    rid,
                    digest,
                    actor,
                    row,
                    self.codec.scopes(record, state.value, row),
                    receipt_digest(_receipt_json(payload)),
                )
            if not rid_text or len(rid_text) > MAX_ID_CHARS:
                raise _RowFailure(
                    "CONSENT_FIELD_INVALID", f"record_id must be 1 to {MAX_ID_CHARS} characters"
                )
            until = _time(values, _VALID_UNTIL, required=False) if event is Event.RENEW else None
            return (MOVE, line, event.value, rid, until, actor)
        except _RowFailure as e:
            return (ERR, line, rid_text, e.reason, e.message)
        except CitybrokerError as e:
            return (ERR, line, rid_text, e.reason, e.message)


_WORKER: _Preparer | None = None


def _init_worker(setup: _Setup) -> None:
    global _WORKER
    _WORKER = _Preparer(setup)
    # What a worker makes holds no reference cycles; the collector's passes over millions of
    # short-lived tuples cost about a sixth of its time.
    gc.freeze()
    gc.disable()


def _prepare_chunk(chunk: _Chunk, at: datetime) -> list[Prepared]:
    worker = _WORKER
    assert worker is not None, "worker not initialised"
    return worker.prepare_chunk(chunk, at)


# -- resolving a batch against the stored state -----------------------------------------------


class _Rec:
    """What the import knows of one record while resolving a batch."""

    __slots__ = (
        "state",
        "digest",
        "until",
        "record",
        "rows",
        "first_digest",
        "renewals",
        "created",
        "expect",
    )

    def __init__(
        self,
        state: State,
        digest: str,
        until: str | None,
        record: ConsentRecord | None = None,
        rows: tuple[tuple[Any, ...], tuple[tuple[Any, ...], ...]] | None = None,
        first_digest: str | None = None,
        renewals: set[str | None] | None = None,
        created: bool = False,
    ) -> None:
        self.state, self.digest, self.until = state, digest, until
        # The record, or (created by the import) its consent_records and consent_scopes rows.
        self.record, self.rows = record, rows
        self.first_digest = first_digest  # terms digest when the record was created; None: unknown
        self.renewals = renewals  # valid_until (RFC 3339) of every renewal; None: unknown
        self.created = created  # created by this batch
        # (state, digest) the batch expects to find stored, for records it changes.
        self.expect: tuple[str, str] | None = None

    def copy(self) -> _Rec:
        r = _Rec(
            self.state,
            self.digest,
            self.until,
            self.record,
            self.rows,
            self.first_digest,
            set(self.renewals) if self.renewals is not None else None,
        )
        r.expect = (self.state.value, self.digest)
        return r


class _Event(NamedTuple):
    line: int
    record_id: str
    event: str
    actor: str
    valid_until: Any  # the record's, as of this event (as `_Codec` gives it)
    digest: str  # of its canonical receipt payload (`receipt_digest`)


@dataclass
class _Batch:
    index: int
    at: datetime
    bytes_read: int
    prepared: list[Prepared] = field(default_factory=list)
    rows: int = 0
    first_line: int = 0
    last_line: int = 0
    # Outcome of resolution:
    view: dict[str, _Rec] = field(default_factory=dict)
    creates: dict[str, list[Any]] = field(default_factory=dict)  # id -> [record, scopes]
    changes: dict[str, _Rec] = field(default_factory=dict)  # stored records this batch changes
    events: list[_Event] = field(default_factory=list)
    errors: list[RowError] = field(default_factory=list)
    duplicates: int = 0
    failure: str = ""
    # (consent_batches id, signed statement) of what was written, to append to the log.
    statements: list[tuple[int, bytes]] = field(default_factory=list)


class _Stale(Exception):
    """A record the batch changes was changed by someone else since the batch read it."""


@dataclass
class _Stored:
    """Stored records looked up for one batch: rows by id, their scopes."""

    rows: dict[str, Any]
    scopes: dict[str, list[tuple[str, str, str]]]


class ConsentImporter:
    """Imports consent event files into one node database. Not thread-safe; one run at a time."""

    def __init__(
        self,
        engine: sa.Engine,
        city: str,
        signer: Signer,
        log: MerkleLog,
        known_parties: frozenset[str] | None = None,
        limits: ImportLimits | None = None,
    ) -> None:
        self._engine, self._city, self._signer, self._log = engine, city, signer, log
        self._known_parties = known_parties
        self._limits = limits or ImportLimits()
        self._codec = _Codec(engine.dialect.name == "sqlite")
        self._inserts = {
            name: _Executemany(stmt, names, engine.dialect, self._codec.driver_level)
            for name, stmt, names in _STATEMENTS
        }

    # -- the run ----------------------------------------------------------------------------

    def run(
        self,
        path: Path,
        fmt: ImportFormat | None = None,
        on_error: ErrorSink | None = None,
        progress: Progress | None = None,
        actor: str | None = None,
    ) -> ImportReport:
        """Import one file; returns the counts. Error rows go to `on_error` in file order."""
        with open_rows(path, fmt, self._limits) as reader:
            return self.run_rows(reader, on_error, progress, actor)

    def run_rows(
        self,
        reader: RowReader,
        on_error: ErrorSink | None = None,
        progress: Progress | None = None,
        actor: str | None = None,
    ) -> ImportReport:
        """Import the rows of an opened file (see `open_rows`)."""
        default_actor = actor or f"import via {reader.path.name}"
        return _Run(self, reader, default_actor, on_error, progress).run()

    def _setup(self, default_actor: str, header: tuple[str, ...] | None) -> _Setup:
        return _Setup(
            self._city, self._known_parties, default_actor, self._codec.driver_level, header
        )

    def sign_statement(self, at: datetime, digests: Sequence[str]) -> bytes:
        """The signed statement (DSSE) covering these receipt payloads of one batch."""
        return dsse.sign(
            BATCH_STATEMENT, batch_statement(self._city, at, digests), self._signer
        ).to_json()


def default_workers() -> int:
    """Worker processes when `ImportLimits.workers` is None: one per CPU but one, at least one.
    The importing process resolves and writes (SQLite's work is most of it) and needs a CPU of
    its own: on 2 CPUs, one worker measured up to 30 % faster than two, and never slower."""
    return max(1, (os.cpu_count() or 1) - 1)


def open_rows(
    path: Path, fmt: ImportFormat | None = None, limits: ImportLimits | None = None
) -> RowReader:
    """Open an input file, checking it (and a CSV header) first: InputError if unusable."""
    limits = limits or ImportLimits()
    return RowReader(path, fmt or ImportFormat.of(path), limits.max_line_bytes)


def import_file(
    config_path: Path,
    path: Path,
    fmt: ImportFormat | None = None,
    limits: ImportLimits | None = None,
    on_error: ErrorSink | None = None,
    progress: Progress | None = None,
) -> ImportReport:
    """What `citybroker node consent import` does: import a file into the node its config names.

    The input is checked before anything else is opened. The node's database is migrated if it
    needs to be (as the node does on start), recipients are checked against the trust bundle,
    each batch is covered by a statement signed with the city's key and logged in the node's log.
    """
    from infra.party import open_party
    from node.config import NodeConfig

    limits = limits or ImportLimits()
    with open_rows(path, fmt, limits) as reader:
        config = NodeConfig.load(config_path)
        opened = open_party(config, config.origin)
        try:
            parties = frozenset(opened.trust.current.parties)
            importer = ConsentImporter(
                opened.engine, config.city, opened.signer, opened.log, parties, limits
            )
            return importer.run_rows(reader, on_error, progress)
        finally:
            opened.log.close()
            opened.engine.dispose()


class _Run:
    """One import run: the batch pipeline.

    This thread reads, looks up, hands rows to the workers and resolves; a writer thread writes
    the batch before (one transaction) and appends its statements to the log, meanwhile. A batch is
    resolved on top of the one being written (`_Batch.view`); if that one fails, or had to be
    resolved again, the next is resolved again from the store before it is handed over.
    """

    def __init__(
        self,
        importer: ConsentImporter,
        reader: RowReader,
        default_actor: str,
        on_error: ErrorSink | None,
        progress: Progress | None,
    ) -> None:
        self.imp = importer
        self.limits = importer._limits
        self.engine = importer._engine
        self.reader = reader
        self.setup = importer._setup(default_actor, reader.header)
        self.local = _Preparer(self.setup)
        self.on_error = on_error
        self.progress = progress
        self.report = ImportReport()
        self.pool: Executor | None = None
        self.writer = ThreadPoolExecutor(1, thread_name_prefix="consent-import-writer")
        self.conn: sa.Connection | None = None  # the writer's
        self.checkpoints: _Checkpoints | None = None  # while running
        self._synchronous = 2  # its synchronous setting before the run (2: FULL)

    def run(self) -> ImportReport:
        # The collector's passes over the batches in flight (hundreds of thousands of tuples)
        # cost this process about a fifth of its time, and even one pass every 10 batches
        # measured 12 % slower than every 100: the batches make no reference cycles, so it
        # runs only now and then, as a safety net.
        collecting = gc.isenabled()
        gc.disable()
        gc.freeze()
        self.checkpoints = checkpoints = _Checkpoints(self.engine)
        try:
            writing: tuple[_Batch, Future[None]] | None = None
            # Batches handed to the workers, in file order: they prepare the next ones while
            # this thread resolves one and the writer writes the one before.
            ahead: deque[tuple[_Batch, list[Future[list[Prepared]]]]] = deque()
            batches = self._batches()
            for _ in range(_AHEAD):
                self._hand_over(batches, ahead)
            while ahead:
                batch, pending = ahead.popleft()
                self._collect(batch, pending)
                self._hand_over(batches, ahead)
                stored = self._lookup(batch)
                overlay = writing[0].view if writing is not None else {}
                self._resolve(batch, stored, overlay)
                if writing is not None:
                    self._settle(*writing)
                    if writing[0].view is not overlay:
                        # It failed (nothing of it stored) or was resolved again: start over
                        # from what is stored now.
                        self._resolve(batch, self._lookup(batch), {})
                writing = (batch, self.writer.submit(self._write_and_log, batch))
            if writing is not None:
                self._settle(*writing)
        finally:
            if self.pool is not None:
                self.pool.shutdown(cancel_futures=True)
            self.writer.shutdown(wait=True, cancel_futures=True)
            self._close_connection()
            checkpoints.close()
            gc.unfreeze()
            if collecting:
                gc.enable()
        return self.report

    def _batches(self) -> Iterator[tuple[_Batch, list[_Chunk]]]:
        """The input as batches of about `batch_size` rows, each in one chunk per part (two
        per worker, so that the workers stay evenly busy)."""
        parts = 1 if self.limits.workers == 0 else self._worker_count() * 2
        chunks = self.reader.chunks(max(1, -(-self.limits.batch_size // parts)))
        for index in itertools.count():
            group = list(itertools.islice(chunks, parts))
            if not group:
                return
            yield _Batch(index, timefmt.now(), group[-1].bytes_read), group

    def _hand_over(
        self,
        batches: Iterator[tuple[_Batch, list[_Chunk]]],
        ahead: deque[tuple[_Batch, list[Future[list[Prepared]]]]],
    ) -> None:
        """Read the next batch and start preparing it."""
        item = next(batches, None)
        if item is None:
            return
        batch, chunks = item
        if self.pool is None and self._want_pool(batch.index):
            self.pool = self._start_pool()
        ahead.append((batch, self._dispatch(batch, chunks)))

    # -- workers ----------------------------------------------------------------------------

    def _want_pool(self, index: int) -> bool:
        workers = self.limits.workers
        if workers == 0:
            return False
        return workers is not None or index >= 1

    def _worker_count(self) -> int:
        return self.limits.workers or default_workers()

    def _start_pool(self) -> Executor:
        # spawn: a fresh interpreter, never a fork of this process and its threads.
        return ProcessPoolExecutor(
            self._worker_count(),
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker,
            initargs=(self.setup,),
        )

    def _dispatch(self, batch: _Batch, chunks: list[_Chunk]) -> list[Future[list[Prepared]]]:
        if self.pool is None:
            return [_done(self.local.prepare_chunk(c, batch.at)) for c in chunks]
        return [self.pool.submit(_prepare_chunk, c, batch.at) for c in chunks]

    def _collect(self, batch: _Batch, pending: list[Future[list[Prepared]]]) -> None:
        out: list[Prepared] = []
        for f in pending:
            out.extend(_result(f))
        batch.prepared, batch.rows = out, len(out)
        if out:
            batch.first_line, batch.last_line = out[0][1], out[-1][1]

    # -- state --------------------------------------------------------------------------------

    def _lookup(self, batch: _Batch) -> _Stored:
        ids = sorted({item[3] for item in batch.prepared if item[0] != ERR})
        rows: dict[str, Any] = {}
        scopes: dict[str, list[tuple[str, str, str]]] = {}
        try:
            with self.engine.connect() as conn:
                if self.imp._codec.driver_level:
                    return self._lookup_sqlite(conn, ids)
                for part in _chunks(ids, _IN_CHUNK):
                    for r in conn.execute(_SELECT_RECORDS, {"ids": part}).mappings():
                        rows[r["record_id"]] = r
                for part in _chunks(sorted(rows), _IN_CHUNK):
                    for rid, purpose, recipient, category in conn.execute(
                        _SELECT_SCOPES, {"ids": part}
                    ):
                        scopes.setdefault(rid, []).append((purpose, recipient, category))
        except sa.exc.SQLAlchemyError as e:
            raise StoreError(f"cannot read the consent records: {_db_message(e)}") from None
        return _Stored(rows, scopes)

    @staticmethod
    def _lookup_sqlite(conn: sa.Connection, ids: list[str]) -> _Stored:
        """`_lookup` in one statement per table, the ids as one JSON array (most are new: the
        statement is what costs), rows as the driver gives them, times made datetimes."""
        ids_json = json.dumps(ids)
        rows: dict[str, Any] = {}
        for r in conn.exec_driver_sql(_LOOKUP_RECORDS_SQLITE, (ids_json,)):
            row = dict(zip(_RECORD_COLUMNS, r, strict=True))
            row["valid_from"] = _naive(row["valid_from"])
            row["valid_until"] = _naive(row["valid_until"])
            rows[row["record_id"]] = row
        scopes: dict[str, list[tuple[str, str, str]]] = {}
        if rows:
            for rid, purpose, recipient, category in conn.exec_driver_sql(
                _LOOKUP_SCOPES_SQLITE, (json.dumps(sorted(rows)),)
            ):
                scopes.setdefault(rid, []).append((purpose, recipient, category))
        return _Stored(rows, scopes)

    def _first_digest(self, record_id: str, rec: _Rec) -> str:
        """The terms digest the record was created with (in its first event's receipt)."""
        with self.engine.connect() as conn:
            first = conn.execute(
                sa.select(consent_events)
                .where(consent_events.c.record_id == record_id)
                .order_by(consent_events.c.event_id)
                .limit(1)
            ).first()
        if first is None:
            return ""
        return str(self._stored_payload(first, rec).get("terms_digest", ""))

    def _renewals(self, record_id: str, rec: _Rec) -> set[str | None]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(consent_events).where(
                    consent_events.c.record_id == record_id,
                    consent_events.c.event == Event.RENEW.value,
                )
            ).all()
        return {self._stored_payload(r, rec).get("valid_until") for r in rows}

    def _stored_payload(self, event: sa.Row[Any], rec: _Rec) -> dict[str, Any]:
        """The receipt payload of a stored event (its consent_events row) of a stored record:
        from its receipt, its stored payload, or rebuilt (the node's own; only read, not
        trusted)."""
        try:
            body = event_payload(self.imp._city, event, self._record(rec), _receipt_json)
            obj = json.loads(body)
        except (CitybrokerError, ValueError):
            return {}
        return obj if isinstance(obj, dict) else {}

    def _resolve(self, batch: _Batch, stored: _Stored, overlay: dict[str, _Rec]) -> None:
        """Apply the batch's rows in file order to what is stored (and the batch before)."""
        batch.view, batch.creates, batch.changes = {}, {}, {}
        batch.events, batch.errors, batch.duplicates = [], [], 0
        view = batch.view
        at = batch.at
        dt = self.imp._codec.dt

        def get(rid: str) -> _Rec | None:
            rec = view.get(rid)
            if rec is not None:
                return rec
            known = overlay.get(rid)
            if known is not None:
                rec = known.copy()
            else:
                row = stored.rows.get(rid)
                if row is None:
                    return None
                rec = _Rec(
                    State(row["state"]),
                    row["content_digest"],
                    timefmt.fmt(timefmt.from_db(row["valid_until"]))
                    if row["valid_until"]
                    else None,
                    record=record_from_row(row, stored.scopes.get(rid, ())),
                )
                if rec.state in (State.GIVEN, State.REFUSED):
                    rec.renewals = set()  # never renewed, or it would be in another state
                rec.expect = (rec.state.value, rec.digest)
            view[rid] = rec
            return rec

        def fail(line: int, rid: str, reason: str, message: str) -> None:
            batch.errors.append(RowError(line, rid, reason, message))

        changed_creations: list[str] = []
        creates, events = batch.creates, batch.events
        for item in batch.prepared:
            kind = item[0]
            if kind == START:
                _, line, event, rid, digest, actor, rec_row, scopes, receipt = item
                rec = get(rid)
                if rec is None:
                    state = _STATE_BY_NAME[event]
                    # `until` matters only once renewed, and a renewal sets it.
                    view[rid] = _Rec(
                        state, digest, None, None, (rec_row, scopes), digest, set(), True
                    )
                    creates[rid] = [rec_row, scopes]
                    events.append(_Event(line, rid, event, actor, rec_row[_R_UNTIL], receipt))
                elif digest != rec.digest and digest != self._created_digest(rid, rec):
                    fail(
                        line,
                        rid,
                        "CONSENT_RECORD_CONFLICT",
                        f"consent record {rid} exists with different terms",
                    )
                elif (rec.state is State.REFUSED) != (event == State.REFUSED.value):
                    # A refused record stays refused; any other started as given.
                    first = "refused" if rec.state is State.REFUSED else "given"
                    fail(
                        line,
                        rid,
                        "CONSENT_RECORD_CONFLICT",
                        f"consent record {rid} was {first}, not {event}",
                    )
                else:
                    batch.duplicates += 1
            elif kind == MOVE:
                _, line, name, rid, until, actor = item
                event = Event(name)
                rec = get(rid)
                if rec is None:
                    fail(line, rid, "CONSENT_NOT_FOUND", f"no consent record {rid!r}")
                    continue
                until_text = timefmt.fmt(until) if until is not None else None
                if event is Event.RENEW:
                    if (rec.state is State.RENEWED and rec.until == until_text) or (
                        until_text in self._known_renewals(rid, rec)
                    ):
                        batch.duplicates += 1
                        continue
                elif rec.state.value == name:
                    batch.duplicates += 1
                    continue
                try:
                    state = next_state(rec.state, event)
                except CitybrokerError as e:
                    fail(line, rid, e.reason, e.message)
                    continue
                record = self._record(rec)
                if event is Event.RENEW:
                    if until is not None and until <= record.valid_from:
                        fail(
                            line,
                            rid,
                            "CONSENT_DATES_INVALID",
                            "valid_until must be after valid_from",
                        )
                        continue
                    record = replace(record, valid_until=until)
                payload = self.local.payload(record, event, actor, at, state)
                rec.state = state
                if event is Event.RENEW:
                    rec.record, rec.digest, rec.until = record, payload["terms_digest"], until_text
                    self._known_renewals(rid, rec).add(until_text)
                if rec.created:
                    changed_creations.append(rid)
                else:
                    batch.changes[rid] = rec
                until_after = record.valid_until
                batch.events.append(
                    _Event(
                        line,
                        rid,
                        name,
                        actor,
                        dt(timefmt.to_db(until_after)) if until_after is not None else None,
                        receipt_digest(_receipt_json(payload)),
                    )
                )
            else:
                _, line, rid, reason, message = item
                fail(line, rid, reason, message)
        # Records created and then changed in this batch are inserted as they end up.
        for rid in changed_creations:
            batch.creates[rid] = self._final_rows(view[rid], *batch.creates[rid])

    def _final_rows(
        self, rec: _Rec, record: tuple[Any, ...], scopes: tuple[tuple[Any, ...], ...]
    ) -> list[Any]:
        renewed = record[_R_DIGEST] != rec.digest
        new = list(record)
        new[_R_STATE] = rec.state.value
        until = record[_R_UNTIL]
        if renewed:
            assert rec.record is not None
            valid_until = rec.record.valid_until
            until = self.imp._codec.dt(timefmt.to_db(valid_until) if valid_until else None)
            new[_R_UNTIL], new[_R_DIGEST] = until, rec.digest
        changed = []
        for scope in scopes:
            row = list(scope)
            row[_S_STATE], row[_S_UNTIL] = rec.state.value, until
            changed.append(tuple(row))
        return [tuple(new), tuple(changed)]

    def _record(self, rec: _Rec) -> ConsentRecord:
        if rec.record is None:
            assert rec.rows is not None
            row, scopes = rec.rows
            stored = dict(zip(_RECORD_COLUMNS, row, strict=True))
            stored["valid_from"], stored["valid_until"] = (
                _naive(row[_R_FROM]),
                _naive(row[_R_UNTIL]),
            )
            rec.record = record_from_row(stored, (s[1:4] for s in scopes))
        return rec.record

    def _created_digest(self, rid: str, rec: _Rec) -> str:
        if rec.first_digest is None:
            rec.first_digest = self._first_digest(rid, rec)
        return rec.first_digest

    def _known_renewals(self, rid: str, rec: _Rec) -> set[str | None]:
        if rec.renewals is None:
            rec.renewals = self._renewals(rid, rec)
        return rec.renewals

    # -- writing (in the writer thread) -------------------------------------------------------

    def _write_and_log(self, batch: _Batch) -> None:
        """Write the batch in one transaction; once committed, append its signed statements to
        the log."""
        if not batch.events:
            return
        for attempt in range(self.limits.write_attempts):
            try:
                self._write(batch)
                break
            except (_Stale, sa.exc.IntegrityError) as e:
                if attempt + 1 == self.limits.write_attempts:
                    batch.failure = (
                        "the records kept changing under the import"
                        if isinstance(e, _Stale)
                        else _db_message(e)
                    )
                    break
                # Someone else wrote these records meanwhile: resolve again, from the store.
                self._resolve(batch, self._lookup(batch), {})
            except sa.exc.SQLAlchemyError as e:
                batch.failure = _db_message(e)
                break
        if batch.failure:
            batch.view = {}  # nothing of it is stored: the next batch must not build on it
            return
        try:
            self._log_statements(batch.statements)
        except CitybrokerError as e:
            raise StoreError(
                f"batch {batch.index + 1} (lines {batch.first_line}-{batch.last_line}) is "
                f"stored, but its signed statement could not be appended to the node's log: "
                f"{e.message}",
                reason="IMPORT_LOG_FAILED",
            ) from None
        if self.checkpoints is not None:
            self.checkpoints.committed()

    def _connection(self) -> sa.Connection:
        """The writer's own connection, for the whole run. On SQLite: a larger page cache
        (inserting at random keys into indexes bigger than the default 2 MB cache is slow), and
        under WAL synchronous=NORMAL, so a batch's commit does not wait for the disk: its
        statement's commit in the log right after is FULL, and syncing the WAL file then makes
        the batch's earlier frames durable too, before the batch is reported."""
        if self.conn is None:
            self.conn = self.engine.connect()
            if self.engine.dialect.name == "sqlite":
                self.conn.exec_driver_sql(f"PRAGMA cache_size=-{self.limits.cache_kib}")
                mode = self.conn.exec_driver_sql("PRAGMA journal_mode").scalar()
                self._synchronous = int(
                    self.conn.exec_driver_sql("PRAGMA synchronous").scalar_one()
                )
                if str(mode).lower() == "wal":
                    self.conn.exec_driver_sql("PRAGMA synchronous=NORMAL")
                self.conn.commit()
        return self.conn

    def _close_connection(self) -> None:
        if self.conn is not None:
            try:
                if self.engine.dialect.name == "sqlite":  # as the pool's other connections
                    self.conn.exec_driver_sql("PRAGMA cache_size=-2000")
                    self.conn.exec_driver_sql(f"PRAGMA synchronous={self._synchronous}")
                    self.conn.commit()
            finally:
                self.conn.close()
                self.conn = None

    def _write(self, batch: _Batch) -> None:
        inserts = self.imp._inserts
        events = batch.events
        envelopes = [
            self.imp.sign_statement(batch.at, [e.digest for e in events[i : i + step]])
            for step in (MAX_STATEMENT_EVENTS,)
            for i in range(0, len(events), step)
        ]
        conn = self._connection()
        if self.checkpoints is not None:
            self.checkpoints.before_write()
        batch.statements = []
        with conn.begin():
            _lock(conn)
            self._check_unchanged(conn, batch)
            if batch.creates:
                # Records by resident, so that the resident index is walked once, in order.
                # Scopes in file order: sorting them by the consent filter's key measured
                # slower, as new record ids go to the end of each key range anyway.
                creates = batch.creates.values()
                records = sorted((c[0] for c in creates), key=_by_resident)
                inserts["records"].run(conn, records)
                inserts["scopes"].run(conn, [s for c in creates for s in c[1]])
            self._apply_changes(conn, batch.changes)
            at_db = timefmt.to_db(batch.at)
            at = self.imp._codec.dt(at_db)
            rows = []
            for n, envelope in enumerate(envelopes):
                key = conn.execute(_INSERT_BATCH, {"at": at_db, "envelope": envelope})
                assert key.inserted_primary_key is not None
                batch_id = int(key.inserted_primary_key[0])
                part = events[n * MAX_STATEMENT_EVENTS : (n + 1) * MAX_STATEMENT_EVENTS]
                rows += [(e.record_id, e.event, e.actor, at, batch_id, e.valid_until) for e in part]
                batch.statements.append((batch_id, envelope))
            inserts["events"].run(conn, rows)

    def _check_unchanged(self, conn: sa.Connection, batch: _Batch) -> None:
        expected = {rid: rec.expect for rid, rec in batch.changes.items()}
        if not expected:
            return
        ids = sorted(expected)
        if self.imp._codec.driver_level:
            found: Iterable[Any] = conn.exec_driver_sql(_CHECK_SQLITE, (json.dumps(ids),))
        else:
            found = (
                row
                for part in _chunks(ids, _IN_CHUNK)
                for row in conn.execute(
                    sa.select(
                        consent_records.c.record_id,
                        consent_records.c.state,
                        consent_records.c.content_digest,
                    )
                    .where(consent_records.c.record_id.in_(part))
                    .with_for_update()  # PostgreSQL: held until the batch commits
                )
            )
        for rid, state, digest in found:
            if expected.get(rid) != (state, digest):
                raise _Stale(rid)

    def _apply_changes(self, conn: sa.Connection, changes: dict[str, _Rec]) -> None:
        """Update stored records (and their scopes) to the state this batch leaves them in."""
        moved: list[tuple[str, str]] = []
        renewed: list[tuple[Any, str, str, str]] = []
        dt = self.imp._codec.dt
        for rid, rec in changes.items():
            assert rec.expect is not None
            if rec.digest == rec.expect[1]:
                moved.append((rec.state.value, rid))
            else:
                assert rec.record is not None
                until = rec.record.valid_until
                renewed.append(
                    (dt(timefmt.to_db(until) if until else None), rec.state.value, rec.digest, rid)
                )
        run = self.imp._inserts
        run["move records"].run(conn, moved)
        run["move scopes"].run(conn, moved)
        run["renew records"].run(conn, renewed)
        run["renew scopes"].run(conn, [(state, u, rid) for u, state, _, rid in renewed])

    def _log_statements(self, statements: list[tuple[int, bytes]]) -> None:
        """Append a batch's statements to the log; their log indexes are stored in the log's
        own transaction, so a statement marked logged is in the log."""
        ids = [batch_id for batch_id, _ in statements]

        def mark(conn: sa.Connection, first: int) -> None:
            conn.execute(
                _MARK_LOGGED, [{"b_id": b, "b_index": first + k} for k, b in enumerate(ids)]
            )

        self.imp._log.append_many([env for _, env in statements], LOG_KIND, side_write=mark)

    # -- reporting (in this thread) -----------------------------------------------------------

    def _settle(self, batch: _Batch, writing: Future[None]) -> None:
        """Wait for the writer to finish a batch; count and report its rows."""
        writing.result()  # a log failure is fatal: raised here
        report = self.report
        report.batches += 1
        report.rows += batch.rows
        report.duplicates += batch.duplicates
        report.bytes_read = batch.bytes_read
        errors = batch.errors
        if batch.failure:
            report.failed_batches += 1
            message = (
                f"batch {batch.index + 1} (lines {batch.first_line}-{batch.last_line}) was "
                f"rolled back, nothing of it applied: {batch.failure}"
            )
            failed = [RowError(e.line, e.record_id, BATCH_FAILED, message) for e in batch.events]
            errors = sorted([*errors, *failed], key=lambda e: e.row)
        else:
            report.applied += len(batch.events)
        for error in errors:
            report.errors[error.reason] += 1
            if self.on_error is not None:
                self.on_error(error)
        # Only the view stays, for the next batch; the rest can go.
        batch.prepared, batch.events, batch.errors, batch.creates, batch.changes = (
            [],
            [],
            [],
            {},
            {},
        )
        if batch.index % _COLLECT_EVERY == _COLLECT_EVERY - 1:
            gc.collect()
        if self.progress is not None:
            self.progress(report)


_by_resident = operator.itemgetter(_RECORD_COLUMNS.index("resident_id"))


class _Checkpoints:
    """On SQLite in WAL mode, while an import runs: the WAL is copied back into the database by
    a thread of its own, while the writer goes on with the next batch. By default the commit
    that crosses the autocheckpoint threshold copies it, and the writer waits for that copy and
    its disk syncs: about a seventh of an import's time. Here every connection the engine hands
    out (the writer's, the log's, the lookups') has autocheckpoint off; after each batch this
    thread copies what is committed. The WAL starts over from its beginning only when a write
    begins with all of it copied, so once it holds `_CHECKPOINT_PAGES` pages the writer waits
    for one more pass (by then little is left to copy) before its next batch. Connections go
    back to the pool with SQLite's default."""

    def __init__(self, engine: sa.Engine) -> None:
        self._engine = engine
        self._on = engine.dialect.name == "sqlite" and _journal_mode(engine) == "wal"
        self._lock = threading.Condition()
        self._asked = self._done = 0  # passes asked for, and finished
        self._pages = 0  # in the WAL at the last pass
        self._closing = False
        self._thread: threading.Thread | None = None
        if self._on:
            sa.event.listen(engine, "checkout", self._checkout)
            sa.event.listen(engine, "checkin", self._checkin)
            self._thread = threading.Thread(
                target=self._run, name="consent-import-checkpoints", daemon=True
            )
            self._thread.start()

    @staticmethod
    def _checkout(dbapi_conn: Any, _record: Any, _proxy: Any) -> None:
        dbapi_conn.execute("PRAGMA wal_autocheckpoint=0")

    @staticmethod
    def _checkin(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.execute(f"PRAGMA wal_autocheckpoint={_SQLITE_CHECKPOINT_PAGES}")

    def committed(self) -> None:
        """A batch is committed: copy it (in the background)."""
        if self._on:
            with self._lock:
                self._asked += 1
                self._lock.notify_all()

    def before_write(self) -> None:
        """Before a batch is written: once the WAL is long, wait until it is all copied, so
        that the write starts it over."""
        if not self._on or self._pages < _CHECKPOINT_PAGES:
            return
        with self._lock:
            self._asked += 1
            wanted = self._asked
            self._lock.notify_all()
            while self._done < wanted and self._thread is not None:
                self._lock.wait()

    def _run(self) -> None:
        try:
            raw = self._engine.raw_connection()
        except sa.exc.SQLAlchemyError:
            return self._stop_waiting()
        try:
            while True:
                with self._lock:
                    while self._done == self._asked and not self._closing:
                        self._lock.wait()
                    if self._closing:
                        return
                    target = self._asked
                try:
                    row = raw.cursor().execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                    pages = int(row[1]) if row is not None else 0
                except sqlite3.Error:
                    pages = 0  # the database is locked: the next pass tries again
                with self._lock:
                    self._pages, self._done = pages, target
                    self._lock.notify_all()
        finally:
            raw.close()
            self._stop_waiting()

    def _stop_waiting(self) -> None:
        with self._lock:
            self._thread, self._done = None, self._asked
            self._lock.notify_all()

    def close(self) -> None:
        if not self._on:
            return
        thread = self._thread
        with self._lock:
            self._closing = True
            self._lock.notify_all()
        if thread is not None:
            thread.join()
        sa.event.remove(self._engine, "checkout", self._checkout)
        sa.event.remove(self._engine, "checkin", self._checkin)
        self._on = False


def _journal_mode(engine: sa.Engine) -> str:
    try:
        with engine.connect() as conn:
            return str(conn.exec_driver_sql("PRAGMA journal_mode").scalar()).lower()
    except sa.exc.SQLAlchemyError:
        return ""


def _naive(value: Any) -> datetime | None:
    """A time of a row as `_Codec` gave it (SQLite: text) as the naive UTC datetime stored."""
    return datetime.fromisoformat(value) if isinstance(value, str) else value


def _done(value: Any) -> Future[Any]:
    future: Future[Any] = Future()
    future.set_result(value)
    return future


def _result(future: Future[Any]) -> Any:
    try:
        return future.result()
    except BrokenProcessPool:
        raise StoreError(
            "an import worker process died (out of memory?); nothing of the current batch "
            "was written",
            reason="IMPORT_WORKER_FAILED",
        ) from None


def _chunks(items: Sequence[str], size: int) -> Iterator[Sequence[str]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _lock(conn: sa.Connection) -> None:
    """Take the database's write lock first, so what the batch checks stays true until commit."""
    if conn.dialect.name == "sqlite":
        conn.execute(consent_events.delete().where(consent_events.c.event_id < 0))


def _db_message(e: sa.exc.SQLAlchemyError) -> str:
    orig = getattr(e, "orig", None)
    detail = str(orig) if orig is not None else str(e).splitlines()[0]
    return f"{type(orig or e).__name__}: {detail}"


class _Executemany:
    """One executemany INSERT or UPDATE of rows given as tuples in the order of `names` (columns
    of an INSERT, bound parameters of an UPDATE): straight to the driver on SQLite, SQLAlchemy
    Core elsewhere."""

    def __init__(
        self,
        stmt: sa.Insert | sa.Update,
        names: Sequence[str],
        dialect: sa.Dialect,
        driver_level: bool,
    ) -> None:
        self.columns = tuple(names)
        self.stmt = stmt
        insert = isinstance(stmt, sa.Insert)
        compiled = stmt.compile(dialect=dialect, column_keys=list(names) if insert else None)
        self.driver_level = driver_level
        if driver_level and list(compiled.positiontup or ()) != list(names):
            raise AssertionError(f"unexpected parameter order in {compiled}")
        self.sql = str(compiled)

    def run(self, conn: sa.Connection, rows: Sequence[tuple[Any, ...]]) -> None:
        if not rows:
            return
        if self.driver_level:
            conn.exec_driver_sql(self.sql, list(rows))
        else:
            conn.execute(self.stmt, [dict(zip(self.columns, r, strict=True)) for r in rows])
