"""SHA-256 of files: one at a time, or many in parallel (hashlib releases the GIL)."""
from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Dict, Iterable, Optional

CHUNK = 1 << 20


def sha256_file(path: Path, *, progress: Optional[Callable[[int], None]] = None) -> str:
    h = hashlib.sha256()
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while True:
            n = f.readinto(buf)
            if not n:
                break
            h.update(view[:n])
            if progress is not None:
                progress(n)
    return h.hexdigest()


def sha256_many(paths: Iterable[Path], *, workers: Optional[int] = None,
                progress: Optional[Callable[[int], None]] = None) -> Dict[Path, str]:
    """Hash many files on all cores: hashlib drops the GIL for large updates."""
    paths = list(paths)
    workers = workers or max(1, min(len(paths), os.cpu_count() or 1))
    if workers == 1 or len(paths) <= 1:
        return {p: sha256_file(p, progress=progress) for p in paths}
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="metro-hash") as ex:
        return dict(zip(paths, ex.map(lambda p: sha256_file(p, progress=progress), paths)))
