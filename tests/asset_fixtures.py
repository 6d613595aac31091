"""A small test catalog and a mirror that holds its files (real torch/npy/zip/yaml bytes)."""
from __future__ import annotations

import hashlib
import io
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict

import numpy as np


def _torch_legacy_bytes() -> bytes:
    import torch

    buf = io.BytesIO()
    torch.save({"w": torch.arange(6, dtype=torch.float32).reshape(2, 3)}, buf, _use_new_zipfile_serialization=False)
    return buf.getvalue()


def _torch_zip_bytes(n: int = 300_000) -> bytes:
    import torch

    buf = io.BytesIO()
    torch.save({"w": torch.linspace(0, 1, n)}, buf)
    return buf.getvalue()


def _npy_bytes() -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.arange(17 * 50, dtype=np.float64).reshape(17, 50))
    return buf.getvalue()


def _zip_bytes() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("pred/a.txt", "hello\n" * 100)
    return buf.getvalue()


YAML_BYTES = b"MODEL:\n  NAME: cls_hrnet\n  EXTRA:\n    STAGE1: {NUM_MODULES: 1}\n"


@dataclass
class TestMirror:
    dir: Path
    manifest: Path
    files: Dict[str, bytes]    # asset id -> bytes
    paths: Dict[str, str]      # asset id -> tree path

    def sha(self, asset_id: str) -> str:
        return hashlib.sha256(self.files[asset_id]).hexdigest()


def make_test_mirror(base: Path, *, with_manual: bool = True, big_n: int = 300_000) -> TestMirror:
    """Write a mirror folder + manifest (group ``tst``).  ``ckpt`` and ``zip`` have no sha256
    in the manifest (trust on first use); ``npy`` and ``yaml`` are pinned."""
    files = {"t-ckpt": _torch_legacy_bytes(), "t-big": _torch_zip_bytes(big_n), "t-npy": _npy_bytes(),
             "t-yaml": YAML_BYTES, "t-zip": _zip_bytes()}
    paths = {"t-ckpt": "models/metro_release/t_ckpt.bin", "t-big": "models/hrnet/t_big.pth",
             "t-npy": "metro/modeling/data/t_reg.npy", "t-yaml": "models/hrnet/t_cfg.yaml",
             "t-zip": "predictions/t_pred.zip"}
    kinds = {"t-ckpt": "torch-checkpoint", "t-big": "torch-weights", "t-npy": "npy", "t-yaml": "yaml", "t-zip": "zip"}
    pinned = {"t-npy", "t-yaml"}
    mirror = base / "mirror"
    for aid, data in files.items():
        p = mirror / paths[aid]
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        os.chmod(p, 0o644)
    lines = ["version: 1", "groups:", "  tst: {description: test assets}", "assets:"]
    for aid, data in files.items():
        sha = hashlib.sha256(data).hexdigest() if aid in pinned else "null"
        size = len(data) if aid in pinned else "null"
        lines += [f"  - id: {aid}", "    group: tst", f"    tags: [{'hand' if aid == 't-zip' else 'body'}]",
                  f"    path: {paths[aid]}", f"    kind: {kinds[aid]}", f"    size: {size}", f"    sha256: {sha}",
                  "    sources:", f"      - url: https://dead.invalid/{aid}", "        dead_since: '2025-02'",
                  "        reason: answers 409"]
    if with_manual:
        lines += ["  - id: t-manual", "    group: tst", "    path: metro/modeling/data/T_MANUAL.pkl", "    kind: body-model",
                  "    size: null", "    sha256: null", "    license: TEST", "    sources:", "      - kind: manual",
                  "        site: https://licensed.invalid", "        archive: t_manual.zip", "        member: m/T_MANUAL.pkl"]
    manifest = base / "test-manifest.yaml"
    manifest.write_text("\n".join(lines) + "\n")
    return TestMirror(mirror, manifest, files, paths)
