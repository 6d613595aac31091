"""``metro-assets import``: put license-gated body models where METRO expects them.

Accepts what users have: the official archives, loose ``.pkl`` files, or a
directory (an old METRO checkout, a Downloads folder).  Candidates are found
by name (case-insensitively; ``__MACOSX`` / ``._*`` AppleDouble decoys are
skipped), then each one is loaded through the restricted loader, checked
against the official layout and classified by content
(:mod:`metro_assets.bodymodels`) — never by name alone.  A file goes to its
asset's METRO path through a temp file beside it (written, fsynced,
re-hashed, ``os.replace``), is stamped, and recorded in the lockfile with
``how="import"`` and ``source=<archive>!<member>`` or the file path.

Clean copies (``--clean``)
--------------------------
Without ``--clean`` the METRO path holds the **official bytes** and the
lockfile's ``sha256`` is theirs.

With ``--clean`` the METRO path holds the **chumpy-free copy** (same keys,
plain numpy/scipy, Python-2-compatible protocol 2), so upstream METRO runs on
a modern stack without chumpy.  The lockfile's ``sha256``/``size`` describe
that clean file — so ``verify`` checks exactly what sits at the path — and
the entry adds ``clean: true``, ``original_sha256``, ``original_size`` and
``original`` (``.metro-assets/originals/<original_sha256>.pkl``, relative to
the root), where the official bytes are kept unchanged.  The clean copy is
deterministic, so importing the same archive again is "already present".
A file that is already chumpy-free is placed as it is.

``export smplx`` (:mod:`metro_assets.export`) always writes clean files.

Whole trees (an old METRO or MeshGraphormer checkout)
-----------------------------------------------------
The other catalog assets (checkpoints, HRNet weights and configs, support
data, prediction zips; never datasets or license-gated ones) are found in
the same walk: by their catalog path below the given directory (also when it
is the parent of ``MeshTransformer/``), by file name (case-insensitively, for
flat folders), and by sha256 where the manifest or the lockfile knows one
(any file of exactly such a size is hashed).  A pinned asset must match its
sha256.  One without a known sha256 must pass the structural check of its
kind (0-byte leftovers and HTML pages are skipped with a note) and, for
checkpoints, the deep check when torch is installed (``deep=None``: on when
torch is importable) -- a body checkpoint under the hand name is skipped,
not imported; it is then recorded in the lockfile (trust on first use,
``how="import"``, ``source=<the user's file>``).

Files are hard-linked into the root when the filesystem allows it
(``link=True``), else copied (temp file beside the destination, hashed while
copied, fsynced, ``os.replace``).  A hard link shares its bytes with the
user's file: metro-assets never writes into a final path (every change is a
new file renamed over it), so the user's file is never modified; editing the
user's file in place does change the linked one, which ``verify`` then
reports (its stamp holds the inode and mtime).  ``--copy`` keeps them apart.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import re
import secrets
import stat as statmod
import tempfile
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from metro_assets.bodymodels import ASSET_VARIANTS, BodyModelInfo, clean_bytes, inspect_bytes, variant_from_name
from metro_assets.checks import SNIFF_BYTES, check_file, deep_check, looks_like_markup
from metro_assets.errors import MetroAssetsError, UsageError
from metro_assets.hashing import copy_with_sha256, sha256_file
from metro_assets.manifest import Asset, Catalog
from metro_assets.settings import STATE_DIR_NAME
from metro_assets.store import Store, atomic_write_bytes

__all__ = ["import_paths", "ImportResult", "Imported", "Skipped", "Present", "manual_instructions",
           "find_candidates", "Candidate", "ORIGINALS_DIR", "find_tree_candidates", "TreeCandidate",
           "ZERO_BYTE_NOTE", "HTML_NOTE"]

ORIGINALS_DIR = f"{STATE_DIR_NAME}/originals"
# Names worth opening: official, METRO and smplx spellings (SMPLH_* decoys match too and are refused by content).
MODEL_NAME = re.compile(r"(basicmodel|smpl|mano).*\.pkl$", re.IGNORECASE)
SKIP_DIRS = {"__macosx", ".git", ".hg", ".svn", "node_modules", "__pycache__", STATE_DIR_NAME}
MAX_CANDIDATE_BYTES = 512 << 20   # the largest official body model is ~39 MB
# Kinds the tree import handles (body models go through their own content-based path).
NOT_TREE_KINDS = ("dataset", "body-model")
ZERO_BYTE_NOTE = "0-byte leftover of the old wget script"
HTML_NOTE = "an HTML error page saved as a file"
MATCH_RANK = {"path": 0, "name": 1, "hash": 2}


# --------------------------------------------------------------------------- results

@dataclass(frozen=True)
class Imported:
    asset_id: str
    path: str            # relative to the root
    source: str
    sha256: str
    size: int
    model: str           # e.g. "SMPL male (from metadata), chumpy"
    clean: bool = False
    original_sha256: Optional[str] = None
    note: str = ""
    how: str = "copy"          # hardlink | copy (body models are always written: copy)
    matched: str = "content"   # path | name | hash | content (body models: by what they hold)
    identity: str = ""         # manifest | lockfile | first-use (recorded now) | content


@dataclass(frozen=True)
class Present:
    asset_id: str
    path: str
    source: str
    sha256: str
    note: str = ""


@dataclass(frozen=True)
class Skipped:
    source: str
    reason: str
    asset_id: Optional[str] = None   # the asset it was taken for, when it was identified


@dataclass(frozen=True)
class ImportResult:
    imported: Tuple[Imported, ...]
    skipped: Tuple[Skipped, ...]
    already_present: Tuple[Present, ...]
    root: str = ""

    @property
    def placed(self) -> Dict[str, str]:
        """asset id -> path for everything now in place (imported or present)."""
        out = {p.asset_id: p.path for p in self.already_present}
        out.update({i.asset_id: i.path for i in self.imported})
        return out

    @property
    def ok(self) -> bool:
        return bool(self.imported or self.already_present)

    def to_json(self) -> dict:
        return {"ok": self.ok, "root": self.root,
                "imported": [asdict(i) for i in self.imported],
                "already_present": [asdict(p) for p in self.already_present],
                "skipped": [asdict(s) for s in self.skipped]}


# --------------------------------------------------------------------------- candidates

@dataclass(frozen=True)
class Candidate:
    source: str                    # "archive.zip!member" or a file path
    name: str                      # base name, for name hints
    size: int
    read: Callable[[], bytes]
    explicit: bool = False         # named on the command line: tried whatever its name


def _is_appledouble(name: str) -> bool:
    p = PurePosixPath(name)
    return p.name.startswith("._") or any(part.lower() == "__macosx" for part in p.parts)


def _zip_candidates(path: Path, skipped: List[Skipped]) -> List[Candidate]:
    out: List[Candidate] = []
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        skipped.append(Skipped(str(path), f"not a readable zip archive ({exc})"))
        return out
    with zf:
        for info in zf.infolist():
            if info.is_dir() or not info.filename.lower().endswith(".pkl"):
                continue
            src = f"{path}!{info.filename}"
            if _is_appledouble(info.filename):
                skipped.append(Skipped(src, "macOS resource fork (__MACOSX/._*, AppleDouble) decoy, not a model"))
                continue
            if not MODEL_NAME.search(PurePosixPath(info.filename).name):
                continue
            out.append(Candidate(src, PurePosixPath(info.filename).name, info.file_size,
                                 lambda p=path, n=info.filename: _read_member(p, n)))
    return out


def _read_member(path: Path, member: str) -> bytes:
    with zipfile.ZipFile(path) as zf:
        return zf.read(member)


def _file_candidate(path: Path, explicit: bool) -> Candidate:
    return Candidate(str(path), path.name, path.stat().st_size, path.read_bytes, explicit)


def _walk(d: Path, excluded: Sequence[Path]) -> Iterable[Path]:
    """Files below ``d``, sorted, without VCS/state folders or ``excluded`` (the root itself)."""
    for dirpath, dirnames, filenames in os.walk(d):
        dirnames[:] = sorted(n for n in dirnames if n.lower() not in SKIP_DIRS
                             and Path(dirpath, n).resolve() not in excluded)
        for fn in sorted(filenames):
            yield Path(dirpath, fn)


def _existing(raw: Path) -> Path:
    p = Path(raw).expanduser()
    if not p.exists():
        raise UsageError(f"No such file or directory: {p}",
                         expected="an archive, a file or a directory (an old METRO checkout, a Downloads folder)",
                         next_command="metro-assets import ~/Downloads/SMPL_python_v.1.0.0.zip ~/old/MeshTransformer")
    return p


def find_candidates(paths: Sequence[Path], *, exclude: Sequence[Path] = (),
                    skip_files: Iterable[Path] = ()) -> Tuple[List[Candidate], List[Skipped]]:
    """Every body-model candidate under ``paths`` (files, archives, directories).

    ``skip_files`` (resolved paths) are left out: the tree import took them.
    """
    cands: List[Candidate] = []
    skipped: List[Skipped] = []
    excluded = [Path(e).resolve() for e in exclude]
    taken = set(skip_files)

    for raw in paths:
        p = _existing(raw)
        if p.resolve() in taken:
            continue
        if p.is_dir():
            for f in _walk(p, excluded):
                if f.resolve() in taken:
                    continue
                low = f.name.lower()
                if low.endswith(".zip"):
                    cands.extend(_zip_candidates(f, skipped))
                elif low.endswith(".pkl"):
                    if _is_appledouble(f.name):
                        skipped.append(Skipped(str(f), "macOS resource fork (._*, AppleDouble) decoy, not a model"))
                    elif MODEL_NAME.search(f.name):
                        cands.append(_file_candidate(f, False))
        elif zipfile.is_zipfile(p):
            cands.extend(_zip_candidates(p, skipped))
        elif _is_appledouble(p.name):
            skipped.append(Skipped(str(p), "macOS resource fork (._*, AppleDouble) decoy, not a model"))
        else:
            cands.append(_file_candidate(p, True))
    return cands, skipped


# --------------------------------------------------------------------------- tree candidates

@dataclass(frozen=True)
class TreeCandidate:
    """A file taken for a catalog asset (checkpoint, HRNet, support data, predictions)."""

    asset_id: str
    path: Path
    size: int
    matched: str                   # "path" | "name" | "hash"
    sha256: Optional[str] = None   # known when it was hashed while being identified
    note: str = ""


def tree_assets(catalog: Catalog) -> List[Asset]:
    """The assets a tree import may place: everything but datasets and license-gated body models."""
    return [a for a in catalog.assets if a.kind not in NOT_TREE_KINDS and not a.manual]


class _Identifier:
    """Which tree asset a file is: by catalog path, by name, by a known sha256."""

    def __init__(self, assets: Sequence[Asset], store: Store, entries: Dict[str, dict]) -> None:
        self.by_path = {a.path.lower(): a for a in assets}
        self.by_name: Dict[str, Asset] = {}
        for a in assets:
            self.by_name.setdefault(PurePosixPath(a.path).name.lower(), a)
        self.by_sha: Dict[str, Asset] = {}
        self.sizes = set()
        for a in assets:
            ident = store.identity(a, entries)
            if ident.sha256 and ident.size:
                self.by_sha.setdefault(ident.sha256, a)
                self.sizes.add(ident.size)

    def identify(self, f: Path, size: int) -> Optional[TreeCandidate]:
        low = f.absolute().as_posix().lower()
        by_path = next((a for p, a in self.by_path.items() if low.endswith("/" + p)), None)
        by_name = self.by_name.get(f.name.lower())
        named = by_path or by_name
        if size in self.sizes:
            sha = sha256_file(f)
            owner = self.by_sha.get(sha)
            if owner is not None:
                if named is None or named.id == owner.id:
                    how = "path" if by_path else "name" if by_name else "hash"
                    return TreeCandidate(owner.id, f, size, how, sha)
                return TreeCandidate(owner.id, f, size, "hash", sha,
                                     f"named like {named.id} but its sha256 is that of {owner.id}")
            if named is not None:
                return TreeCandidate(named.id, f, size, "path" if by_path else "name", sha)
            return None
        if named is not None:
            return TreeCandidate(named.id, f, size, "path" if by_path else "name")
        return None


def _regular_size(f: Path) -> Optional[int]:
    try:
        st = os.stat(f)
    except OSError:
        return None
    return st.st_size if statmod.S_ISREG(st.st_mode) else None


def find_tree_candidates(paths: Sequence[Path], store: Store, catalog: Catalog, *,
                         entries: Optional[Dict[str, dict]] = None,
                         exclude: Sequence[Path] = ()) -> List[TreeCandidate]:
    """Every file under ``paths`` that is taken for a tree asset, best match first per asset."""
    entries = store.lock_entries() if entries is None else entries
    ident = _Identifier(tree_assets(catalog), store, entries)
    excluded = [Path(e).resolve() for e in exclude]
    found: Dict[Path, TreeCandidate] = {}
    for raw in paths:
        p = _existing(raw)
        files = _walk(p, excluded) if p.is_dir() else [p]
        for f in files:
            key = f.resolve()
            if key in found or _is_appledouble(f.name):
                continue
            size = _regular_size(f)
            if size is None:
                continue
            cand = ident.identify(f, size)
            if cand is not None:
                found[key] = cand
    order = {a.id: i for i, a in enumerate(catalog.assets)}
    return sorted(found.values(), key=lambda c: (order[c.asset_id], MATCH_RANK[c.matched], str(c.path)))


# --------------------------------------------------------------------------- tree import

def _stat_key(st: os.stat_result) -> Tuple[int, int, int]:
    return (st.st_size, st.st_mtime_ns, st.st_ino)


def _torch_available() -> bool:
    return importlib.util.find_spec("torch") is not None


@dataclass(frozen=True)
class _Checked:
    sha256: str
    stat_key: Tuple[int, int, int]
    identity: str          # manifest | lockfile | first-use
    model: str
    note: str


def _check_tree_file(cand: TreeCandidate, asset: Asset, store: Store, entries: Dict[str, dict],
                     deep: bool) -> "_Checked | Skipped":
    """Is this file the asset?  Hash, size/sha256 or structure (+ deep check).  No side effects."""
    src, source = cand.path, str(cand.path)

    def skip(reason: str) -> Skipped:
        return Skipped(source, reason, asset.id)

    if cand.size == 0:
        return skip(f"{ZERO_BYTE_NOTE} (under the name of {asset.id}), not imported")
    try:
        with open(src, "rb") as f:
            head = f.read(SNIFF_BYTES)
    except OSError as exc:
        return skip(f"cannot read it ({exc.strerror or exc})")
    if looks_like_markup(head[:512]):
        return skip(f"{HTML_NOTE} (under the name of {asset.id}), not imported")
    ident = store.identity(asset, entries)
    if ident.origin == "manifest" and ident.size is not None and cand.size != ident.size:
        return skip(f"{cand.size} bytes, but the manifest pins {asset.id} at {ident.size} bytes "
                    "(another version or a truncated copy)")
    st0 = os.stat(src)
    sha = cand.sha256 or sha256_file(src)
    st1 = os.stat(src)
    if _stat_key(st0) != _stat_key(st1) or cand.size != st1.st_size:
        return skip("it changed while it was being read; run the import again")
    notes = [cand.note] if cand.note else []
    if ident.origin == "manifest":
        if sha != ident.sha256:
            return skip(f"sha256 {sha[:16]}... does not match the {ident.sha256[:16]}... the manifest pins for "
                        f"{asset.id} (another version or a damaged copy)")
        return _Checked(sha, _stat_key(st1), "manifest", asset.kind, "; ".join(notes))
    try:
        check_file(src, asset.kind, name=src.name)
    except MetroAssetsError as exc:
        return skip(_reason(exc))
    model = asset.kind
    if deep and asset.check:
        try:
            report = deep_check(src, asset.check)
        except MetroAssetsError as exc:
            return skip(f"deep check {asset.check} failed: {_reason(exc)}" + (f" ({exc.did})" if exc.did else ""))
        except ImportError as exc:
            notes.append(f"deep check skipped ({exc.name or exc} not installed)")
        else:
            variant, fmt = getattr(report, "variant", None), getattr(report, "format", None)
            if variant:
                model = f"{variant} checkpoint" + (f" ({fmt})" if fmt else "") + ", deep-checked"
    elif asset.check:
        notes.append("deep check not run")
    identity = "lockfile" if ident.origin == "lockfile" and sha == ident.sha256 else "first-use"
    if ident.origin == "lockfile" and sha != ident.sha256:
        notes.append(f"metro-assets.lock recorded another sha256 ({ident.sha256[:12]}...) for {asset.id}")
    return _Checked(sha, _stat_key(st1), identity, model, "; ".join(notes))


def _link_or_copy(store: Store, src: Path, dest: Path, checked: _Checked, *, link: bool) -> str:
    """Place ``src`` at ``dest`` through a name beside it: hard link, else a verified copy.

    Returns "hardlink" or "copy".  The user's file is only ever read (or linked).
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.{secrets.token_hex(6)}.metro-import"
    try:
        if link:
            try:
                os.link(src, tmp)
            except OSError:      # another filesystem, no hard links there, protected_hardlinks...
                pass
            else:
                # same inode, size and mtime as when it was hashed and checked: the same bytes
                if _stat_key(os.stat(tmp)) == checked.stat_key:
                    store.place(tmp, dest, checked.sha256)
                    return "hardlink"
                os.unlink(tmp)
                raise OSError(f"{src} changed after it was checked")
        with open(src, "rb") as inp, open(tmp, "xb") as out:
            os.fchmod(out.fileno(), 0o644)
            got, _ = copy_with_sha256(inp, out)
        if got != checked.sha256:
            raise OSError(f"{src} changed after it was checked (sha256 {got[:12]}..., "
                          f"expected {checked.sha256[:12]}...)")
        store.place(tmp, dest, checked.sha256)
        return "copy"
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _place_tree_file(store: Store, asset: Asset, cand: TreeCandidate, checked: _Checked,
                     entries: Dict[str, dict], *, link: bool):
    dest = store.dest(asset)
    source = str(cand.path)
    with store.asset_lock(asset.id):
        try:
            dest_size: Optional[int] = os.stat(dest).st_size
        except FileNotFoundError:
            dest_size = None
        current = _current_sha(store, dest)
        entry = entries.get(asset.id)
        first_use = checked.identity != "manifest"
        if current == checked.sha256:
            recorded = bool(entry) and entry.get("path") == asset.path and entry.get("sha256") == current
            if first_use and not recorded:
                _record_tree(store, asset, cand, checked, placed="already present")
            return Present(asset.id, asset.path, source, current,
                           "already in place" + (f"; {checked.note}" if checked.note else ""))
        ident = store.identity(asset, entries)
        if ident.origin == "lockfile" and current is not None and current == ident.sha256:
            return Skipped(source, f"differs from the {asset.id} already in place and recorded in metro-assets.lock "
                                   f"(sha256 {current[:12]}...); kept that one", asset.id)
        try:
            how = _link_or_copy(store, cand.path, dest, checked, link=link)
        except OSError as exc:
            return Skipped(source, f"could not place it at {asset.path}: {exc}", asset.id)
        if first_use:
            _record_tree(store, asset, cand, checked, placed=how)
        notes = [checked.note] if checked.note else []
        if dest_size == 0:
            notes.append("replaced a 0-byte file")
        elif current is not None:
            notes.append(f"replaced a different file (sha256 {current[:12]}...)")
        return Imported(asset.id, asset.path, source, checked.sha256, cand.size, checked.model, note="; ".join(notes),
                        how=how, matched=cand.matched, identity=checked.identity)


