"""The HTTP transfer engine: stream a URL into a partial file, hashing as bytes land.

One call of :func:`download` fetches one URL into ``part`` (a hidden temp file the
caller chose, see ``Store.part_path``) and returns a :class:`TransferResult`.  It
never renames into a final path: the caller does that after its own checks.

How it is fast
    Requests go out on ``http.client`` keep-alive connections pooled per host
    (:mod:`metro_assets.http`; ``requests`` is imported only for proxies or a
    caller's session).  The socket is read with ``readinto1`` into 1 MiB buffers
    (no per-chunk bytes objects), written with ``os.pwrite`` and handed to a
    hashing thread (hashlib drops the GIL), so receiving, writing and hashing
    overlap.  Writeback is started every 8 MiB (``sync_file_range``) so the final
    ``fdatasync`` is short.  A small file (<= 2 MiB) runs inline in the caller's
    thread: no threads, no resume sidecar.

How it survives
    Progress is kept in a sidecar JSON (``state``): URL, validator (ETag or
    Last-Modified), total size and per-segment progress.  A later call resumes
    with ``Range`` + ``If-Range``; a 200 instead of 206 (Range ignored, or the
    file changed) restarts cleanly from byte 0.  Connection errors, timeouts,
    408/429/5xx are retried with backoff and jitter (Retry-After honoured), and
    the failure count resets whenever bytes arrive, so a link that drops every
    64 MiB still completes; after a cut that made progress it reconnects at
    once.  401/403/404/409/410 are never retried.

How it scales
    With Range support the file is preallocated and handed out in file order in
    pieces (about four per connection); at the tail an idle connection steals
    half of the largest remaining piece, so all connections finish together.
    The hashing thread follows the contiguous prefix (from the buffers when it
    is in front, else from the page cache), so verification ends shortly after
    the last byte lands.  In automatic mode a file of 32 MiB or more opens 8
    connections as soon as the first answer shows Range support and its first
    buffer came slower than 150 MiB/s (a faster one, as from a LAN mirror, is
    left alone: more connections would only compete for the CPU), and 16 when
    each of them is capped (network-bound, slower than 150 MiB/s each and
    below 400 MiB/s together).  :class:`ConnectionBudget` caps connections
    across parallel downloads.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import hashlib
import os
import queue
import socket
import threading
import weakref
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Tuple

from metro_assets.errors import SourceError, StalledError, StructuralError, VerificationError
from metro_assets.http import (SHUTDOWN, RETRYABLE_STATUS, Response, TransportError, backoff_delay, net_errors, open_get,
                               retry_after_seconds, status_error)
from metro_assets.settings import Settings
from metro_assets.store import atomic_write_json, read_json

__all__ = ["TransferResult", "ConnectionBudget", "download"]

BUF_SIZE = 1 << 20              # one socket-to-disk buffer
BUFS_PER_CONNECTION = 4         # bounds memory: 4 MiB per connection in flight
FLUSH_EVERY_S = 0.25            # a partly filled buffer is committed after this long
WRITEBACK_EVERY = 8 << 20       # start kernel writeback after this many new bytes
STATE_EVERY_S = 1.0             # how often the resume sidecar is rewritten
STATE_MIN_SIZE = 1 << 20        # smaller downloads are not worth a sidecar while they run
AUTO_SEGMENTED_MIN = 32 << 20   # automatic mode: below this, one connection
AUTO_START_CONNECTIONS = 8      # automatic mode, big file with Range: this many at once
AUTO_MAX_CONNECTIONS = 16       # ... and up to this many when each connection is capped
SLOW_CONNECTION_BPS = 150 << 20  # automatic mode: slower than this per connection = add connections
GROW_BELOW_BPS = 400 << 20      # ... unless all of them together already move this much
MIN_SEGMENT = 1 << 20           # never split below this (the smallest piece)
MAX_PIECE = 64 << 20            # work is handed out in file order in pieces of at most this
PIECES_PER_CONNECTION = 4       # ... sized so each connection takes about this many
MIN_STEAL = 1 << 20             # a steal at the tail leaves both halves at least this big
SNIFF_BYTES = 4096
INLINE_MAX = 2 << 20            # at most this much left on one connection: no threads at all
STALL_RETRIES = 2               # a stall is retried this many times, then StalledError
STATE_VERSION = 1


@dataclass(frozen=True)
class TransferResult:
    url: str
    size: int
    sha256: str
    etag: Optional[str]
    last_modified: Optional[str]
    resumed_bytes: int      # bytes reused from a previous attempt/run
    connections: int        # connections actually used (each fetched at least one segment)
    seconds: float


class ConnectionBudget:
    """One budget of connections shared by parallel downloads (``--jobs``).

    Every download holds at least one connection (waiting for it if needed);
    extra connections for segments are taken only when free, never waited for.
    """

    def __init__(self, total: int) -> None:
        self.total = max(1, int(total))
        self._free = self.total
        self._cond = threading.Condition()

    def acquire_one(self) -> None:
        with self._cond:
            while self._free < 1:
                self._cond.wait()
            self._free -= 1

    def try_acquire(self, n: int) -> int:
        """Take up to ``n`` connections without waiting; returns how many were taken."""
        with self._cond:
            got = max(0, min(n, self._free))
            self._free -= got
            return got

    def release(self, n: int = 1) -> None:
        with self._cond:
            self._free = min(self.total, self._free + n)
            self._cond.notify_all()

    @property
    def free(self) -> int:
        return self._free


# --------------------------------------------------------------------------- plumbing

def _load_sync_file_range():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.sync_file_range
        fn.argtypes = [ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint]
        fn.restype = ctypes.c_int
        return fn
    except (OSError, AttributeError):
        return None


_sync_file_range = _load_sync_file_range()
_SYNC_FILE_RANGE_WRITE = 2


def _start_writeback(fd: int) -> None:
    """Ask the kernel to start writing dirty pages now, so the final fdatasync is short."""
    if _sync_file_range is not None:
        if _sync_file_range(fd, 0, 0, _SYNC_FILE_RANGE_WRITE) == 0:
            return
    with contextlib.suppress(OSError):
        os.fdatasync(fd)


class _Retry(Exception):
    """A retryable failure of one attempt."""

    def __init__(self, why: str, *, status: Optional[int] = None, retry_after: Optional[float] = None,
                 stall: bool = False) -> None:
        super().__init__(why)
        self.why = why
        self.status = status
        self.retry_after = retry_after
        self.stall = stall


class _Restart(Exception):
    """The server's copy changed or ignored Range: start again from byte 0."""


