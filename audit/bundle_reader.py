"""Reading an export bundle's files (layout: audit.bundle), one line or one file at a time.

I/O boundary: this module only opens and reads files; whether what it read is acceptable is
decided by audit.checks (every line is checked for canonical form as it is read). Lines are
read one at a time, so memory does not grow with the log.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from audit.checks import BundleError, canonical_line


def read_manifest(path: Path) -> bytes:
    """The manifest's bytes, unparsed."""
    try:
        return path.read_bytes()
    except OSError as e:
        raise BundleError(
            f"cannot read manifest: {e.strerror}", "BUNDLE_FILE_MISSING", path
        ) from None


def canonical_lines(path: Path, what: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """Each line of a .jsonl file with its number from 0, parsed, if in canonical form."""
    try:
        f = path.open("rb")
    except OSError as e:
        raise BundleError(
            f"cannot read {what}: {e.strerror}", "BUNDLE_FILE_MISSING", path
        ) from None
    with f:
        for number, raw in enumerate(f):
            yield number, canonical_line(raw, path, number)


def signed_files(directory: Path, pattern: str) -> Iterator[tuple[Path, bytes]]:
    """The files in `directory` matching `pattern`, in name order, each read as it is reached
    (none if the directory is absent)."""
    for path in sorted(directory.glob(pattern)) if directory.is_dir() else []:
        try:
            data = path.read_bytes()
        except OSError as e:
            raise BundleError(f"cannot read: {e.strerror}", "BUNDLE_FILE_MISSING", path) from None
        yield path, data
