"""Keep a long-running server's C heap from creeping: fewer glibc malloc arenas, and free pages
handed back to the system now and then.

Measured with bench/soak.py (three nodes and a broker, 12 queries/s for 18 minutes; glibc's own
counters sampled in each node, mallinfo2): once DuckDB's buffer pool and the other native caches
had filled (about four minutes), the memory glibc had in use stayed within a few MB, yet each
node's resident memory kept growing, by about 25 MB in the next 14 minutes: free memory inside
glibc's arenas, which grew from 8 to 34 MB. glibc gives each thread that contends for the heap an
arena of its own, up to 8 per core, and a node runs some sixty threads (gRPC workers, the log
writer, DuckDB's); freed memory then sits in many arenas at once, and an arena returns pages to
the system only from its top. With two arenas the free memory stayed at 2 to 8 MB; a
`malloc_trim` every half minute also returns the free pages inside the arenas.

Other C libraries (musl, or a process started with MALLOC_ARENA_MAX set, which is left as the
operator set it) are left alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import threading
from typing import Any

log = logging.getLogger("citybroker.heap")

ARENAS = 2
TRIM_INTERVAL_S = 30.0
_M_ARENA_MAX = -8  # glibc's mallopt parameter number


def _glibc() -> Any | None:
    """glibc, if this process's C library is glibc (it alone has mallopt and malloc_trim)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return None
    if not (hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim")):
        return None
    return libc


class NativeHeap:
    """Limits glibc's arenas at once (call it before the server starts its threads: a thread
    keeps the arena it was given) and trims the heap every `interval_s` until `stop`."""

    def __init__(self, arenas: int = ARENAS, interval_s: float = TRIM_INTERVAL_S) -> None:
        self._libc = _glibc()
        self._interval_s = interval_s
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        if self._libc is None:
            log.debug("not glibc: the C heap is left as it is")
            return
        if "MALLOC_ARENA_MAX" not in os.environ:
            self._libc.mallopt(_M_ARENA_MAX, arenas)

    def start(self) -> None:
        """Trim in a background thread from now on (nothing on a C library other than glibc)."""
        if self._libc is None or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="heap-trim", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop trimming (waits for the thread)."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join()

    def trim(self) -> None:
        """Hand the free pages of every arena back to the system."""
        if self._libc is not None:
            self._libc.malloc_trim(0)

    def _run(self) -> None:
        while not self._stopping.wait(self._interval_s):
            self.trim()
