"""Streaming fetch + extraction of one dataset tar, resumable at member boundaries.

The tar is parsed as it arrives (our own header parser: ustar, GNU long
names and base-256 sizes, PAX ``path``/``size``), each member is checked by
:mod:`tarsafe` and written below ``<root>/.metro-assets/staging/<id>/tree/``.
No copy of the archive is kept (unless ``--keep-archive``), so peak disk use
is about the extracted size.  The dataset moves to ``datasets/<name>/`` only
after the whole archive arrived and its sha256 matched (or, with no known
hash, was recorded trust-on-first-use).

Resume, and what it guarantees
------------------------------
hashlib objects cannot be saved, so a killed fetch keeps enough to *rebuild*
the archive hash instead:

* ``journal.bin``: every archive byte that is not file content (headers, PAX
  and long-name blocks, padding), in archive order;
* ``state.json``, written at member boundaries (about once a second): the
  byte offset of the boundary, the list of completed members (path, size,
  per-file sha256, journal bytes before it), the URL and its validator
  (ETag / Last-Modified), and ``prefix_sha256``: the sha256 of the archive
  bytes ``[0, offset)`` taken with ``hash.copy()`` at that moment.

On restart we re-hash journal + extracted files in archive order (a local
read of what is already on disk, at disk/sha256 speed), and continue only if
that digest equals ``prefix_sha256``; then the stream resumes with
``Range: bytes=<offset>-`` and ``If-Range: <validator>``.  A 200 reply (the
file changed, or ranges are not supported) starts over.  Files written after
the last checkpoint are deleted.  So: (1) nothing already safely extracted is
downloaded again; (2) the final sha256 is exactly the sha256 of the bytes
the server sent, as if downloaded in one go - a staged file damaged or
edited between the runs is detected by the prefix digest and the fetch
starts over; (3) correctness never depends on fsync ordering or locks: a
power loss at worst costs a fresh start.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Dict, List, Optional, Tuple

from metro_assets.datasets.tarsafe import DIR, MemberPolicy, refuse
from metro_assets.datasets.tsv import LineStarts, canonical_digest
from metro_assets.errors import SourceError, StructuralError
from metro_assets.hashing import update_from_file
from metro_assets.store import atomic_write_json, fsync_dir, read_json

BLOCK = 512
CHUNK = 1 << 20
MAX_EXT = 1 << 20            # PAX / long-name payloads above this are refused
CHECKPOINT_SECONDS = 1.0
STATE_VERSION = 1


# --------------------------------------------------------------------------- sources

@dataclass
class Opened:
    read: Callable[[int], bytes]
    close: Callable[[], None]
    start: int                      # offset the body starts at (0 = whole file)
    total: Optional[int]            # full archive size when known
    etag: Optional[str] = None
    last_modified: Optional[str] = None
    local_tag: Optional[str] = None     # file://: "<size>-<mtime_ns>"

    @property
    def validator(self) -> Optional[str]:
        if self.local_tag:
            return self.local_tag
        return self.etag if self.etag and not self.etag.startswith("W/") else self.last_modified


def open_source(url: str, *, offset: int = 0, validator: Optional[str] = None, any_version: bool = False,
                session=None, timeout: Tuple[float, float] = (10.0, 30.0)) -> Opened:
    """Open ``url`` at ``offset`` if ``validator`` still matches (``If-Range``), else at 0.

    ``any_version``: resume without a validator (only when the archive's sha256
    is known, so the final check catches a different file).  ``Opened.start``
    says where the body really starts.
    """
    if url.startswith("file://"):
        from metro_assets.sources import file_path

        p = file_path(url)
        try:
            f = open(p, "rb", buffering=0)
        except FileNotFoundError:
            raise SourceError(f"not found in the local mirror: {p}", url=url, status=404) from None
        except OSError as exc:
            raise SourceError(f"cannot read {p}: {exc.strerror}", url=url) from None
        st = os.fstat(f.fileno())
        tag = f"{st.st_size}-{st.st_mtime_ns}"
        start = offset if offset and (validator == tag or any_version) and offset <= st.st_size else 0
        f.seek(start)
        import email.utils

        return Opened(f.read, f.close, start, st.st_size, local_tag=tag,
                      last_modified=email.utils.formatdate(st.st_mtime, usegmt=True))
    from metro_assets.http import SHUTDOWN, TransportError, open_get, status_error

    headers = {"Accept-Encoding": "identity"}
    if offset and (validator or any_version):
        headers["Range"] = f"bytes={offset}-"
        if validator:
            headers["If-Range"] = validator
    try:
        r = open_get(url, headers, timeout=timeout, session=session)
    except TransportError as exc:
        raise SourceError(f"cannot reach {url}: {exc.why}", url=url, retryable=True) from None
    if r.status not in (200, 206):
        try:
            body = r.read(4096) if r.status in (409, 410) else b""
        except Exception:
            body = b""
        r.close()
        raise status_error(url, r.status, body, r.reason)
    ctype = r.headers.get("Content-Type", "") or ""
    if ctype.startswith("text/html"):
        r.close()
        raise SourceError(f"{url} sent an HTML page instead of a tar", url=url, status=r.status)
    start, total = 0, None
    if r.status == 206:
        cr = r.headers.get("Content-Range", "") or ""
        try:
            rng, tot = cr.split(" ", 1)[1].split("/")
            start = int(rng.split("-")[0])
            total = int(tot) if tot != "*" else None
        except (IndexError, ValueError):
            r.close()
            raise SourceError(f"{url} sent a bad Content-Range {cr!r}", url=url, status=206) from None
        if start != offset:
            r.close()
            raise SourceError(f"{url} resumed at byte {start}, not {offset}", url=url, status=206)
    elif str(r.headers.get("Content-Length", "")).isdigit():
        total = int(r.headers["Content-Length"])

    def read(n: int) -> bytes:
        if SHUTDOWN.is_set():
            raise KeyboardInterrupt  # Ctrl-C: the staged members and the resume state are kept
        try:
            return r.read(n)
        except Exception as exc:  # protocol errors, timeouts, resets
            raise SourceError(f"the transfer from {url} broke: {exc.__class__.__name__}", url=url, retryable=True) from None

    return Opened(read, r.close, start, total, etag=r.headers.get("ETag"), last_modified=r.headers.get("Last-Modified"))


# --------------------------------------------------------------------------- staging state

@dataclass
class Member:
    rel: str
    size: int
    sha256: str
    meta_before: int                # journal bytes between the previous file's data and this one's


@dataclass
class Checkpoint:
    url: str = ""
    validator: Optional[str] = None
    etag: Optional[str] = None
    last_modified: Optional[str] = None
    total: Optional[int] = None
    offset: int = 0
    prefix_sha256: str = hashlib.sha256().hexdigest()
    journal_len: int = 0
    trailing_meta: int = 0
    layout: Optional[str] = None
    members: List[Member] = field(default_factory=list)
    dirs: List[str] = field(default_factory=list)
    tsv: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    complete: bool = False
    archive_sha256: Optional[str] = None

    def to_json(self) -> Dict[str, Any]:
        d = dict(self.__dict__)
        d["members"] = [[m.rel, m.size, m.sha256, m.meta_before] for m in self.members]
        d["version"] = STATE_VERSION
        return d

    @classmethod
    def from_json(cls, d: Dict[str, Any]) -> Optional["Checkpoint"]:
        if not isinstance(d, dict) or d.get("version") != STATE_VERSION:
            return None
        try:
            d = dict(d)
            d.pop("version")
            d["members"] = [Member(*m) for m in d.get("members", [])]
            return cls(**d)
        except (TypeError, ValueError):
            return None


class Staging:
    """``<root>/.metro-assets/staging/<id>/``: tree/, journal.bin, state.json."""

    def __init__(self, state_dir: Path, asset_id: str) -> None:
        self.dir = state_dir / "staging" / asset_id
        self.tree = self.dir / "tree"
        self.journal = self.dir / "journal.bin"
        self.state = self.dir / "state.json"

    def load(self) -> Optional[Checkpoint]:
        if not self.tree.is_dir():
            return None
        return Checkpoint.from_json(read_json(self.state, None))

    def save(self, cp: Checkpoint, *, durable: bool = False) -> None:
        atomic_write_json(self.state, cp.to_json(), durable=durable)

    def reset(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
        self.tree.mkdir(parents=True)
        self.journal.write_bytes(b"")

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    def staged_bytes(self) -> int:
        cp = self.load()
        return sum(m.size for m in cp.members) if cp else 0


def rebuild(staging: Staging, cp: Checkpoint, progress: Optional[Callable[[int], None]] = None, *,
            snapshot=None):
    """Roll the staging folder back to checkpoint ``cp`` and return the archive hash at its offset.

    Deletes every staged file that ``cp`` does not list (written after it) and
    truncates the journal.  With ``snapshot`` (a ``hash.copy()`` taken at that
    checkpoint in this process) nothing is re-read; otherwise journal + staged
    files are re-hashed in archive order and the hash is returned only if it
    equals ``cp.prefix_sha256`` (else None: start over).
    """
    keep = {m.rel for m in cp.members}
    for dirpath, dirnames, filenames in os.walk(staging.tree):
        for fn in filenames:
            p = Path(dirpath, fn)
            if p.relative_to(staging.tree).as_posix() not in keep:
                p.unlink()
    if snapshot is not None:
        os.truncate(staging.journal, cp.journal_len)
        return snapshot.copy()
    h = hashlib.sha256()
    buf = bytearray(CHUNK)
    try:
        with open(staging.journal, "rb") as j:
            for m in cp.members:
                meta = j.read(m.meta_before)
                if len(meta) != m.meta_before:
                    return None
                h.update(meta)
                p = staging.tree.joinpath(*m.rel.split("/"))
                with open(p, "rb", buffering=0) as f:
                    if os.fstat(f.fileno()).st_size != m.size:
                        return None
                    update_from_file(h, f, progress=progress, buf=buf)
            tail = j.read(cp.trailing_meta)
            if len(tail) != cp.trailing_meta:
                return None
            h.update(tail)
        os.truncate(staging.journal, cp.journal_len)
    except OSError:
        return None
    return h if h.copy().hexdigest() == cp.prefix_sha256 else None


# --------------------------------------------------------------------------- the tar parser

_HEADER, _EXT, _DATA, _SKIP, _END = range(5)


class Extractor:
    """Push parser: ``feed(chunk)`` in archive order; extracts, hashes, checkpoints."""

    def __init__(self, staging: Staging, cp: Checkpoint, policy: MemberPolicy, h, *, archive: str,
                 on_member: Optional[Callable[[str, int], None]] = None) -> None:
        self.staging = staging
        self.cp = cp
        self.policy = policy
        self.h = h
        self.archive = archive
        self.on_member = on_member
        self.offset = cp.offset
        self.phase = _HEADER
        self.need = BLOCK
        self.hdr = bytearray()
        self.ext = bytearray()
        self.ext_type = b""
        self.pax: Dict[str, str] = {}
        self.longname: Optional[str] = None
        self.meta_since = cp.trailing_meta
        self.cur_fd: Optional[int] = None
        self.cur_rel = ""
        self.cur_size = 0
        self.cur_hash = None
        self.cur_lines: Optional[LineStarts] = None
        self.cur_mtime = 0
        self.zero_blocks = 0
        self.journal = open(staging.journal, "ab")
        self.closer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="metro-fsync")
        # the archive hash runs on its own thread (hashlib drops the GIL), in order
        self.hasher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="metro-tarhash")
        self.hash_queue: List = []
        self.file_hasher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="metro-filehash")
        self.file_queue: List = []
        self.unhashed: List = []     # (member, future of its hexdigest)
        self.pending_close: List = []
        self.last_cp = time.monotonic()
        self.snapshot = (h.copy(), Checkpoint.from_json(cp.to_json()))

    # -- public
    @property
    def ended(self) -> bool:
        """At the end-of-archive marker (or a clean member boundary after one zero block)."""
        return self.phase == _END or (self.phase == _HEADER and not self.hdr and self.zero_blocks == 1)

    @property
    def at_boundary(self) -> bool:
        return self.phase == _HEADER and not self.hdr and not self.pax and self.longname is None

    def feed(self, data: bytes) -> None:
        mv = memoryview(data)
        n = len(mv)
        i = 0
        hashed = 0
        while i < n:
            ph = self.phase
            if ph == _DATA:
                k = min(self.need, n - i)
                piece = mv[i:i + k]
                self._write(piece)
                fq = self.file_queue
                fq.append(self.file_hasher.submit(self.cur_hash.update, piece))
                while len(fq) > 8 or (fq and fq[0].done()):
                    fq.pop(0).result()
                if self.cur_lines is not None:
                    self.cur_lines.feed(data, i, i + k)
                self.need -= k
                i += k
                if self.need == 0:
                    self._finish_file()
                    self._after_data(self.cur_size)
                continue
            if ph == _END:
                self._meta(mv[i:])
                i = n
                continue
            k = min(self.need, n - i)
            piece = mv[i:i + k]
            self._meta(piece)
            i += k
            self.need -= k
            if ph == _HEADER:
                self.hdr += piece
                if self.need == 0:
                    self._header(self.offset + i - BLOCK)
            elif ph == _EXT:
                if len(self.ext) < self.ext_size:
                    self.ext += piece[:self.ext_size - len(self.ext)]
                if self.need == 0:
                    self._ext_done()
            elif ph == _SKIP and self.need == 0:
                self._to_header()
            if self.phase == _HEADER and not self.hdr and not self.pax and self.longname is None \
                    and self.zero_blocks == 0 and time.monotonic() - self.last_cp >= CHECKPOINT_SECONDS:
                self._hash(mv[hashed:i])
                hashed = i
                self.checkpoint(self.offset + i)
        self._hash(mv[hashed:])
        self.offset += n

    def _hash(self, piece) -> None:
        q = self.hash_queue
        q.append(self.hasher.submit(self.h.update, piece))
        while len(q) > 8 or (q and q[0].done()):
            q.pop(0).result()

    def _drain_hash(self) -> None:
        while self.hash_queue:
            self.hash_queue.pop(0).result()
        for m, fut in self.unhashed:
            m.sha256 = fut.result()
        self.unhashed.clear()

    def checkpoint(self, offset: int, *, durable: bool = False) -> None:
        """Save the state at a member boundary (``offset`` = absolute archive offset)."""
        self._drain_hash()
        self.journal.flush()
        self.cp.offset = offset
        self.cp.prefix_sha256 = self.h.copy().hexdigest()
        self.cp.journal_len = self.journal.tell()
        self.cp.trailing_meta = self.meta_since
        self.cp.layout = self.policy.layout
        self.staging.save(self.cp, durable=durable)
        self.snapshot = (self.h.copy(), Checkpoint.from_json(self.cp.to_json()))
        self.last_cp = time.monotonic()

    def close(self) -> None:
        """Close open files (the partial member is left for ``rebuild`` to delete)."""
        if self.cur_fd is not None:
            os.close(self.cur_fd)
            self.cur_fd = None
        self.hasher.shutdown(wait=True)
        self.file_hasher.shutdown(wait=True)
        self.hash_queue.clear()
        self.unhashed.clear()
        for fut in self.pending_close:
            fut.result()
        self.pending_close.clear()
        self.closer.shutdown(wait=True)
        self.journal.close()

    def sync(self) -> None:
        """Wait until the archive hash is current and every completed file is fsynced and closed."""
        self._drain_hash()
        for fut in self.pending_close:
            fut.result()
        self.pending_close.clear()
        self.journal.flush()

    # -- internals
    def _meta(self, piece) -> None:
        self.journal.write(piece)
        self.meta_since += len(piece)

    def _write(self, piece) -> None:
        while len(piece):
            w = os.write(self.cur_fd, piece)
            piece = piece[w:]

    def _to_header(self) -> None:
        self.phase, self.need = _HEADER, BLOCK
        self.hdr = bytearray()

    def _after_data(self, size: int) -> None:
        pad = (-size) % BLOCK
        if pad:
            self.phase, self.need = _SKIP, pad
        else:
            self._to_header()

    def _header(self, at: int) -> None:
        block = bytes(self.hdr)
        self.hdr = bytearray()
        if block == b"\0" * BLOCK:
            self.zero_blocks += 1
            if self.zero_blocks >= 2:
                self.phase = _END
            self.need = BLOCK
            return
        if self.zero_blocks:
            raise StructuralError(f"{self.archive}: data after an end-of-archive block at byte {at}",
                                  expected="one tar archive", did="Nothing was moved into place")
        try:
            ti = tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
        except tarfile.HeaderError as exc:
            raise StructuralError(f"{self.archive}: not a valid tar header at byte {at} ({exc})",
                                  expected="a POSIX/GNU tar archive", did="Nothing was moved into place") from None
        t = ti.type
        if t in (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, b"X"):
            if ti.size > MAX_EXT:
                raise refuse(ti.name, f"extended header of {ti.size} bytes", archive=self.archive)
            self.ext_type, self.ext_size = t, ti.size
            self.ext = bytearray()
            self.phase, self.need = _EXT, ti.size + ((-ti.size) % BLOCK)
            if self.need == 0:
                self._ext_done()
            return
        name = ti.name
        size = ti.size
        if self.longname is not None:
            name = self.longname
        if "path" in self.pax:
            name = self.pax["path"]
        if "size" in self.pax:
            try:
                size = int(self.pax["size"])
            except ValueError:
                raise refuse(name, f"bad PAX size {self.pax['size']!r}", archive=self.archive) from None
        self.pax, self.longname = {}, None
        kind, rel_parts = self.policy.admit(name, t, ti.mode)
        rel = "/".join(rel_parts)
        if kind == DIR:
            if rel:
                self.staging.tree.joinpath(*rel_parts).mkdir(parents=True, exist_ok=True)
                self.cp.dirs.append(rel)
            self._skip_data(size)
            return
        path = self.staging.tree.joinpath(*rel_parts)
        path.parent.mkdir(parents=True, exist_ok=True)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        self.cur_fd = os.open(path, flags, 0o644)
        self.cur_rel, self.cur_size, self.cur_mtime = rel, size, int(ti.mtime)
        self.cur_hash = hashlib.sha256()
        self.cur_lines = LineStarts() if rel.endswith(".tsv") else None
        if self.on_member is not None:
            self.on_member(rel, len(self.cp.members))
        if size == 0:
            self._finish_file()
            self._to_header()
        else:
            self.phase, self.need = _DATA, size

    def _skip_data(self, size: int) -> None:
        total = size + ((-size) % BLOCK)
        if total:
            self.phase, self.need = _SKIP, total
        else:
            self._to_header()

    def _ext_done(self) -> None:
        data = bytes(self.ext[:self.ext_size])
        t = self.ext_type
        if t in (tarfile.GNUTYPE_LONGNAME,):
            self.longname = data.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
        elif t in (tarfile.XHDTYPE, b"X"):
            self.pax.update(_parse_pax(data, self.archive))
        elif t == tarfile.GNUTYPE_LONGLINK:
            self.pax["linkpath"] = data.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
        # XGLTYPE (global) headers carry comments in practice; their keys are ignored.
        self._to_header()

    def _finish_file(self) -> None:
        fd = self.cur_fd
        self.cur_fd = None
        try:
            os.utime(fd, ns=(self.cur_mtime * 10**9, self.cur_mtime * 10**9))
        except (OSError, NotImplementedError, OverflowError):
            pass
        self.pending_close.append(self.closer.submit(_fsync_close, fd))
        if len(self.pending_close) > 64:
            done = [f for f in self.pending_close if f.done()]
            for f in done:
                f.result()
                self.pending_close.remove(f)
        m = Member(self.cur_rel, self.cur_size, "", self.meta_since)
        self.cp.members.append(m)
        self.unhashed.append((m, self.file_hasher.submit(self.cur_hash.hexdigest)))
        self.meta_since = 0
        if self.cur_lines is not None:
            ls = self.cur_lines
            self.cp.tsv[self.cur_rel] = {"rows": len(ls.starts), "starts_sha256": canonical_digest(ls.starts),
                                         "ends_with_newline": ls.ends_with_newline}
            self.cur_lines = None


def _fsync_close(fd: int) -> None:
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _parse_pax(data: bytes, archive: str) -> Dict[str, str]:
    out: Dict[str, str] = {}
    pos = 0
    while pos < len(data):
        sp = data.find(b" ", pos)
        if sp == -1:
            break
        try:
            length = int(data[pos:sp])
        except ValueError:
            raise refuse("<pax header>", "malformed PAX record", archive=archive) from None
        if length <= 0:
            break
        rec = data[sp + 1:pos + length - 1]
        key, _, value = rec.partition(b"=")
        out[key.decode("utf-8", "replace")] = value.decode("utf-8", "surrogateescape")
        pos += length
    return out


def dataset_names(asset) -> Tuple[str, ...]:
    name = PurePosixPath(asset.path).name
    stem = (asset.archive or "").rsplit(".tar", 1)[0]
    return tuple(dict.fromkeys(n for n in (name, stem) if n))


def fsync_tree(top: Path) -> None:
    for dirpath, _dirs, _files in os.walk(top):
        fsync_dir(Path(dirpath))
