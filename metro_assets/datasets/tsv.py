"""METRO's TSV container: row offsets (``.lineidx``) read, computed and regenerated.

A ``.lineidx`` holds one ASCII decimal per row: the byte offset where the row
starts; the first is 0, there is no final sentinel, and the trailing newline
may be missing (DATASETS.md §3.2).  Its name is the TSV's with the last
extension replaced: ``train.img.tsv`` -> ``train.img.lineidx``.
"""
from __future__ import annotations

import hashlib
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple, Union

from metro_assets.store import atomic_write_bytes

CHUNK = 1 << 22


def lineidx_path(tsv: Union[Path, str]) -> Path:
    p = Path(tsv)
    stem = p.name.rsplit(".", 1)[0] if "." in p.name else p.name
    return p.with_name(stem + ".lineidx")


class LineStarts:
    """Row starts of a byte stream fed in order (used while a tar streams by).

    ``feed`` costs one ``bytes.find`` per row; rows of a few bytes switch to
    numpy so an hw file does not become a Python loop per byte.
    """

    __slots__ = ("starts", "pos", "at_line_start")

    def __init__(self) -> None:
        self.starts = array("q")
        self.pos = 0
        self.at_line_start = True

    def feed(self, data, start: int = 0, end: Optional[int] = None) -> None:
        """Feed ``data[start:end]`` (bytes; no copy is made)."""
        if not isinstance(data, bytes):
            data = bytes(data)
        end = len(data) if end is None else end
        n = end - start
        if n <= 0:
            return
        base = self.pos - start          # absolute offset of data[0]
        if self.at_line_start:
            self.starts.append(self.pos)
        starts = self.starts
        find = data.find
        i = find(b"\n", start, end)
        hits = 0
        while i != -1 and i + 1 < end:
            starts.append(base + i + 1)
            hits += 1
            if hits > 256:  # short rows (hw, linelist): vectorise the rest of the piece
                import numpy as np

                arr = np.frombuffer(data, dtype=np.uint8, count=end - (i + 1), offset=i + 1)
                nl = np.flatnonzero(arr == 10) + (i + 1)
                starts.extend((nl[nl + 1 < end] + 1 + base).tolist())
                break
            i = find(b"\n", i + 1, end)
        self.at_line_start = data[end - 1] == 10
        self.pos += n

    @property
    def ends_with_newline(self) -> bool:
        return self.pos == 0 or self.at_line_start


def canonical_digest(offsets) -> str:
    """sha256 of the offsets written one per line with a final newline."""
    h = hashlib.sha256()
    step = 1 << 16
    for i in range(0, len(offsets), step):
        h.update("".join(f"{v}\n" for v in offsets[i:i + step]).encode())
    return h.hexdigest()


def scan_tsv(path: Path) -> LineStarts:
    ls = LineStarts()
    with open(path, "rb", buffering=0) as f:
        while True:
            b = f.read(CHUNK)
            if not b:
                break
            ls.feed(b)
    return ls


@dataclass(frozen=True)
class LineIdx:
    offsets: array
    bad_lines: Tuple[Tuple[int, str], ...] = ()   # (0-based entry, text) that are not decimals


def read_lineidx(path: Path) -> LineIdx:
    """Parse a lineidx file; entries that are not plain decimals are reported, not raised."""
    data = path.read_bytes()
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    offsets = array("q")
    bad: List[Tuple[int, str]] = []
    for i, line in enumerate(lines):
        s = line.strip()
        if s.isdigit():
            offsets.append(int(s))
        else:
            bad.append((i, line[:40].decode("ascii", "replace")))
            offsets.append(-1)
    return LineIdx(offsets, tuple(bad))


def lineidx_bytes(offsets) -> bytes:
    return "".join(f"{v}\n" for v in offsets).encode()


def regenerate(tsv: Path) -> Tuple[Path, int]:
    """Write ``tsv``'s lineidx from its content (atomically).  Returns (path, rows)."""
    ls = scan_tsv(tsv)
    out = lineidx_path(tsv)
    atomic_write_bytes(out, lineidx_bytes(ls.starts))
    return out, len(ls.starts)


def read_row(f, offset: int, limit: Optional[int] = None) -> bytes:
    """The row starting at ``offset`` (without its newline) from a binary file object."""
    f.seek(offset)
    return f.readline() if limit is None else f.readline(limit)
