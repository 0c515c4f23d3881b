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
  duplicate, nothing written. Other terms under that id are a conflict (an error row).
- `renewed` / `withdrawn` / `revoked` / `invalidated` follow `node.consent_lifecycle.next_state`.
  An event the record's history already holds is already applied (for the end events that is the
  state the record is in; for `renewed`, a renewal to the same `valid_until`), so importing the same
  file again changes nothing. One limit follows: a file that renews a record to a date, then to
  another, then back to the first, imports the third renewal as a duplicate.
  These are the API's rules, as a replay (`node.consent_rules.decide`).
- Every other problem is an error row (row, record id, reason, message) that never stops the rest.

Each batch's good rows commit in one transaction: a database failure rolls the whole batch back and
reports each of its rows (BATCH_FAILED); nothing is ever partly applied.

Evidence: one signature per batch, not per event. Every applied event has the receipt payload the
API would sign for it (`node.consent.receipt_payload`, RFC 8785 canonical JSON). It is not stored
whole: everything in it is in the event's row (event, actor, time, and the record's validity end
as of the event) or its record (whose other terms never change), and `node.consent.
imported_payload` rebuilds it byte for byte. The batch's statement (DSSE, type `consent-batch`,
signed with the city's key) lists the SHA-256 digest of each of those payloads, in the order
applied, with the city and the time (`domain.consent_batch`); a batch of more than
MAX_STATEMENT_EVENTS events gets several. The statements are stored in consent_batches, in the
batch's transaction (each event names its statement), and once it has committed they are
appended to the node's Merkle log (kind "consent", `node.consent_evidence`), whose own
transaction stores their log indexes, before the next batch is written. So every imported event
is provable: its payload, a signed statement listing its digest, and that statement's place in
the log (the auditor's verifier checks the statements like any logged one). A resident's or an
exporter's receipt for an imported event (history, ExportConsentReceipt, Kantara) is signed when
asked for, over its payload: `ConsentRegistry.stored_receipt`, byte for byte the receipt the API
gives (Ed25519 signatures are deterministic) while the city's key stays the same.

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

The modules, in the order a row meets them: `chunks` (read and cut the file), `reader` (rows of a
chunk), `parse` (a row parsed, validated and prepared), `workers` (the process pool), `records`
and `resolve` (the stored records, and the rows applied to them), `write` (a batch's transaction
and its statements), `checkpoints` (background WAL checkpoints), `pipeline` (one run), `importer`
(the entry points).
"""

from __future__ import annotations

from domain.consent_batch import STATEMENT as BATCH_STATEMENT
from node.consent_import.importer import ConsentImporter, import_file
from node.consent_import.model import (
    COLUMNS,
    ERROR_REPORT_COLUMNS,
    ImportFormat,
    ImportLimits,
    ImportReport,
    InputError,
    RowError,
)
from node.consent_import.reader import open_rows, parse_chunk
from node.consent_import.workers import default_workers

# What the CLI, the benchmark and the tests use; the rest is reached through its own module.
__all__ = [
    "BATCH_STATEMENT",
    "COLUMNS",
    "ERROR_REPORT_COLUMNS",
    "ConsentImporter",
    "ImportFormat",
    "ImportLimits",
    "ImportReport",
    "InputError",
    "RowError",
    "default_workers",
    "import_file",
    "open_rows",
    "parse_chunk",
]
