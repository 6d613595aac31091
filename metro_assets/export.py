"""``metro-assets export smplx DIR``: the smplx model layout from the imported body models.

smplx finds models as ``DIR/smpl/SMPL_{NEUTRAL,FEMALE,MALE}.pkl`` and
``DIR/mano/MANO_RIGHT.pkl`` and unpickles them with stock ``pickle``, so every
exported file is chumpy-free.  A file that is already clean at its METRO path
(``import --clean``) is hard-linked (``link=True``, the default) or copied; a
chumpy file is loaded through the restricted loader, re-checked and written
clean.  Each file is written through a temp file and ``os.replace``.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import List, Optional, Tuple

from metro_assets.bodymodels import ASSET_VARIANTS, clean_bytes, inspect_model, uses_chumpy
from metro_assets.errors import MetroAssetsError
from metro_assets.manifest import Catalog
from metro_assets.safe_pickle import loads_restricted
from metro_assets.store import Store, atomic_write_bytes, fsync_dir

__all__ = ["export_smplx", "ExportResult", "Exported", "SMPLX_LAYOUT"]

SMPLX_LAYOUT = {
    "smpl-neutral": "smpl/SMPL_NEUTRAL.pkl",
    "smpl-female": "smpl/SMPL_FEMALE.pkl",
    "smpl-male": "smpl/SMPL_MALE.pkl",
    "mano-right": "mano/MANO_RIGHT.pkl",
}


@dataclass(frozen=True)
class Exported:
    asset_id: str
    path: str          # absolute path written
    how: str           # cleaned | linked | copied


@dataclass(frozen=True)
class ExportResult:
    directory: str
    exported: Tuple[Exported, ...]
    missing: Tuple[Tuple[str, str], ...]   # (asset id, reason)

    @property
    def ok(self) -> bool:
        return bool(self.exported)

    def to_json(self) -> dict:
        return {"ok": self.ok, "directory": self.directory, "exported": [asdict(e) for e in self.exported],
                "missing": [{"asset_id": a, "reason": r} for a, r in self.missing]}


def _link_or_copy(src: Path, dest: Path, link: bool) -> str:
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    os.unlink(tmp)
    try:
        how = "copied"
        if link:
            try:
                os.link(src, tmp)
                how = "linked"
            except OSError:
                pass
        if how == "copied":
            shutil.copyfile(src, tmp)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, dest)
        fsync_dir(dest.parent)
        return how
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def export_smplx(store: Store, catalog: Catalog, directory: Path, *, link: bool = True,
                 assets: Optional[List[str]] = None) -> ExportResult:
    """Write the smplx layout under ``directory`` from the body models in ``store``."""
    directory = Path(directory).expanduser().absolute()
    by_id = catalog.by_id()
    exported: List[Exported] = []
    missing: List[Tuple[str, str]] = []
    for aid, rel in SMPLX_LAYOUT.items():
        if assets is not None and aid not in assets:
            continue
        asset = by_id.get(aid)
        if asset is None:
            missing.append((aid, "not in the catalog"))
            continue
        src = store.dest(asset)
        if not src.is_file():
            missing.append((aid, f"{asset.path} is not imported yet"))
            continue
        data = src.read_bytes()
        try:
            model = loads_restricted(data, what=str(src))
            info = inspect_model(model, name=src.name, source=str(src))
        except MetroAssetsError as exc:
            missing.append((aid, exc.paragraph()))
            continue
        want = ASSET_VARIANTS[aid]
        if (info.kind, info.variant) != want and info.variant != "unknown":
            missing.append((aid, f"{asset.path} holds {info.describe()}, not {want[0].upper()} {want[1]}"))
            continue
        dest = directory / rel
        if uses_chumpy(data):
            atomic_write_bytes(dest, clean_bytes(model))
            how = "cleaned"
        else:
            how = _link_or_copy(src, dest, link)
        exported.append(Exported(aid, str(dest), how))
    return ExportResult(str(directory), tuple(exported), tuple(missing))