class _Cancelled(Exception):
    pass


# Ctrl-C: fetch calls cancel_all(); every live download stops at once, keeping its
# partial bytes and resume state, and raises KeyboardInterrupt in its own thread.
_LIVE: "weakref.WeakSet" = weakref.WeakSet()


def cancel_all() -> None:
    """Stop every running download promptly; partial downloads stay resumable."""
    SHUTDOWN.set()
    for job in list(_LIVE):
        job.cancel.set()
        job._abort_streams()


class _BufferPool:
    """Buffers for one connection, allocated on first use (a small file needs one)."""

    def __init__(self, size: int, most: int) -> None:
        self.size, self.left = size, most
        self.q: "queue.SimpleQueue" = queue.SimpleQueue()

    def get(self) -> bytearray:
        if self.left and self.q.empty():
            self.left -= 1
            return bytearray(self.size)
        return self.q.get()

    def put(self, buf: bytearray) -> None:
        self.q.put(buf)


class _Segment:
    __slots__ = ("start", "end", "done", "owned")

    def __init__(self, start: int, end: Optional[int], done: int = 0, owned: bool = False) -> None:
        self.start = start
        self.end = end      # exclusive; None = until EOF (size unknown)
        self.done = done
        self.owned = owned

    @property
    def pos(self) -> int:
        return self.start + self.done

    def remaining(self) -> Optional[int]:
        return None if self.end is None else self.end - self.pos


# --------------------------------------------------------------------------- the hasher


class _Hasher(threading.Thread):
    """Hashes the contiguous prefix: from buffers handed over by the front reader,
    else from the page cache (a segment that is not in front)."""

    def __init__(self, job: "_Job", fd: int, h, frontier: int) -> None:
        super().__init__(name="metro-hash", daemon=True)
        self.job = job
        self.fd = fd
        self.h = h
        self.frontier = frontier
        self.q: "queue.Queue" = queue.Queue()
        self.error: Optional[BaseException] = None

    def submit(self, pos: int, buf: bytearray, n: int, free: "queue.SimpleQueue") -> bool:
        if pos != self.frontier:
            return False
        self.q.put((pos, buf, n, free))
        return True

    def _catch_up(self, upto: int) -> None:
        if self.frontier >= upto:
            return
        view = memoryview(bytearray(BUF_SIZE))
        while self.frontier < upto:
            k = os.preadv(self.fd, [view[: min(BUF_SIZE, upto - self.frontier)]], self.frontier)
            if k <= 0:
                raise OSError(f"short read at {self.frontier} while hashing the partial file")
            self.h.update(view[:k])
            self.frontier += k

    def run(self) -> None:
        try:
            while True:
                try:
                    item = self.q.get(timeout=0.05)
                except queue.Empty:
                    item = False
                if item is None:
                    self._catch_up(self.job.contiguous())
                    return
                if item:
                    pos, buf, n, free = item
                    f = self.frontier
                    if pos <= f < pos + n:
                        self.h.update(memoryview(buf)[f - pos:n])
                        self.frontier = pos + n
                    free.put(buf)
                if self.q.empty():
                    self._catch_up(self.job.contiguous())
        except BaseException as exc:  # surfaced by the job
            self.error = exc
            self.job.cancel.set()
            # keep draining so readers never block on their buffers
            while True:
                try:
                    item = self.q.get(timeout=0.5)
                except queue.Empty:
                    return
                if item is None:
                    return
                item[3].put(item[1])