def _record_tree(store: Store, asset: Asset, cand: TreeCandidate, checked: _Checked, *, placed: str) -> None:
    # absolute: the lockfile lives in the root, not in the directory the command ran from
    store.record(asset.id, path=asset.path, size=cand.size, sha256=checked.sha256, source=str(cand.path.absolute()),
                 how="import", placed=placed, matched=cand.matched)


def import_tree(cands: Sequence[TreeCandidate], store: Store, catalog: Catalog, *, deep: bool, link: bool,
                entries: Dict[str, dict], on_progress: Optional[Callable[[str], None]] = None
                ) -> Tuple[List[Imported], List[Present], List[Skipped]]:
    """Check and place tree candidates; per asset the first good one wins, the rest are compared with it."""
    assets = catalog.by_id()
    imported: List[Imported] = []
    present: List[Present] = []
    skipped: List[Skipped] = []
    chosen: Dict[str, Tuple[str, int, str]] = {}      # asset id -> (sha256, size, source)
    for cand in cands:
        asset = assets[cand.asset_id]
        if on_progress:
            on_progress(str(cand.path))
        if asset.id in chosen:
            sha, size, source = chosen[asset.id]
            if cand.size == size and (cand.sha256 or sha256_file(cand.path)) == sha:
                present.append(Present(asset.id, asset.path, str(cand.path), sha, f"same file as {source}"))
            else:
                skipped.append(Skipped(str(cand.path), f"another file was already taken for {asset.id} from {source}; "
                                                       "kept that one", asset.id))
            continue
        checked = _check_tree_file(cand, asset, store, entries, deep)
        if isinstance(checked, Skipped):
            skipped.append(checked)
            continue
        result = _place_tree_file(store, asset, cand, checked, entries, link=link)
        if isinstance(result, Skipped):
            skipped.append(result)
            continue
        (imported if isinstance(result, Imported) else present).append(result)
        chosen[asset.id] = (checked.sha256, cand.size, str(cand.path))
    return imported, present, skipped


