"""verify and list: the truth about each asset on disk.

Fast by default: a file whose (size, mtime_ns, inode) matches its stamp is
not re-hashed, so an unchanged tree of hundreds of GB verifies in well under
a second.  ``full=True`` re-hashes everything on all cores; ``deep=True``
also runs the kind's deep check (checkpoints load-checked against the spec,
body models validated, datasets' TSVs checked row by row).
"""
from __future__ import annotations

import os
import stat as statmod
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from metro_assets.checks import check_file, deep_check
from metro_assets.errors import EXIT_ACTION_REQUIRED, EXIT_FAILED, EXIT_OK, MetroAssetsError
from metro_assets.hashing import sha256_many
from metro_assets.manifest import Asset, Catalog
from metro_assets.store import Identity, Store

STATUSES = ("ok", "missing", "corrupt", "unverified", "action-required")


@dataclass(frozen=True)
class AssetStatus:
    id: str
    group: str
    path: str
    kind: str
    status: str                       # one of STATUSES
    size: Optional[int]               # expected size (manifest or lockfile), else the size on disk
    sha256: Optional[str]             # expected sha256 (manifest or lockfile)
    manual: bool
    optional: bool
    identity: str                     # manifest | lockfile | unknown
    detail: str = ""
    fix: str = ""
    got_size: Optional[int] = None
    got_sha256: Optional[str] = None
    findings: Tuple[Dict[str, Any], ...] = ()

    def to_json(self) -> Dict[str, Any]:
        d = asdict(self)
        d["findings"] = list(self.findings)
        return d


@dataclass(frozen=True)
class VerifyResult:
    statuses: Tuple[AssetStatus, ...]
    explicit: Tuple[str, ...] = ()    # ids named explicitly on the command line

    @property
    def exit_code(self) -> int:
        return exit_code_for(self.statuses, self.explicit)

    def counts(self) -> Dict[str, int]:
        c: Dict[str, int] = {}
        for s in self.statuses:
            c[s.status] = c.get(s.status, 0) + 1
        return c

    def to_json(self) -> Dict[str, Any]:
        return {"ok": self.exit_code == EXIT_OK, "exit_code": self.exit_code, "counts": self.counts(),
                "assets": [s.to_json() for s in self.statuses]}


def exit_code_for(statuses: Sequence[AssetStatus], explicit: Sequence[str] = ()) -> int:
    """0 all ok; 1 anything missing/corrupt; 3 only manual actions remain.

    Optional assets (e.g. the SMPL male/female models) count only when named
    explicitly.  ``unverified`` (present, passes structure, no known hash) is
    not a failure.
    """
    failed = manual = False
    for s in statuses:
        if s.optional and s.id not in explicit and s.status in ("missing", "action-required"):
            continue
        if s.status in ("missing", "corrupt"):
            failed = True
        elif s.status == "action-required":
            manual = True
    if failed:
        return EXIT_FAILED
    if manual:
        return EXIT_ACTION_REQUIRED
    return EXIT_OK


def _manual_fix(asset: Asset) -> str:
    src = next((s for s in asset.sources if s.manual), None)
    if src is None:
        return ""
    return (f"download {src.archive} from {src.site} (license: {asset.license_url or asset.license}), "
            f"then: metro-assets import ~/Downloads/{src.archive}")


def _fetch_fix(asset: Asset) -> str:
    if asset.manual:
        return _manual_fix(asset)
    return f"metro-assets fetch {asset.id}   # add --mirror BASE if the upstream host is dead"


def inspect(asset: Asset, store: Store, *, stamps: Dict[str, list], entries: Dict[str, Dict[str, Any]],
            full: bool = False) -> Tuple[AssetStatus, Optional[Path]]:
    """Status from metadata alone.  Returns (status, path_to_hash) where
    path_to_hash is set when the verdict needs the file's sha256."""
    ident = store.identity(asset, entries)
    dest = store.dest(asset)
    base = dict(id=asset.id, group=asset.group, path=asset.path, kind=asset.kind, manual=asset.manual,
                optional=asset.optional, identity=ident.origin, size=ident.size, sha256=ident.sha256)
    try:
        st = os.lstat(dest)
    except FileNotFoundError:
        if asset.manual:
            return AssetStatus(status="action-required", detail="license-gated: download it yourself, then import it",
                               fix=_manual_fix(asset), **base), None
        return AssetStatus(status="missing", detail="not on disk", fix=_fetch_fix(asset), **base), None
    if not statmod.S_ISREG(st.st_mode):
        what = "a symlink" if statmod.S_ISLNK(st.st_mode) else "not a regular file"
        if statmod.S_ISLNK(st.st_mode):
            try:
                st = os.stat(dest)
            except FileNotFoundError:
                return AssetStatus(status="missing", detail="dangling symlink", fix=f"rm {dest} && {_fetch_fix(asset)}", **base), None
            if not statmod.S_ISREG(st.st_mode):
                return AssetStatus(status="corrupt", detail=f"{what} to something that is not a file", fix=f"rm -r {dest}", **base), None
        else:
            return AssetStatus(status="corrupt", detail=what, fix=f"move {dest} away, then {_fetch_fix(asset)}", **base), None
    got_size = st.st_size
    base["got_size"] = got_size
    if ident.size is not None and got_size != ident.size:
        return AssetStatus(status="corrupt", detail=f"size {got_size} bytes, expected {ident.size}",
                           fix=f"rm {dest} && {_fetch_fix(asset)}", **base), None
    if ident.sha256 is None:
        base["size"] = got_size
        try:
            check_file(dest, asset.kind)
        except MetroAssetsError as exc:
            return AssetStatus(status="corrupt", detail=exc.what, fix=f"rm {dest} && {_fetch_fix(asset)}", **base), None
        return AssetStatus(status="unverified", detail="present; no known sha256 (not in the manifest or the lockfile)",
                           fix=f"metro-assets import {dest}   # records its sha256 after checking it", **base), None
    if not full:
        sha = store.stamped_sha(dest, st, stamps)
        if sha is not None:
            if sha == ident.sha256:
                return AssetStatus(status="ok", got_sha256=sha, **base), None
            return _corrupt(asset, base, dest, ident, sha), None
    return AssetStatus(status="ok", **base), dest  # provisional: needs hashing