class _InlineHasher:
    """The hasher for small single-connection downloads: no thread to start."""

    def __init__(self, job: "_Job", fd: int, h, frontier: int) -> None:
        self.job, self.fd, self.h, self.frontier = job, fd, h, frontier
        self.error: Optional[BaseException] = None
        self.q = self

    def submit(self, pos: int, buf: bytearray, n: int, free) -> bool:
        f = self.frontier
        if pos <= f < pos + n:
            self.h.update(memoryview(buf)[f - pos:n])
            self.frontier = pos + n
        return False  # the caller reuses the buffer at once

    def start(self) -> None:
        pass

    def put(self, _item) -> None:  # the end-of-transfer sentinel: hash what the buffers did not cover
        _Hasher._catch_up(self, self.job.contiguous())  # type: ignore[arg-type]

    def join(self) -> None:
        pass


# --------------------------------------------------------------------------- one download


class _Job:
    def __init__(self, url: str, part: Path, state: Path, settings: Settings, *,
                 expected_size: Optional[int], connections: Optional[int], budget: Optional[ConnectionBudget],
                 sniff, progress, session: Optional[object]) -> None:
        self.url = url
        self.part = part
        self.state_path = state
        self.settings = settings
        self.expected_size = expected_size
        self.want_connections = connections if connections is not None else settings.connections
        self.budget = budget
        self.sniff = sniff
        self.progress = progress
        self.session = session
        self.lock = threading.Lock()
        self.cancel = threading.Event()
        _LIVE.add(self)
        self.errors: List[BaseException] = []
        self.stalls = 0
        self.peak_connections = 0
        self.connections_used = 0
        self.active = 0
        self.resumed_bytes = 0
        self.new_bytes = 0
        self.since_writeback = 0
        self.recv_s = 0.0               # time readers spent waiting on sockets (growth heuristic)
        self.streams: set = set()
        self.wake = threading.Event()   # nudges the supervisor: sniff passed, a worker ended
        self.t_first = 0.0              # when the first answer of a fresh download arrived
        self.first_bps: Optional[float] = None  # how fast its first buffer filled
        self.fd = -1
        self.hasher: Optional[_Hasher] = None

    # -- requests
    def _timeout(self) -> Tuple[float, float]:
        return (self.settings.connect_timeout, max(0.1, float(self.settings.stall_seconds)))

    def request(self, start: int, end: Optional[int], *, validate: bool = True,
                ranged: bool = True) -> Response:
        headers = {"Accept-Encoding": "identity"}
        if ranged:
            headers["Range"] = f"bytes={start}-" + (str(end - 1) if end is not None else "")
        if validate and self.validator:
            headers["If-Range"] = self.validator
        try:
            resp = open_get(self.url, headers, timeout=self._timeout(), session=self.session)
        except TransportError as exc:
            raise _Retry(exc.why, stall=exc.read_timeout) from None
        status = resp.status
        if status in (200, 206):
            return resp
        body = b""
        with contextlib.suppress(Exception):
            body = resp.read(64 * 1024) or b""
        resp.close()
        if status in RETRYABLE_STATUS:
            raise _Retry(f"HTTP {status}", status=status, retry_after=retry_after_seconds(resp.headers.get("Retry-After")))
        if status == 416:
            raise _Restart("HTTP 416")
        raise status_error(self.url, status, body, resp.reason or "")

    # -- resume state
    def contiguous(self) -> int:
        """End of the prefix that is fully written (the hasher may hash up to here)."""
        with self.lock:
            for seg in self.segments:
                if seg.end is None or seg.pos < seg.end:
                    return seg.pos
            return self.total if self.total is not None else self.segments[-1].pos

    def save_state(self) -> None:
        with self.lock:
            segs = [[s.start, s.end, s.done] for s in self.segments]
        atomic_write_json(self.state_path, {
            "version": STATE_VERSION, "url": self.url, "etag": self.etag, "last_modified": self.last_modified,
            "total": self.total, "segments": segs, "updated": time.time(),
        }, durable=False)

    def load_state(self) -> bool:
        st = read_json(self.state_path, None)
        if not isinstance(st, dict) or st.get("version") != STATE_VERSION or st.get("url") != self.url:
            return False
        try:
            total = st.get("total")
            segs = [_Segment(int(a), None if b is None else int(b), int(d)) for a, b, d in st["segments"]]
            size = os.stat(self.part).st_size
        except (KeyError, TypeError, ValueError, OSError):
            return False
        if not segs or not (st.get("etag") or st.get("last_modified")):
            return False
        if any(s.done < 0 or (s.end is not None and s.pos > s.end) or s.pos > size for s in segs):
            return False
        self.etag, self.last_modified, self.total = st.get("etag"), st.get("last_modified"), total
        self.segments = sorted(segs, key=lambda s: s.start)
        self.range_ok = True
        return True

    @property
    def validator(self) -> Optional[str]:
        if self.etag and not self.etag.startswith("W/"):
            return self.etag
        return self.last_modified

    # -- the main flow
    def run(self) -> Tuple[int, str]:
        restarts = 0
        while True:
            try:
                return self._attempt(fresh=restarts > 0)
            except _Restart:
                restarts += 1
                if restarts > max(2, self.settings.retries):
                    raise SourceError(f"{self.url} kept changing while it was downloaded", url=self.url,
                                      retryable=True, did=f"Restarted {restarts - 1} times") from None
                self.resumed_bytes = 0

    def _attempt(self, fresh: bool) -> Tuple[int, str]:
        self.cancel = threading.Event()
        if SHUTDOWN.is_set():
            raise KeyboardInterrupt
        self.errors = []
        self.etag = self.last_modified = None
        self.total: Optional[int] = None
        self.segments: List[_Segment] = []
        self.range_ok = False
        self.sniffed = self.sniff is None
        resuming = (not fresh) and self.part.exists() and self.load_state()
        first: Optional[Response] = None
        first_seg: Optional[_Segment] = None
        fd = os.open(self.part, os.O_RDWR | os.O_CREAT | (0 if resuming else os.O_TRUNC), 0o644)
        try:
            h = hashlib.sha256()
            prefix = 0
            if resuming:
                prefix = self.contiguous()
                if self.sniff is not None:
                    if prefix < SNIFF_BYTES and not (self.total is not None and prefix == self.total):
                        raise _Restart("too little to sniff")
                    self.sniff(os.pread(fd, SNIFF_BYTES, 0))
                    self.sniffed = True
                first_seg = next((s for s in self.segments if s.end is None or s.pos < s.end), None)
                if first_seg is not None:
                    first = self._first_response(lambda: self.request(first_seg.pos, first_seg.end))
                    if first.status != 206 or not self._range_matches(first, first_seg.pos):
                        first.close()
                        raise _Restart("validator changed or Range ignored")
                self.resumed_bytes = sum(s.done for s in self.segments)
                _hash_file_prefix(fd, h, prefix)
                if self.progress is not None and self.resumed_bytes:
                    self.progress(self.resumed_bytes)
            else:
                try:
                    first = self._first_response(lambda: self.request(0, None, validate=False))
                    self.t_first = time.monotonic()
                except _Restart:  # 416 for "bytes=0-": an empty file; ask without Range
                    first = self._first_response(lambda: self.request(0, None, validate=False, ranged=False))
                self._learn(first)
                first_seg = self.segments[0]
            if self.expected_size is not None and self.total is not None and self.total != self.expected_size:
                if first is not None:
                    first.close()
                raise VerificationError(f"{self.url} has the wrong size", expected=f"{self.expected_size} bytes",
                                        got=f"{self.total} bytes (Content-Length)", did="Deleted the partial download")
            if not resuming and self.range_ok and self.total and self.total >= STATE_MIN_SIZE:
                with contextlib.suppress(OSError):
                    os.posix_fallocate(fd, 0, self.total)
            self.inline = (self.total is not None and self.total - prefix <= INLINE_MAX
                           and self._connections_target()[0] == 1 and len(self.segments) == 1)
            hasher = (_InlineHasher if self.inline else _Hasher)(self, fd, h, prefix)
            hasher.start()
            try:
                self._transfer(fd, hasher, first, first_seg)
            finally:
                hasher.q.put(None)
                hasher.join()
            if hasher.error is not None:
                raise hasher.error
            size = self.total if self.total is not None else self.contiguous()
            if hasher.frontier != size:
                raise SourceError(f"{self.url} ended early at byte {hasher.frontier} of {size}", url=self.url,
                                  retryable=True)
            os.fdatasync(fd)
            return size, h.hexdigest()
        except _Restart:
            raise
        except BaseException:
            # Whatever went wrong, bytes already on disk are kept for the next run.
            if self.segments and self.validator and self.range_ok and (self.new_bytes or self.resumed_bytes):
                with contextlib.suppress(Exception):
                    self.save_state()
            raise
        finally:
            os.close(fd)

    def _first_response(self, make) -> Response:
        """The first request of an attempt, retried like any other."""
        failures = 0
        while True:
            try:
                return make()
            except _Retry as r:
                failures = self._after_failure(r, failures, progressed=False)

    def _learn(self, resp: Response) -> None:
        """Validator, size and Range support from the answer to ``Range: bytes=0-``."""
        self.etag = resp.headers.get("ETag")
        self.last_modified = resp.headers.get("Last-Modified")
        total = None
        if resp.status == 206:
            cr = _content_range(resp.headers.get("Content-Range"))
            if cr is not None and cr[0] == 0:
                total = cr[2]
                self.range_ok = True
        if total is None:
            cl = resp.headers.get("Content-Length")
            total = int(cl) if cl and cl.isdigit() and resp.status == 200 else None
            self.range_ok = resp.status == 206 or resp.headers.get("Accept-Ranges", "").lower() == "bytes"
            if resp.status == 200:
                self.range_ok = False  # this stream is the whole body; segments would need a new request
        self.total = total
        self.segments = [_Segment(0, total, owned=True)]

    def _range_matches(self, resp: Response, pos: int) -> bool:
        cr = _content_range(resp.headers.get("Content-Range"))
        if cr is None or cr[0] != pos:
            return False
        if self.total is not None and cr[2] is not None and cr[2] != self.total:
            return False
        et = resp.headers.get("ETag")
        return not (et and self.etag and et != self.etag)

    # -- workers
    def _connections_target(self) -> Tuple[int, bool]:
        """(connections to open now, may grow?)"""
        if not self.range_ok or not self.total:
            return 1, False
        if self.want_connections:
            return max(1, min(self.want_connections, -(-self.total // MIN_SEGMENT))), False
        if self.total >= AUTO_SEGMENTED_MIN:
            return AUTO_START_CONNECTIONS, True
        return 1, False

    def _transfer(self, fd: int, hasher: _Hasher, first: Optional[Response], first_seg: Optional[_Segment]) -> None:
        if first_seg is None:
            return
        self.fd = fd
        self.hasher = hasher
        target, auto = self._connections_target()
        if self.resumed_bytes:
            unfinished = sum(1 for s in self.segments if s.end is None or s.pos < s.end)
            cap = self.want_connections or AUTO_START_CONNECTIONS
            target = max(target, min(unfinished, cap))
        # Work goes out in file order, in pieces, so the contiguous prefix (and the hash)
        # follows the downloads closely; idle connections steal half a piece at the tail.
        if target > 1 and self.total:
            piece = self.total // (target * PIECES_PER_CONNECTION)
            self.piece = max(MIN_SEGMENT, min(MAX_PIECE, piece - piece % (64 * 1024)))
            with self.lock:
                self._carve(first_seg)
        else:
            self.piece = None
        first_seg.owned = True
        threads: List[threading.Thread] = []
        holding = 0  # extra connections taken from the budget (the first one is download()'s)

        def spawn(seg: Optional[_Segment], resp: Optional[Response]) -> None:
            t = threading.Thread(target=self._worker, args=(seg, resp), name="metro-conn", daemon=True)
            with self.lock:
                self.active += 1
                self.peak_connections = max(self.peak_connections, self.active)
            threads.append(t)
            t.start()

        if self.inline:
            self.connections_used = 0
            self.active = 1
            self._worker(first_seg, first)
            if SHUTDOWN.is_set():
                raise KeyboardInterrupt
            if self.errors:
                raise self.errors[0]
            return
        try:
            spawn(first_seg, first)
            extra_wanted = target - 1
            last_state = last_check = time.monotonic()
            bytes_at_check, recv_at_check = 0, 0.0
            want_state = self.total is None or self.total >= STATE_MIN_SIZE
            if want_state and self.validator and self.range_ok:
                self.save_state()
            # Automatic mode: a first connection that filled its first buffer faster than a
            # capped one could (loopback, a LAN mirror) is left alone; measurement may add more.
            judge_first = auto and not self.resumed_bytes and extra_wanted > 0
            while True:
                if judge_first and self.sniffed:
                    if self.first_bps is None and time.monotonic() - self.t_first < FLUSH_EVERY_S:
                        self.wake.wait(0.01)
                        continue
                    judge_first = False
                    if self.first_bps is not None and self.first_bps >= SLOW_CONNECTION_BPS:
                        extra_wanted = 0
                        last_check, bytes_at_check, recv_at_check = time.monotonic(), self.new_bytes, self.recv_s
                if extra_wanted > 0 and self.sniffed and not judge_first:
                    got = extra_wanted if self.budget is None else self.budget.try_acquire(extra_wanted)
                    holding += got
                    extra_wanted = 0
                    for _ in range(got):
                        seg = self._next_segment()
                        if seg is None:
                            break
                        spawn(seg, None)
                    # judge the new connections from now on
                    last_check, bytes_at_check, recv_at_check = time.monotonic(), self.new_bytes, self.recv_s
                if not any(t.is_alive() for t in threads) or self.cancel.is_set():
                    break
                self.wake.wait(0.05)
                self.wake.clear()
                now = time.monotonic()
                if auto and self.sniffed and now - last_check >= 0.15:
                    rate = (self.new_bytes - bytes_at_check) / (now - last_check)
                    with self.lock:
                        active = self.active
                        left = sum(s.remaining() or 0 for s in self.segments)
                    # More connections help only when readers wait on the network: a reader
                    # that waits on the disk or the hasher would just compete for them.
                    net_bound = (self.recv_s - recv_at_check) / max(1e-6, (now - last_check) * max(1, active)) > 0.6
                    bytes_at_check, recv_at_check, last_check = self.new_bytes, self.recv_s, now
                    if active and net_bound and rate / active < SLOW_CONNECTION_BPS and rate < GROW_BELOW_BPS \
                            and left >= 2 * MIN_STEAL and active < AUTO_MAX_CONNECTIONS:
                        extra_wanted = AUTO_MAX_CONNECTIONS - active
                        auto = False
                if want_state and self.validator and self.range_ok and now - last_state >= STATE_EVERY_S:
                    last_state = now
                    self.save_state()
            for t in threads:
                t.join()
        finally:
            self.cancel.set()
            self._abort_streams()
            for t in threads:
                t.join()
            if self.budget is not None and holding:
                self.budget.release(holding)
        if SHUTDOWN.is_set():
            raise KeyboardInterrupt  # _attempt keeps the bytes and writes the resume state
        if self.errors:
            errs = self.errors
            restart = next((e for e in errs if isinstance(e, _Restart)), None)
            real = next((e for e in errs if not isinstance(e, (_Restart, _Cancelled))), None)
            if real is not None:
                raise real
            if restart is not None:
                raise restart
        if hasher.error is not None:
            raise hasher.error

    def _abort_streams(self) -> None:
        """Wake readers blocked in recv so a cancel takes effect at once."""
        with self.lock:
            streams = list(self.streams)
        for resp in streams:
            resp.abort()

    def _carve(self, seg: _Segment) -> _Segment:
        """Under the lock: cut ``seg`` to one piece; the rest becomes a new unowned segment."""
        piece = self.piece
        if piece and seg.end is not None and seg.end - seg.pos > piece + piece // 2:
            cut = seg.pos + piece
            self.segments.append(_Segment(cut, seg.end))
            seg.end = cut
            self.segments.sort(key=lambda s: s.start)
        return seg

    def _take_unowned(self) -> Optional[_Segment]:
        """(self.lock held) The first unowned unfinished segment, now owned."""
        for seg in self.segments:
            if not seg.owned and seg.end is not None and seg.pos < seg.end:
                seg.owned = True
                return seg
        return None

    def _next_segment(self) -> Optional[_Segment]:
        """The next piece in file order, else half of the largest remaining one (the tail)."""
        with self.lock:
            seg = self._take_unowned()
            if seg is not None:
                return self._carve(seg)
            best = max((s for s in self.segments if s.end is not None), key=lambda s: s.end - s.pos, default=None)
            if best is None or best.end - best.pos < 2 * MIN_STEAL:
                return None
            mid = best.pos + (best.end - best.pos) // 2
            mid -= mid % (64 * 1024)
            new = _Segment(mid, best.end, owned=True)
            best.end = mid
            self.segments.append(new)
            self.segments.sort(key=lambda s: s.start)
            return new

    def _worker(self, seg: Optional[_Segment], resp: Optional[Response]) -> None:
        size = BUF_SIZE if self.total is None else max(1, min(BUF_SIZE, self.total))
        free = _BufferPool(size, BUFS_PER_CONNECTION)
        counted = False
        try:
            while not self.cancel.is_set():
                if seg is None:
                    seg = self._next_segment()
                    if seg is None:
                        return
                if not counted:
                    counted = True
                    with self.lock:
                        self.connections_used += 1
                self._run_segment(seg, resp, free)
                resp = None
                seg = None
        except BaseException as exc:
            with self.lock:
                self.errors.append(exc)
            self.cancel.set()
        finally:
            with self.lock:
                self.active -= 1
            self.wake.set()

    def _after_failure(self, r: _Retry, failures: int, *, progressed: bool) -> int:
        """Count a failure, raise if out of retries, else sleep the backoff; returns the new count."""
        if r.stall:
            with self.lock:
                self.stalls += 1
                stalls = self.stalls
            if stalls > STALL_RETRIES:
                raise StalledError(
                    f"{self.url} stalled: below {self.settings.stall_bytes_per_s} B/s for "
                    f"{self.settings.stall_seconds:g} s, {stalls} times", url=self.url, retryable=True,
                    did="Kept the partial download for resume",
                    next_command="run the same command again later, or use `--mirror BASE`")
        failures = 1 if progressed else failures + 1
        if failures > self.settings.retries:
            if r.status is not None:
                raise status_error(self.url, r.status) from None
            raise SourceError(f"{self.url} failed {failures} times in a row: {r.why}", url=self.url, retryable=True,
                              did="Kept the partial download for resume",
                              next_command="run the same command again (it resumes), or use `--mirror BASE`") from None
        if progressed and r.status is None:
            return failures  # a cut after progress: reconnect at once, where the bytes stopped
        if self.cancel.wait(backoff_delay(failures, self.settings, r.retry_after)):
            raise _Cancelled()
        return failures

    def _run_segment(self, seg: _Segment, resp: Optional[Response], free) -> None:
        failures = 0
        while not self.cancel.is_set():
            end = seg.end
            if end is not None and seg.pos >= end:
                return
            before = seg.done
            try:
                if resp is None:
                    resp = self.request(seg.pos, end)
                    if resp.status != 206 or not self._range_matches(resp, seg.pos):
                        resp.close()
                        if seg.pos == 0 and not self.range_ok and len(self.segments) == 1:
                            raise _Restart("restart from 0 on a server without Range")
                        raise _Restart("validator changed or Range ignored")
                eof = self._stream(resp, seg, free)
                resp = None
                if seg.end is None and eof:
                    with self.lock:
                        seg.end = seg.pos
                        self.total = seg.pos
                    return
                if seg.end is not None and seg.pos >= seg.end:
                    return
                if eof:
                    raise _Retry(f"connection closed at byte {seg.pos}")
            except _Retry as r:
                if resp is not None:
                    resp.close()
                    resp = None
                if not self.range_ok:
                    raise _Restart("cut on a server without Range") from None
                failures = self._after_failure(r, failures, progressed=seg.done > before)

    def _stream(self, resp: Response, seg: _Segment, free) -> bool:
        """Copy the body into the part file until the segment ends; True at EOF."""
        fb = resp.fast_body()
        fast = fb is not None
        if fast:
            fp, body_left = fb
        stall_s = float(self.settings.stall_seconds)
        min_bytes = self.settings.stall_bytes_per_s * stall_s
        win_t, win_bytes = time.monotonic(), 0
        clean = False
        with self.lock:
            self.streams.add(resp)
        if self.cancel.is_set():
            self._abort_streams()
        try:
            while True:
                end = seg.end
                limit = BUF_SIZE if end is None else min(BUF_SIZE, end - seg.pos)
                if fast:
                    limit = min(limit, body_left)
                if limit <= 0:
                    clean = fast and body_left == 0
                    return clean  # True: this response's body is complete
                if self.cancel.is_set():
                    raise _Cancelled()
                buf = free.get()
                view = memoryview(buf)
                filled, eof = 0, False
                t_buf = time.monotonic()
                pos = seg.pos
                try:
                    while filled < limit:
                        t_recv = time.perf_counter()
                        if fast:
                            n = fp.readinto1(view[filled:limit])
                        else:
                            n = resp.readinto(view[filled:limit])
                        self.recv_s += time.perf_counter() - t_recv
                        if not n:
                            eof = True
                            break
                        filled += n
                        win_bytes += n
                        now = time.monotonic()
                        if now - win_t >= stall_s:
                            if win_bytes < min_bytes:
                                raise _Retry("too slow", stall=True)
                            win_t, win_bytes = now, 0
                        if now - t_buf >= FLUSH_EVERY_S and filled >= 64 * 1024:
                            break
                except _Retry:
                    self._commit(seg, buf, filled, pos, free, eof=False)
                    raise
                except (socket.timeout, TimeoutError) as exc:
                    self._commit(seg, buf, filled, pos, free, eof=False)
                    raise _Retry(f"no bytes for {stall_s:g} s: {exc}", stall=True) from None
                except net_errors() as exc:
                    self._commit(seg, buf, filled, pos, free, eof=False)
                    raise _Retry(f"connection error: {exc}") from None
                if fast:
                    body_left -= filled
                self._commit(seg, buf, filled, pos, free, eof=eof or (fast and body_left == 0))
                if eof:
                    clean = not fast  # http.client saw the body's end (chunked, or until close)
                    return True
        finally:
            with self.lock:
                self.streams.discard(resp)
            if clean:
                resp.release()   # body complete: keep-alive for the next request
            else:
                resp.close()

    def _commit(self, seg: _Segment, buf: bytearray, n: int, pos: int, free, *, eof: bool) -> None:
        if n <= 0:
            free.put(buf)
            return
        view = memoryview(buf)[:n]
        if pos == 0 and self.first_bps is None and self.t_first:
            self.first_bps = n / max(1e-6, time.monotonic() - self.t_first)
            self.wake.set()
        if not self.sniffed and pos == 0:
            if n < SNIFF_BYTES and not eof:
                free.put(buf)   # too little to judge: the retry fetches it again
                return
            try:
                self.sniff(bytes(view[: max(SNIFF_BYTES, min(n, 64 * 1024))]))
            except StructuralError:
                free.put(buf)
                raise
            self.sniffed = True
            self.wake.set()
        off = 0
        while off < n:
            off += os.pwrite(self.fd, view[off:], pos + off)
        with self.lock:
            if seg.start + seg.done == pos:
                cap = n if seg.end is None else min(n, seg.end - pos)
                seg.done += max(0, cap)
            self.new_bytes += n
            self.since_writeback += n
            kick = self.since_writeback >= WRITEBACK_EVERY
            if kick:
                self.since_writeback = 0
        if self.progress is not None:
            self.progress(n)
        if kick:
            _start_writeback(self.fd)
        if not self.hasher.submit(pos, buf, n, free):
            free.put(buf)


def _content_range(value: Optional[str]) -> Optional[Tuple[int, int, Optional[int]]]:
    """``bytes a-b/total`` -> (a, b, total or None)."""
    if not value or not value.startswith("bytes "):
        return None
    try:
        rng, _, total = value[6:].partition("/")
        a, _, b = rng.partition("-")
        return int(a), int(b), (None if total.strip() == "*" else int(total))
    except ValueError:
        return None


def _hash_file_prefix(fd: int, h, upto: int) -> None:
    buf = bytearray(BUF_SIZE)
    view = memoryview(buf)
    pos = 0
    while pos < upto:
        k = os.preadv(fd, [view[: min(BUF_SIZE, upto - pos)]], pos)
        if k <= 0:
            raise OSError(f"short read at {pos} while hashing the resumed prefix")
        h.update(view[:k])
        pos += k


def _discard(*paths: Path) -> None:
    for p in paths:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(p)


def download(url: str, part: Path, state: Path, *, settings: Settings,
             expected_size: Optional[int] = None, expected_sha256: Optional[str] = None,
             connections: Optional[int] = None,
             budget: Optional[ConnectionBudget] = None,
             sniff: Optional[Callable[[bytes], None]] = None,
             progress: Optional[Callable[[int], None]] = None,
             session: Optional[object] = None) -> TransferResult:
    """Download ``url`` into ``part`` (resuming from ``state`` when it matches), hash and fsync it.

    ``connections``: None = automatic (one connection; 8 at once when the file is
    >= 32 MiB and the server honours Range, up to 16 when each is capped).  ``sniff`` is called once
    with the first >= 4096 bytes (or the whole body if smaller) before they are
    written; a StructuralError from it aborts.  ``progress`` gets byte increments
    (resumed bytes once, first).  Raises VerificationError on a size or sha256
    mismatch, SourceError/SourceDeadError/StalledError when the source fails; the
    partial file and its state are kept for resume unless the bytes are wrong.
    """
    t0 = time.monotonic()
    part, state = Path(part), Path(state)
    part.parent.mkdir(parents=True, exist_ok=True)
    job = _Job(url, part, state, settings, expected_size=expected_size, connections=connections, budget=budget,
               sniff=sniff, progress=progress, session=session)
    if budget is not None:
        budget.acquire_one()
    try:
        size, sha = job.run()
    except (VerificationError, StructuralError):
        _discard(part, state)
        raise
    finally:
        if budget is not None:
            budget.release(1)
    if expected_size is not None and size != expected_size:
        _discard(part, state)
        raise VerificationError(f"{url} has the wrong size", expected=f"{expected_size} bytes", got=f"{size} bytes",
                                did="Deleted the partial download", url=url)
    if expected_sha256 is not None and sha != expected_sha256.lower():
        _discard(part, state)
        raise VerificationError(f"{url} has the wrong sha256", expected=expected_sha256.lower(), got=sha,
                                did="Deleted the partial download", url=url,
                                next_command="check the manifest's sha256 or try another source with `--mirror BASE`")
    _discard(state)
    return TransferResult(url=url, size=size, sha256=sha, etag=job.etag, last_modified=job.last_modified,
                          resumed_bytes=job.resumed_bytes, connections=max(1, job.connections_used),
                          seconds=time.monotonic() - t0)


def _main(argv: Optional[List[str]] = None) -> int:
    """``python -m metro_assets.transfer URL DEST [--connections N] [--sha256 HEX]`` (benchmarks, debugging)."""
    import argparse
    import sys

    from metro_assets.settings import resolve
    from metro_assets.store import Store

    ap = argparse.ArgumentParser(prog="python -m metro_assets.transfer")
    ap.add_argument("pairs", nargs="+", help="URL DEST [URL DEST ...]")
    ap.add_argument("--connections", type=int, default=None)
    ap.add_argument("--sha256", action="append", default=[], help="expected sha256 per pair, in order")
    ap.add_argument("--jobs", type=int, default=1)
    args = ap.parse_args(argv)
    if len(args.pairs) % 2:
        ap.error("expected URL DEST pairs")
    pairs = list(zip(args.pairs[0::2], args.pairs[1::2]))
    settings = resolve(root=Path.cwd())

    def one(i_pair):
        i, (u, d) = i_pair
        dest = Path(d)
        exp = args.sha256[i] if i < len(args.sha256) else None
        res = download(u, Store.part_path(dest), Store.state_path(dest), settings=settings,
                       expected_sha256=exp, connections=args.connections)
        os.replace(Store.part_path(dest), dest)
        return res

    if args.jobs > 1:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(args.jobs) as ex:
            results = list(ex.map(one, enumerate(pairs)))
    else:
        results = [one(p) for p in enumerate(pairs)]
    if len(results) == 1:
        r = results[0]
        sys.stdout.write(f"{r.sha256}  {r.size} bytes  {r.seconds:.3f} s  {r.connections} conn  resumed {r.resumed_bytes}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