# --------------------------------------------------------------------------- import

def _reason(exc: MetroAssetsError) -> str:
    parts = [exc.what.rstrip(".")]
    if exc.expected:
        parts.append(f"expected {exc.expected}" + (f", got {exc.got}" if exc.got else ""))
    return "; ".join(parts)


def _current_sha(store: Store, dest: Path) -> Optional[str]:
    try:
        st = os.stat(dest)
    except FileNotFoundError:
        return None
    sha = store.stamped_sha(dest, st)
    if sha is None:
        sha = sha256_file(dest)
        store.put_stamps({dest: sha})
    return sha


def _write_verified(store: Store, dest: Path, data: bytes, sha: str) -> None:
    """temp beside dest -> fsync -> re-hash -> os.replace (nothing unverified at dest)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".metro-import", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o644)   # mkstemp makes 0600; a body model is not a secret
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        got = sha256_file(Path(tmp))
        if got != sha:
            raise OSError(f"the bytes written to {tmp} do not hash back to {sha} (got {got})")
        store.place(Path(tmp), dest, sha)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _name_note(info: BodyModelInfo, name: str) -> str:
    hinted = variant_from_name(name)
    if hinted and hinted[0] == info.kind and hinted[1] != info.variant and info.variant_from != "name":
        return f"named like {hinted[0].upper()} {hinted[1]} but its {info.variant_from} says {info.variant}"
    return ""


def import_paths(paths: Sequence[Path], store: Store, catalog: Catalog, *, clean: bool = False,
                 deep: Optional[bool] = None, link: bool = True,
                 on_progress: Optional[Callable[[str], None]] = None) -> ImportResult:
    """Import every asset found under ``paths`` into ``store``'s root.

    Body models are identified by content; checkpoints, HRNet files, support
    data and prediction zips by path, name and sha256 (see the module doc).
    ``deep``: run checkpoint deep checks (None: when torch is installed).
    ``link``: hard-link tree files where possible (else copy).  Never moves
    or changes the user's files.  Returns what was imported, what was already
    present, and what was skipped and why.
    """
    for raw in paths:
        _existing(raw)
    if deep is None:
        deep = _torch_available()
    entries = store.lock_entries()
    tree = find_tree_candidates(paths, store, catalog, entries=entries, exclude=[store.root])
    cands, skipped = find_candidates(paths, exclude=[store.root], skip_files=[c.path.resolve() for c in tree])
    imported, present, tree_skipped = import_tree(tree, store, catalog, deep=deep, link=link, entries=entries,
                                                  on_progress=on_progress)
    skipped = tree_skipped + skipped
    assets = catalog.by_id()
    done: Dict[str, Tuple[str, str]] = {}        # asset id -> (source sha256, source) handled this run

    for cand in cands:
        if on_progress:
            on_progress(cand.source)
        if cand.size > MAX_CANDIDATE_BYTES:
            skipped.append(Skipped(cand.source, f"{cand.size} bytes is far larger than any SMPL/MANO model"))
            continue
        try:
            data = cand.read()
        except (OSError, zipfile.BadZipFile, RuntimeError) as exc:
            skipped.append(Skipped(cand.source, f"cannot read it ({exc})"))
            continue
        sha = hashlib.sha256(data).hexdigest()
        try:
            info, model = inspect_bytes(data, name=cand.name, source=cand.name)
        except MetroAssetsError as exc:
            skipped.append(Skipped(cand.source, _reason(exc)))
            continue
        note = _name_note(info, cand.name)
        aid = info.asset_id
        if aid is None:
            if info.variant == "unknown":
                why = f"{info.kind.upper()} model, but neither its contents nor its name tell which one it is"
            else:
                why = f"{info.describe()}: METRO does not use it" + (
                    " (it needs MANO_RIGHT)" if info.kind == "mano" else "")
            skipped.append(Skipped(cand.source, why + (f"; {note}" if note else "")))
            continue
        asset = assets.get(aid)
        if asset is None:
            skipped.append(Skipped(cand.source, f"{info.describe()}: no asset {aid!r} in the catalog"))
            continue
        if aid in done:
            if done[aid][0] == sha:
                present.append(Present(aid, asset.path, cand.source, sha, f"same file as {done[aid][1]}"))
            else:
                skipped.append(Skipped(cand.source, f"another {info.describe()} was already imported for {aid} "
                                                    f"from {done[aid][1]}; kept that one"))
            continue
        done[aid] = (sha, cand.source)
        result = _place(store, asset, cand, data, sha, model, info, clean=clean, entry=entries.get(aid), note=note)
        (imported if isinstance(result, Imported) else present).append(result)
    return ImportResult(tuple(imported), tuple(skipped), tuple(present), str(store.root))


def _place(store: Store, asset: Asset, cand: Candidate, data: bytes, sha: str, model: dict, info: BodyModelInfo,
           *, clean: bool, entry: Optional[dict], note: str):
    dest = store.dest(asset)
    make_clean = clean and info.chumpy
    target = clean_bytes(model) if make_clean else data
    target_sha = hashlib.sha256(target).hexdigest() if make_clean else sha
    with store.asset_lock(asset.id):
        current = _current_sha(store, dest)
        recorded = bool(entry) and entry.get("path") == asset.path and entry.get("sha256") == current
        if current == target_sha or (not clean and recorded and entry.get("original_sha256") == sha):
            if not recorded:
                _record(store, asset, cand, target, current, data, sha, current != sha)
            kept = "clean copy" if current != sha else "official file"
            return Present(asset.id, asset.path, cand.source, current, f"{kept} already in place" + (f"; {note}" if note else ""))
        original_rel = None
        if make_clean:
            original_rel = f"{ORIGINALS_DIR}/{sha}.pkl"
            original = store.root / original_rel
            if not (original.is_file() and original.stat().st_size == len(data)):
                atomic_write_bytes(original, data)
        _write_verified(store, dest, target, target_sha)
        _record(store, asset, cand, target, target_sha, data, sha, make_clean)
        if current is not None:
            what = ("replaced the official bytes with their clean copy" if current == sha
                    else f"replaced a different file (sha256 {current[:12]}...)")
            note = (note + "; " if note else "") + what
        return Imported(asset.id, asset.path, cand.source, target_sha, len(target), info.describe(), make_clean,
                        sha if make_clean else None, note, identity="content")


def _record(store: Store, asset: Asset, cand: Candidate, target: bytes, target_sha: str, data: bytes, sha: str,
            is_clean: bool) -> None:
    extra = {"clean": bool(is_clean)}
    if is_clean:
        extra.update(original_sha256=sha, original_size=len(data), original=f"{ORIGINALS_DIR}/{sha}.pkl")
    store.record(asset.id, path=asset.path, size=len(target), sha256=target_sha, source=cand.source, how="import", **extra)


# --------------------------------------------------------------------------- fetch help

def manual_instructions(asset: Asset, root: Optional[Path] = None) -> str:
    """What a user must do by hand for a license-gated asset (printed by fetch)."""
    src = next((s for s in asset.sources if s.manual), None)
    root_opt = f" --root {root}" if root is not None else ""
    lines = [f"{asset.id} is license-gated ({asset.license or 'see the site'}); metro-assets cannot download it."]
    if src is None:
        lines.append("No manual source is described for it in the manifest.")
        return "\n".join(lines)
    step = 1
    if src.site:
        lines.append(f"  {step}. Register and accept the license at {src.site}"
                     + (f" (license: {asset.license_url})" if asset.license_url else "")); step += 1
    if src.archive:
        lines.append(f"  {step}. Download {src.archive}"); step += 1
    if src.member:
        lines.append(f"     (it contains {src.member}; no need to unpack it)")
    if src.note:
        lines.append(f"     note: {src.note}")
    archive = src.archive or PurePosixPath(asset.path).name
    lines.append(f"  {step}. Run: metro-assets import ~/Downloads/{archive}{root_opt}")
    lines.append(f"     (or point it at a folder: metro-assets import ~/Downloads{root_opt})")
    lines.append(f"It will be placed at {asset.path}, checked and recorded.")
    return "\n".join(lines)


def missing_body_models(store: Store, catalog: Catalog) -> List[str]:
    """Catalog body-model ids whose METRO path is empty."""
    ids = [a for a in ASSET_VARIANTS if a in catalog.by_id()]
    return [a for a in ids if not store.dest(catalog.get(a)).exists()]

