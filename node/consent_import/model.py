"""What an import reads, makes and reports: the input's columns and formats, its limits, the
named row types that travel between the reader, the workers and the resolver, and the report."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, NamedTuple

from domain.errors import InvalidArgument
from node.consent_lifecycle import Event

# The input's columns (CSV header names, JSONL keys), in the order of `Values`.
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
LIST_COLUMNS = ("purposes", "recipients", "data_categories")
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
BATCH_FAILED = "BATCH_FAILED"
ROW_MALFORMED = "ROW_MALFORMED"
ERROR_REPORT_COLUMNS = ("row", "record_id", "reason", "message")


class ImportFormat(StrEnum):
    CSV = "csv"
    JSONL = "jsonl"

    @classmethod
    def of(cls, path: Path) -> ImportFormat:
        """The format a file's extension names; InputError if it names none."""
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
        """The number of rows not applied: the sum of `errors` over every reason."""
        return sum(self.errors.values())


ErrorSink = Callable[[RowError], None]
Progress = Callable[[ImportReport], None]


class Values(NamedTuple):
    """One row's values as read, unchecked: absent ones None (an empty CSV cell is "")."""

    event: Any
    record_id: Any
    resident_id: Any
    purposes: Any
    recipients: Any
    data_categories: Any
    valid_from: Any
    valid_until: Any
    lawful_basis: Any
    notice_url: Any
    notice_hash: Any
    language: Any
    jurisdiction: Any
    retention_days: Any
    collection_method: Any
    withdrawal_method: Any
    actor: Any


assert Values._fields == COLUMNS


class BadRow(NamedTuple):
    """A row the reader could not turn into values."""

    record_id: str
    reason: str
    message: str


# A row as read: the line it starts on, and its values or why there are none.
RawRow = tuple[int, Values | BadRow]


# What a worker makes of a row: NamedTuples, as they cross process boundaries by the million.
class ErrorRow(NamedTuple):
    """A row that cannot be applied, whatever is stored."""

    line: int
    record_id: str
    reason: str
    message: str


class StartRow(NamedTuple):
    """A valid `given` / `refused` row: its record's rows as the driver gets them, ready to
    insert, and the digest (`domain.consent_batch.receipt_digest`) of its receipt payload."""

    line: int
    event: str
    record_id: str
    digest: str  # of the record's terms
    actor: str
    record: tuple[Any, ...]  # its consent_records row
    scopes: tuple[tuple[Any, ...], ...]  # its consent_scopes rows
    receipt: str


class MoveRow(NamedTuple):
    """A well-formed row of any other event; what it does depends on the stored record."""

    line: int
    event: str
    record_id: str
    valid_until: datetime | None
    actor: str


Prepared = ErrorRow | StartRow | MoveRow
