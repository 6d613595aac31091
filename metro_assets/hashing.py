"""SHA-256 of files: one at a time, or many in parallel (hashlib releases the GIL)."""
from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO, Callable, Dict, Iterable, Optional

CHUNK = 1 << 20


def update_from_file(h: Any, f: BinaryIO, *, progress: Optional[Callable[[int], None]] = None,
                     buf: Optional[bytearray] = None) -> int:
    """Feed the rest of the open binary file ``f`` into the hash object ``h``; returns the bytes read.

    ``buf`` (reused between calls by a caller hashing many files) is the read buffer; default CHUNK bytes.
    """
    if buf is None:
        buf = bytearray(CHUNK)
    view = memoryview(buf)
    total = 0
    while True:
        n = f.readinto(buf)
        if not n:
            break
        h.update(view[:n])
        total += n
        if progress is not None:
            progress(n)
    return total


def copy_with_sha256(inp: BinaryIO, out: BinaryIO, *, first: Optional[Callable[[bytes], None]] = None,
                     progress: Optional[Callable[[int], None]] = None) -> "tuple[str, int]":
    """Copy ``inp`` to ``out`` while hashing, then flush and fsync ``out``: (sha256, bytes).

    ``first`` sees the first chunk (even an empty one) before anything is written."""
    h = hashlib.sha256()
    size = 0
    chunk = inp.read(CHUNK)
    if first is not None:
        first(chunk)
    while chunk:
        h.update(chunk)
        out.write(chunk)
        size += len(chunk)
        if progress is not None:
            progress(len(chunk))
        chunk = inp.read(CHUNK)
    out.flush()
    os.fsync(out.fileno())
    return h.hexdigest(), size


def sha256_file(path: Path, *, progress: Optional[Callable[[int], None]] = None) -> str:
    h = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        update_from_file(h, f, progress=progress)
    return h.hexdigest()


def sha256_many(paths: Iterable[Path], *, workers: Optional[int] = None,
                progress: Optional[Callable[[int], None]] = None) -> Dict[Path, str]:
    """Hash many files on all cores: hashlib drops the GIL for large updates."""
    paths = list(paths)
    workers = workers or max(1, min(len(paths), os.cpu_count() or 1))
    if workers == 1 or len(paths) <= 1:
        return {p: sha256_file(p, progress=progress) for p in paths}
    # Largest first: a big file started last would leave the other cores idle at the end.
    def size(p: Path) -> int:
        try:
            return os.stat(p).st_size
        except OSError:
            return 0

    order = sorted(paths, key=size, reverse=True)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="metro-hash") as ex:
        done = dict(zip(order, ex.map(lambda p: sha256_file(p, progress=progress), order)))
    return {p: done[p] for p in paths}
