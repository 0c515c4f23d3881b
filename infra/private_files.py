"""Private files: what a node, a broker or the command line writes is readable by its owner only
(files 0600, directories 0700), and a private key file others could read is refused, as signing keys
are (keys.ed25519)."""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

OWNER_ONLY = 0o077  # the umask: no permission bits for group or others
FILE_MODE, DIR_MODE = 0o600, 0o700


def restrict_new_files() -> int:
    """From now on, this process creates files 0600 and directories 0700 (whatever creates them:
    SQLite and DuckDB, log files, exports, the demo's keys and certificates). Returns the umask it
    replaced. For a process's start: the umask is process-wide."""
    return os.umask(OWNER_ONLY)


def create_private_file(path: Path) -> None:
    """Create `path` empty with mode 0600 (its missing directories 0700) unless it exists, and take
    group and other permissions away from it and from SQLite's companion files (-wal, -shm,
    -journal), which SQLite creates with the database file's mode."""
    if not path.parent.exists():
        path.parent.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE))
    for companion in (path, *(Path(f"{path}{s}") for s in ("-wal", "-shm", "-journal"))):
        make_private(companion)


def make_private(path: Path) -> None:
    """Take group and other permissions away from `path` if it exists and is ours to change."""
    with contextlib.suppress(OSError):
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & OWNER_ONLY:
            path.chmod(mode & ~OWNER_ONLY)
