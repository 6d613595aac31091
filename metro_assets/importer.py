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
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from metro_assets.bodymodels import ASSET_VARIANTS, BodyModelInfo, clean_bytes, inspect_bytes, variant_from_name
from metro_assets.errors import MetroAssetsError, UsageError
from metro_assets.hashing import sha256_file
from metro_assets.manifest import Asset, Catalog
from metro_assets.settings import STATE_DIR_NAME
from metro_assets.store import Store, atomic_write_bytes

__all__ = ["import_paths", "ImportResult", "Imported", "Skipped", "Present", "manual_instructions",
           "find_candidates", "Candidate", "ORIGINALS_DIR"]

ORIGINALS_DIR = f"{STATE_DIR_NAME}/originals"
# Names worth opening: official, METRO and smplx spellings (SMPLH_* decoys match too and are refused by content).
MODEL_NAME = re.compile(r"(basicmodel|smpl|mano).*\.pkl$", re.IGNORECASE)
SKIP_DIRS = {"__macosx", ".git", ".hg", ".svn", "node_modules", "__pycache__", STATE_DIR_NAME}
MAX_CANDIDATE_BYTES = 512 << 20   # the largest official body model is ~39 MB


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


def find_candidates(paths: Sequence[Path], *, exclude: Sequence[Path] = ()) -> Tuple[List[Candidate], List[Skipped]]:
    """Every body-model candidate under ``paths`` (files, archives, directories)."""
    cands: List[Candidate] = []
    skipped: List[Skipped] = []
    excluded = [Path(e).resolve() for e in exclude]

    def walk(d: Path) -> Iterable[Path]:
        for dirpath, dirnames, filenames in os.walk(d):
            dirnames[:] = sorted(n for n in dirnames if n.lower() not in SKIP_DIRS
                                 and Path(dirpath, n).resolve() not in excluded)
            for fn in sorted(filenames):
                yield Path(dirpath, fn)

    for raw in paths:
        p = Path(raw).expanduser()
        if not p.exists():
            raise UsageError(f"No such file or directory: {p}", expected="an archive, a .pkl file or a directory",
                             next_command="metro-assets import ~/Downloads/SMPL_python_v.1.0.0.zip ...")
        if p.is_dir():
            for f in walk(p):
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
                 on_progress: Optional[Callable[[str], None]] = None) -> ImportResult:
    """Import every body model found under ``paths`` into ``store``'s root.

    Never moves or changes the user's files.  Returns what was imported,
    what was already present, and what was skipped and why.
    """
    cands, skipped = find_candidates(paths, exclude=[store.root])
    assets = catalog.by_id()
    imported: List[Imported] = []
    present: List[Present] = []
    done: Dict[str, Tuple[str, str]] = {}        # asset id -> (source sha256, source) handled this run
    entries = store.lock_entries()

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
                        sha if make_clean else None, note)


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