def _corrupt(asset: Asset, base: Dict[str, Any], dest: Path, ident: Identity, got: str) -> AssetStatus:
    base = dict(base, got_sha256=got)
    return AssetStatus(status="corrupt", detail=f"sha256 {got[:16]}..., expected {ident.sha256[:16]}... ({ident.origin})",
                       fix=f"rm {dest} && {_fetch_fix(asset)}", **base)


def verify_assets(assets: Sequence[Asset], store: Store, *, full: bool = False, deep: bool = False,
                  sample: Optional[int] = None, explicit: Sequence[str] = ()) -> VerifyResult:
    stamps = store.load_stamps()
    entries = store.lock_entries()
    results: List[Optional[AssetStatus]] = []
    to_hash: Dict[int, Path] = {}
    for i, asset in enumerate(assets):
        if asset.kind == "dataset":
            results.append(_dataset_status(asset, store, full=full, deep=deep, sample=sample))
            continue
        st, path = inspect(asset, store, stamps=stamps, entries=entries, full=full)
        results.append(st)
        if path is not None:
            to_hash[i] = path
    if to_hash:
        hashes = sha256_many(to_hash.values())
        fresh = {}
        for i, path in to_hash.items():
            sha = hashes[path]
            st = results[i]
            ident = store.identity(assets[i], entries)
            if sha == ident.sha256:
                results[i] = AssetStatus(**{**asdict(st), "got_sha256": sha})
                fresh[path] = sha
            else:
                results[i] = _corrupt(assets[i], {k: v for k, v in asdict(st).items() if k not in ("status", "detail", "fix", "got_sha256")},
                                      path, ident, sha)
        store.put_stamps(fresh)
    if deep:
        for i, asset in enumerate(assets):
            st = results[i]
            if asset.check and asset.kind != "dataset" and st.status in ("ok", "unverified"):
                try:
                    deep_check(store.dest(asset), asset.check)
                except MetroAssetsError as exc:
                    results[i] = AssetStatus(**{**asdict(st), "status": "corrupt", "detail": f"deep check {asset.check}: {exc.what}",
                                                "fix": exc.next_command or _fetch_fix(asset)})
                except ImportError as exc:
                    results[i] = AssetStatus(**{**asdict(st), "detail": (st.detail + "; " if st.detail else "") +
                                                f"deep check skipped ({exc.name or exc} not installed: pip install 'metro-assets[model]')"})
    return VerifyResult(statuses=tuple(results), explicit=tuple(explicit))


def _dataset_status(asset: Asset, store: Store, *, full: bool, deep: bool, sample: Optional[int]) -> AssetStatus:
    from metro_assets import datasets

    r = datasets.verify_dataset(asset, store, full=full, deep=deep, sample=sample)
    ident = store.identity(asset)
    fix = r.fix if getattr(r, "fix", "") else ("" if r.status == "ok" else _fetch_fix(asset))
    return AssetStatus(id=asset.id, group=asset.group, path=asset.path, kind=asset.kind, status=r.status,
                       size=ident.size, sha256=ident.sha256, manual=False, optional=asset.optional,
                       identity=ident.origin, detail=getattr(r, "detail", ""), fix=fix,
                       findings=tuple(f if isinstance(f, dict) else f.to_json() for f in getattr(r, "findings", ())))


def verify(catalog: Catalog, names: Sequence[str], store: Store, **kw) -> VerifyResult:
    assets = catalog.select(names)
    explicit = [n for n in names if n in catalog.by_id()]
    return verify_assets(assets, store, explicit=explicit, **kw)
