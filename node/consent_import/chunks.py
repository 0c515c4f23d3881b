"""Reading the input and cutting it into chunks of whole records, as raw bytes, for the workers:
no decoding or parsing here (`node.consent_import.reader` parses a chunk)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import IO, NamedTuple

READ_BYTES = 1 << 20  # the input is read in blocks of this size


class Lines:
    """Binary lines decoded one at a time: counts bytes, bounds line length, notes bad UTF-8."""

    def __init__(
        self, f: IO[bytes], max_bytes: int, line: int = 0, problems: dict[int, str] | None = None
    ) -> None:
        self._f, self._max = f, max_bytes
        self.bytes = 0
        self.line = line  # of the last line read
        self.problems: dict[int, str] = problems if problems is not None else {}

    def __iter__(self) -> Lines:
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

    def chunks(self, records: int, quoted_fields: bool) -> Iterator[Chunk]:
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
                        more = f.read(READ_BYTES)
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
            yield Chunk(first, b"".join(out), problems, self.bytes)

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
            buf, pos = self._f.read(READ_BYTES), 0
            eof = not buf


class Chunk(NamedTuple):
    """Consecutive lines of the input, from line `first_line`, with the problems of its lines
    (over-long ones arrive empty); `bytes_read`: of the file, up to its end."""

    first_line: int
    data: bytes
    problems: dict[int, str]
    bytes_read: int
