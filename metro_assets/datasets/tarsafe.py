"""Which tar members we accept, and where each one lands.

Our own checks, identical on every Python version (``tarfile``'s
``filter="data"`` strips a leading ``/``, clears setuid bits and lets a later
duplicate win; we refuse all three).  A member is refused when its name is
absolute or has a ``..`` component, when it is a link (symbolic or hard), a
device, a FIFO or any other special type, when it carries setuid, setgid or
sticky bits, when its path was already used (or collides with a directory /
file of the same path), or when it lies outside the archive's root.

Accepted layouts (decided by the first member that names something):
``<name>/...``, ``./<name>/...``, ``datasets/<name>/...`` and flat (no common
root).  All of them land at ``datasets/<name>/``.
"""
from __future__ import annotations

import tarfile
from dataclasses import dataclass, field
from typing import Optional, Sequence, Set, Tuple

from metro_assets.errors import StructuralError

FILE, DIR = "file", "dir"

_FILE_TYPES = (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE)
_KIND_NAMES = {
    tarfile.SYMTYPE: "a symbolic link",
    tarfile.LNKTYPE: "a hard link",
    tarfile.CHRTYPE: "a character device",
    tarfile.BLKTYPE: "a block device",
    tarfile.FIFOTYPE: "a FIFO",
    tarfile.GNUTYPE_SPARSE: "a GNU sparse file",
}

LAYOUTS = ("rooted", "datasets-rooted", "flat")


class UnsafeMember(StructuralError):
    """A tar member that we refuse to extract.  ``member`` names it."""


def refuse(member: str, why: str, *, archive: str = "") -> UnsafeMember:
    where = f" in {archive}" if archive else ""
    return UnsafeMember(
        f"Refused tar member {member!r}{where}: {why}",
        expected="only regular files and directories below the dataset's own folder",
        did="Nothing was written outside the staging folder, which was removed",
        next_command="report the archive to its publisher; do not unpack it with plain `tar`",
        member=member, reason=why, archive=archive)


@dataclass
class MemberPolicy:
    """Stateful checker: call :meth:`admit` for every member in archive order.

    ``names``: the accepted top-level folder names (the dataset's directory name
    and the archive's stem).  ``admit`` returns ``(kind, rel_parts)`` where
    ``rel_parts`` is the path below ``datasets/<name>/`` (empty for the root
    folder itself), or raises :class:`UnsafeMember`.
    """

    names: Sequence[str]
    archive: str = ""
    layout: Optional[str] = None
    files: Set[Tuple[str, ...]] = field(default_factory=set)
    dirs: Set[Tuple[str, ...]] = field(default_factory=set)        # explicit and implied
    explicit_dirs: Set[Tuple[str, ...]] = field(default_factory=set)

    def admit(self, name: str, type_: bytes, mode: int) -> Tuple[str, Tuple[str, ...]]:
        shown = name
        if not name or "\x00" in name:
            raise refuse(shown, "empty or NUL in the name", archive=self.archive)
        if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
            raise refuse(shown, "absolute path", archive=self.archive)
        parts = tuple(p for p in name.split("/") if p not in ("", "."))
        if ".." in parts:
            raise refuse(shown, "'..' component (path traversal)", archive=self.archive)
        if type_ in _KIND_NAMES:
            raise refuse(shown, f"{_KIND_NAMES[type_]} (only regular files and directories are allowed)", archive=self.archive)
        if type_ in _FILE_TYPES:
            kind = FILE
        elif type_ == tarfile.DIRTYPE:
            kind = DIR
        else:
            raise refuse(shown, f"unsupported member type {type_!r}", archive=self.archive)
        if mode & 0o7000:
            bits = [b for b, m in (("setuid", 0o4000), ("setgid", 0o2000), ("sticky", 0o1000)) if mode & m]
            raise refuse(shown, f"{'/'.join(bits)} bit set (mode {mode:o})", archive=self.archive)
        rel = self._strip_root(shown, parts, kind)
        if not rel:
            if kind == FILE:
                raise refuse(shown, "a file where the dataset's folder should be", archive=self.archive)
            return DIR, rel
        self._claim(shown, rel, kind)
        return kind, rel

    # -- layout
    def _strip_root(self, shown: str, parts: Tuple[str, ...], kind: str) -> Tuple[str, ...]:
        if self.layout is None:
            if not parts:
                return ()  # "./" says nothing about the layout
            if parts[0] in self.names and (len(parts) > 1 or kind == DIR):
                self.layout = "rooted"
            elif parts[0] == "datasets" and (len(parts) == 1 and kind == DIR or len(parts) > 1 and parts[1] in self.names):
                self.layout = "datasets-rooted"
            else:
                self.layout = "flat"
        if self.layout == "flat":
            return parts
        prefix = 1 if self.layout == "rooted" else 2
        head = parts[:prefix]
        if self.layout == "rooted":
            ok = len(head) == 1 and head[0] in self.names
        else:
            ok = head[:1] == ("datasets",) and (len(head) == 1 or head[1] in self.names)
            if ok and len(parts) == 1:
                return ()  # the bare "datasets/" folder
        if not ok or (len(parts) < prefix and kind == FILE):
            root = f"{parts[0]}/" if self.layout == "rooted" else "datasets/<name>/"
            raise refuse(shown, f"outside the archive's root folder {root} (layout {self.layout})", archive=self.archive)
        return parts[prefix:]

    # -- duplicates and collisions
    def _claim(self, shown: str, rel: Tuple[str, ...], kind: str) -> None:
        for i in range(1, len(rel)):
            parent = rel[:i]
            if parent in self.files:
                raise refuse(shown, f"its parent {'/'.join(parent)!r} is a file", archive=self.archive)
        if rel in self.files or rel in self.explicit_dirs or (kind == FILE and rel in self.dirs):
            raise refuse(shown, "duplicate member (the same path appears twice)", archive=self.archive)
        for i in range(1, len(rel)):
            self.dirs.add(rel[:i])
        if kind == FILE:
            self.files.add(rel)
        else:
            self.dirs.add(rel)
            self.explicit_dirs.add(rel)

    def restore(self, layout: Optional[str], files: Sequence[str], dirs: Sequence[str]) -> None:
        """Rebuild the state from a resume checkpoint (paths below the dataset folder)."""
        self.layout = layout
        for d in dirs:
            self._claim(d, tuple(d.split("/")), DIR)
        for f in files:
            self._claim(f, tuple(f.split("/")), FILE)
