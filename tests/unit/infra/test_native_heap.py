"""infra.native_heap, in fresh processes (arenas are fixed when threads first allocate): two
glibc arenas however many threads allocate, and free pages inside the arenas handed back.
Skipped where the C library is not glibc."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from infra import native_heap

pytestmark = pytest.mark.skipif(native_heap._glibc() is None, reason="needs glibc")

_ARENAS = """
import ctypes, ctypes.util, json, os, tempfile, threading
from infra.native_heap import NativeHeap
if LIMIT:
    NativeHeap()
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
libc.fdopen.restype = ctypes.c_void_p
go = threading.Barrier(8)
def work():
    go.wait()
    for _ in range(1000):
        libc.free(libc.malloc(4096))
threads = [threading.Thread(target=work) for _ in range(8)]
for t in threads: t.start()
for t in threads: t.join()
with tempfile.TemporaryFile() as f:
    stream = libc.fdopen(os.dup(f.fileno()), b"w")
    libc.malloc_info(0, ctypes.c_void_p(stream))
    libc.fclose(ctypes.c_void_p(stream))
    f.seek(0)
    print(json.dumps(f.read().decode().count("<heap nr=")))
"""

_TRIM = """
import ctypes, ctypes.util, json, threading
from infra.native_heap import NativeHeap
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
def rss_mb():
    return int([l for l in open("/proc/self/status") if l.startswith("VmRSS")][0].split()[1]) // 1024
kept = []
def fragment():  # in a thread of its own: another arena than the main one
    blocks = [libc.malloc(2048) for _ in range(100_000)]
    for i, b in enumerate(blocks):
        ctypes.memset(b, 1, 2048)
        if i % 64:
            libc.free(b)
        else:
            kept.append(b)
t = threading.Thread(target=fragment); t.start(); t.join()
before = rss_mb()
NativeHeap().trim()
print(json.dumps([before, rss_mb()]))
"""


def _run(script: str) -> object:
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout)


def test_threads_share_two_arenas() -> None:
    assert _run("LIMIT = False\n" + _ARENAS) > 2  # glibc alone: an arena per thread, nearly
    assert _run("LIMIT = True\n" + _ARENAS) <= native_heap.ARENAS


def test_trim_hands_free_pages_inside_an_arena_back() -> None:
    before, after = _run(_TRIM)  # type: ignore[misc]
    # About 200 MB written, 1 block in 64 kept: nearly all of it free but inside the arena.
    assert before - after > 100, (before, after)


def test_the_heap_is_trimmed_every_interval_until_stopped() -> None:
    heap = native_heap.NativeHeap(interval_s=0.01)
    trimmed = []
    heap.trim = lambda: trimmed.append(1)  # type: ignore[method-assign]
    heap.start()
    while len(trimmed) < 3:
        pass
    heap.stop()
    after_stop = len(trimmed)
    assert not heap._thread or not heap._thread.is_alive()
    assert len(trimmed) == after_stop
