"""The root on disk: final paths, temp/partial files, the lockfile, stamps and locks.

Layout inside a root::

    metro-assets.lock             recorded identities (trust on first use, imports)
    .metro-assets/stamps.json     (size, mtime_ns, inode) -> sha256 cache for fast verify
    .metro-assets/locks/<id>.lock per-asset advisory locks
    <dir>/.<name>.metro-part      bytes of an unfinished download (never a final path)
    <dir>/.<name>.metro-part.json its resume state (URL, validator, bytes/segments done)

Correctness never depends on the locks: every final path is written by
``os.replace`` of a fully verified, fsynced temp file, and the JSON files are
replaced atomically too.  Locks only prevent duplicate work.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Tuple

from metro_assets.settings import LOCKFILE_NAME, STATE_DIR_NAME

PART_SUFFIX = ".metro-part"
STATE_SUFFIX = ".metro-part.json"


def now_iso() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes, *, durable: bool = True) -> None:
    """Write ``data`` to ``path`` so that readers see the old or the new file, never a mix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
        if durable:
            fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_write_json(path: Path, obj: Any, *, durable: bool = True) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode(), durable=durable)


def read_json(path: Path, default: Any) -> Any:
    try:
        with open(path, "rb") as f:
            return json.loads(f.read() or b"null") or default
    except FileNotFoundError:
        return default
    except (ValueError, OSError):
        # A damaged cache is not fatal: stamps and state are rebuilt from the data.
        return default


@contextlib.contextmanager
def file_lock(path: Path, *, timeout: Optional[float] = None, shared: bool = False) -> Iterator[bool]:
    """An advisory ``flock`` on ``path``.  Yields True if we had to wait for it.

    With ``timeout=0`` it raises BlockingIOError instead of waiting.
    """
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    waited = False
    try:
        mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            if timeout == 0:
                raise BlockingIOError(f"{path} is locked by another process") from None
            waited = True
            deadline = None if timeout is None else time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(fd, mode | fcntl.LOCK_NB)
                    break
                except OSError:
                    if deadline is not None and time.monotonic() > deadline:
                        raise TimeoutError(f"timed out waiting for the lock {path}") from None
                    time.sleep(0.05)
        yield waited
    finally:
        os.close(fd)


@dataclass(frozen=True)
class Identity:
    """What an asset's bytes must be: from the manifest, else the lockfile."""

    size: Optional[int]
    sha256: Optional[str]
    origin: str  # "manifest" | "lockfile" | "unknown"


class Store:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    # ------------------------------------------------------------------ paths
    @property
    def lockfile(self) -> Path:
        return self.root / LOCKFILE_NAME

    @property
    def state_dir(self) -> Path:
        return self.root / STATE_DIR_NAME

    def dest(self, asset) -> Path:
        return asset.dest(self.root)

    @staticmethod
    def part_path(dest: Path) -> Path:
        return dest.parent / f".{dest.name}{PART_SUFFIX}"

    @staticmethod
    def state_path(dest: Path) -> Path:
        return dest.parent / f".{dest.name}{STATE_SUFFIX}"

    def lock_path(self, asset_id: str) -> Path:
        return self.state_dir / "locks" / f"{asset_id}.lock"

    # ------------------------------------------------------------------ locks
    @contextlib.contextmanager
    def asset_lock(self, asset_id: str, *, timeout: Optional[float] = None) -> Iterator[bool]:
        with file_lock(self.lock_path(asset_id), timeout=timeout) as waited:
            yield waited

    # ------------------------------------------------------------------ lockfile
    def lock_entries(self) -> Dict[str, Dict[str, Any]]:
        data = read_json(self.lockfile, {})
        return dict(data.get("assets", {})) if isinstance(data, dict) else {}

    def lock_entry(self, asset_id: str) -> Optional[Dict[str, Any]]:
        return self.lock_entries().get(asset_id)

    def record(self, asset_id: str, *, path: str, size: int, sha256: str, source: str, how: str,
               etag: Optional[str] = None, last_modified: Optional[str] = None, **extra: Any) -> Dict[str, Any]:
        """Record an asset's identity in the lockfile (read-modify-write under a lock)."""
        entry = {"path": path, "size": size, "sha256": sha256, "source": source, "how": how,
                 "etag": etag, "last_modified": last_modified, "recorded_at": now_iso()}
        entry.update(extra)
        self.root.mkdir(parents=True, exist_ok=True)
        with file_lock(self.state_dir / "lockfile.lock"):
            data = read_json(self.lockfile, {})
            if not isinstance(data, dict):
                data = {}
            data.setdefault("version", 1)
            data.setdefault("assets", {})[asset_id] = entry
            atomic_write_json(self.lockfile, data)
        return entry

    def forget(self, asset_id: str) -> None:
        with file_lock(self.state_dir / "lockfile.lock"):
            data = read_json(self.lockfile, {})
            if isinstance(data, dict) and asset_id in data.get("assets", {}):
                del data["assets"][asset_id]
                atomic_write_json(self.lockfile, data)

    def identity(self, asset, entries: Optional[Dict[str, Dict[str, Any]]] = None) -> Identity:
        if asset.sha256:
            return Identity(asset.size, asset.sha256, "manifest")
        entry = (entries if entries is not None else self.lock_entries()).get(asset.id)
        if entry and entry.get("sha256") and entry.get("path") == asset.path:
            return Identity(entry.get("size", asset.size), entry["sha256"], "lockfile")
        return Identity(asset.size, None, "unknown")

    # ------------------------------------------------------------------ stamps
    @property
    def stamps_path(self) -> Path:
        return self.state_dir / "stamps.json"

    def load_stamps(self) -> Dict[str, list]:
        data = read_json(self.stamps_path, {})
        return data if isinstance(data, dict) else {}

    @staticmethod
    def stat_key(st: os.stat_result) -> Tuple[int, int, int]:
        return (st.st_size, st.st_mtime_ns, st.st_ino)

    def stamped_sha(self, path: Path, st: os.stat_result, stamps: Optional[Dict[str, list]] = None) -> Optional[str]:
        """The sha256 recorded for ``path`` if size, mtime_ns and inode are unchanged."""
        stamps = self.load_stamps() if stamps is None else stamps
        rel = self.rel(path)
        rec = stamps.get(rel)
        if rec and tuple(rec[:3]) == self.stat_key(st):
            return rec[3]
        return None

    def put_stamps(self, updates: Dict[Path, str]) -> None:
        """Stamp files we have just hashed (or written ourselves)."""
        if not updates:
            return
        with file_lock(self.state_dir / "stamps.lock"):
            stamps = self.load_stamps()
            for path, sha in updates.items():
                try:
                    st = os.stat(path)
                except FileNotFoundError:
                    continue
                stamps[self.rel(path)] = [*self.stat_key(st), sha]
            atomic_write_json(self.stamps_path, stamps, durable=False)

    def drop_stamp(self, path: Path) -> None:
        with file_lock(self.state_dir / "stamps.lock"):
            stamps = self.load_stamps()
            if stamps.pop(self.rel(path), None) is not None:
                atomic_write_json(self.stamps_path, stamps, durable=False)

    def rel(self, path: Path) -> str:
        try:
            return Path(path).relative_to(self.root).as_posix()
        except ValueError:
            return str(path)

    # ------------------------------------------------------------------ placing files
    def place(self, tmp: Path, dest: Path, sha256: str, *, batch: bool = False) -> None:
        """Move a verified, fsynced temp file to its final path atomically and stamp it.

        ``batch=True`` leaves the directory fsync and the stamp to the caller
        (fetch does both once per run, directories first: a stamp never vouches
        for a rename a crash could undo, and a lost rename only means the file
        is fetched again)."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, dest)
        if not batch:
            fsync_dir(dest.parent)
            self.put_stamps({dest: sha256})

    def commit_placed(self, placed: Dict[Path, str]) -> None:
        """Finish a batch of ``place(..., batch=True)``: fsync each directory once, then stamp."""
        for d in {p.parent for p in placed}:
            fsync_dir(d)
        self.put_stamps(placed)
