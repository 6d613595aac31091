"""metro-assets import DIR on a whole old METRO checkout: checkpoints, HRNet, support data, body models.

The fake checkout holds real small files: tiny-config METRO checkpoints in both torch
serializations (they pass the deep check), .npy/.npz/.yaml support files pinned by a
--manifest override, 0-byte wget leftovers, an HTML page under a checkpoint name, a body
checkpoint under the hand name (the 2021 download script typo) and chumpy SMPL/MANO pickles.
"""
from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Dict

import numpy as np
import pytest
from typer.testing import CliRunner

import bodymodel_fixtures as bf
from bodymodel_fixtures import bodymodel_files  # noqa: F401  (session fixture)
from metro_assets.cli import app
from metro_assets.importer import HTML_NOTE, ZERO_BYTE_NOTE, import_paths
from metro_assets.manifest import load_catalog
from metro_assets.store import Store
from metro_assets.verify import verify_assets

torch = pytest.importorskip("torch")
from metro_assets.model.synthetic import write_release_checkpoint  # noqa: E402

REL = "models/metro_release"
DATA = "metro/modeling/data"
H36M = f"{REL}/metro_h36m_state_dict.bin"
PW3D = f"{REL}/metro_3dpw_state_dict.bin"
HAND = f"{REL}/metro_hand_state_dict.bin"
W64 = "models/hrnet/hrnetv2_w64_imagenet_pretrained.pth"
W64_YAML = "models/hrnet/cls_hrnet_w64_sgd_lr5e-2_wd1e-4_bs32_x100.yaml"
J_EXTRA = f"{DATA}/J_regressor_extra.npy"
MESH_DS = f"{DATA}/mesh_downsampling.npz"
PRED = "predictions/ckpt200-multisc-pred.zip"
HTML = b"<!DOCTYPE html>\n<html><head><title>409 Conflict</title></head><body>PublicAccessNotPermitted</body></html>\n"


def _npy() -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.linspace(0, 1, 14 * 689).reshape(14, 689))
    return buf.getvalue()


def _npz() -> bytes:
    buf = io.BytesIO()
    np.savez(buf, A=np.eye(4), D=np.ones((2, 4)))
    return buf.getvalue()


def _pred_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("pred.json", "[[0.0, 1.0]]")
    return buf.getvalue()


SUPPORT = {"j-regressor-extra": (J_EXTRA, _npy()), "mesh-downsampling": (MESH_DS, _npz()),
           "hrnet-w64-config": (W64_YAML, b"MODEL:\n  NAME: cls_hrnet\n  EXTRA: {STAGE1: {NUM_MODULES: 1}}\n")}
KINDS = {"j-regressor-extra": ("support", "npy"), "mesh-downsampling": ("support", "npz"),
         "hrnet-w64-config": ("hrnet", "yaml")}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def manifest(tmp_path) -> Path:
    """Pin the support files to the test bytes (the built-in pins are those of the real files)."""
    lines = ["version: 1", "assets:"]
    for aid, (path, data) in SUPPORT.items():
        group, kind = KINDS[aid]
        lines += [f"  - id: {aid}", f"    group: {group}", f"    path: {path}", f"    kind: {kind}",
                  f"    size: {len(data)}", f"    sha256: {sha(data)}", "    sources:", "      - https://dead.invalid/x"]
    p = tmp_path / "pins.yaml"
    p.write_text("\n".join(lines) + "\n")
    return p


@pytest.fixture
def catalog(manifest):
    return load_catalog([manifest])


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.fixture
def checkout(tmp_path, bodymodel_files) -> Path:
    """~/old/MeshTransformer as the 2021 scripts left it; returns ~/old (its parent)."""
    old = tmp_path / "old"
    mt = old / "MeshTransformer"
    write_release_checkpoint(mt / H36M, "body", "tiny", legacy=True, seed=1)
    write(mt / PW3D, b"")                                                   # wget leftover
    write_release_checkpoint(mt / HAND, "body", "tiny", legacy=True, seed=2)   # the typo: body weights, hand name
    write(mt / W64, HTML)
    for path, data in SUPPORT.values():
        write(mt / path, data)
    write(mt / DATA / "basicModel_neutral_lbs_10_207_0_v1.0.0.pkl", bodymodel_files.bytes("neutral"))
    write(mt / DATA / "MANO_RIGHT.pkl", bodymodel_files.bytes("right"))
    write(mt / PRED, _pred_zip())
    write(mt / "metro" / "utils" / "renderer.py", b"print('not an asset')\n")
    write(mt / "docs" / "DOWNLOAD.md", b"# download\n")
    return old


def snapshot(d: Path) -> Dict[str, tuple]:
    return {str(p): (p.read_bytes(), p.stat().st_mtime_ns, p.stat().st_mode) for p in sorted(d.rglob("*")) if p.is_file()}


def by_id(items):
    return {i.asset_id: i for i in items}


# --------------------------------------------------------------------------- the whole checkout

def test_old_checkout_parent_dir_imports_every_usable_file(tmp_path, checkout, catalog):
    root = tmp_path / "root"
    before = snapshot(checkout)
    result = import_paths([checkout], Store(root), catalog, deep=True)
    imported = by_id(result.imported)
    assert set(imported) == {"metro-h36m", "hrnet-w64-config", "j-regressor-extra", "mesh-downsampling",
                             "freihand-pred-multisc", "smpl-neutral", "mano-right"}
    mt = checkout / "MeshTransformer"

    # skipped, each with the reason a user needs
    reasons = {Path(s.source).relative_to(mt).as_posix(): s.reason for s in result.skipped}
    assert set(reasons) == {PW3D, HAND, W64}, reasons
    assert ZERO_BYTE_NOTE in reasons[PW3D] and "metro-3dpw" in reasons[PW3D]
    assert HTML_NOTE in reasons[W64]
    assert "holds a body" in reasons[HAND] and "used as the hand checkpoint" in reasons[HAND]
    assert "issue #3" in reasons[HAND]
    for rel in (PW3D, HAND, W64):
        assert not (root / rel).exists(), rel

    # hard links of the user's files, identified by path; trust on first use recorded for the checkpoint
    for aid, rel in (("metro-h36m", H36M), ("j-regressor-extra", J_EXTRA), ("freihand-pred-multisc", PRED)):
        imp = imported[aid]
        assert (imp.how, imp.matched, imp.path) == ("hardlink", "path", rel)
        assert os.stat(root / rel).st_ino == os.stat(mt / rel).st_ino
    assert imported["metro-h36m"].identity == "first-use" and "body-tiny" in imported["metro-h36m"].model
    assert imported["j-regressor-extra"].identity == "manifest"
    entry = Store(root).lock_entry("metro-h36m")
    assert entry["how"] == "import" and entry["source"] == str(mt / H36M)
    assert entry["sha256"] == sha((mt / H36M).read_bytes()) and entry["size"] == (mt / H36M).stat().st_size
    assert entry["placed"] == "hardlink"
    assert Store(root).lock_entry("j-regressor-extra") is None   # pinned in the manifest: nothing to record

    # the user's checkout is untouched: same files, bytes, mtimes and modes
    assert snapshot(checkout) == before

    # verify agrees with what import reported, from stamps alone
    wanted = [catalog.get(a) for a in imported]
    statuses = {s.id: s.status for s in verify_assets(wanted, Store(root)).statuses}
    assert statuses == {a: "ok" for a in imported}
    assert not [p for p in (root / REL).iterdir() if p.name.startswith(".")], "temp names left behind"


def test_running_it_again_is_already_present_and_rewrites_nothing(tmp_path, checkout, catalog):
    root = tmp_path / "root"
    import_paths([checkout], Store(root), catalog, deep=False)
    lock_before = Store(root).lockfile.read_bytes()
    st = os.stat(root / H36M)
    again = import_paths([checkout / "MeshTransformer"], Store(root), catalog, deep=False)
    assert not again.imported
    assert {"metro-h36m", "metro-hand", "j-regressor-extra", "smpl-neutral"} <= set(by_id(again.already_present))
    assert Store(root).lockfile.read_bytes() == lock_before
    st2 = os.stat(root / H36M)
    assert (st.st_ino, st.st_mtime_ns) == (st2.st_ino, st2.st_mtime_ns)


# --------------------------------------------------------------------------- flat folders, names, hashes

def test_flat_folder_matches_names_case_insensitively_and_renamed_files_by_hash(tmp_path, catalog):
    flat = tmp_path / "Downloads"
    write_release_checkpoint(flat / "METRO_HAND_STATE_DICT.BIN", "hand", "tiny", legacy=False, seed=3)  # zip format
    write(flat / "J_regressor_extra (1).npy", SUPPORT["j-regressor-extra"][1])
    write(flat / "mesh_downsampling.npz", _npz()[:-10])          # truncated copy: pinned sha256 refuses it
    write(flat / "holiday.jpg", b"\xff\xd8\xff")
    root = tmp_path / "root"
    result = import_paths([flat], Store(root), catalog, deep=True)
    imported = by_id(result.imported)
    assert set(imported) == {"metro-hand", "j-regressor-extra"}
    assert imported["metro-hand"].matched == "name" and "hand-tiny" in imported["metro-hand"].model
    assert imported["j-regressor-extra"].matched == "hash"
    assert (root / HAND).read_bytes() == (flat / "METRO_HAND_STATE_DICT.BIN").read_bytes()
    [skip] = result.skipped
    assert skip.asset_id == "mesh-downsampling" and "the manifest pins mesh-downsampling" in skip.reason


def test_explicit_file_argument(tmp_path, catalog):
    ckpt = write_release_checkpoint(tmp_path / "dl" / "metro_3dpw_state_dict.bin", "body", "tiny", seed=4)
    result = import_paths([ckpt], Store(tmp_path / "root"), catalog, deep=True)
    assert [(i.asset_id, i.matched) for i in result.imported] == [("metro-3dpw", "name")]


# --------------------------------------------------------------------------- placement

def test_copy_instead_of_link(tmp_path, checkout, catalog):
    root = tmp_path / "root"
    result = import_paths([checkout], Store(root), catalog, deep=False, link=False)
    mt = checkout / "MeshTransformer"
    for imp in result.imported:
        if imp.matched != "content":
            assert imp.how == "copy"
            assert os.stat(root / imp.path).st_ino != os.stat(mt / imp.path).st_ino
            assert (root / imp.path).read_bytes() == (mt / imp.path).read_bytes()
            assert (root / imp.path).stat().st_mode & 0o777 == 0o644


def test_other_filesystem_falls_back_to_a_verified_copy(tmp_path, checkout, catalog, monkeypatch):
    def no_link(src, dst, *a, **kw):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", no_link)
    root = tmp_path / "root"
    result = import_paths([checkout], Store(root), catalog, deep=False)
    tree = [i for i in result.imported if i.matched != "content"]
    assert tree and {i.how for i in tree} == {"copy"}
    assert Store(root).lock_entry("metro-h36m")["placed"] == "copy"


def test_a_zero_byte_or_different_file_in_the_root_is_replaced(tmp_path, checkout, catalog):
    root = tmp_path / "root"
    write(root / H36M, b"")                      # the root has its own wget leftover
    write(root / J_EXTRA, _npy()[:-8] + b"garbage!")
    result = import_paths([checkout], Store(root), catalog, deep=False)
    imported = by_id(result.imported)
    assert "replaced a 0-byte file" in imported["metro-h36m"].note
    assert "replaced a different file" in imported["j-regressor-extra"].note
    assert (root / H36M).read_bytes() == (checkout / "MeshTransformer" / H36M).read_bytes()
    assert (root / J_EXTRA).read_bytes() == SUPPORT["j-regressor-extra"][1]


def test_a_recorded_checkpoint_in_place_is_kept(tmp_path, checkout, catalog):
    root = tmp_path / "root"
    import_paths([checkout], Store(root), catalog, deep=False)
    recorded = Store(root).lock_entry("metro-h36m")["sha256"]
    other = write_release_checkpoint(tmp_path / "other" / "metro_h36m_state_dict.bin", "body", "tiny", seed=9)
    result = import_paths([other], Store(root), catalog, deep=False)
    [skip] = result.skipped
    assert "kept that one" in skip.reason and not result.ok
    assert Store(root).lock_entry("metro-h36m")["sha256"] == recorded


def test_two_copies_in_one_tree(tmp_path, checkout, catalog):
    """A MeshGraphormer checkout beside it: the same support file again, and a different h36m."""
    mg = checkout / "MeshGraphormer"
    write(mg / "src" / "modeling" / "data" / "J_regressor_extra.npy", SUPPORT["j-regressor-extra"][1])
    write_release_checkpoint(mg / H36M, "body", "tiny", seed=7)
    result = import_paths([checkout], Store(tmp_path / "root"), catalog, deep=False)
    present = [p for p in result.already_present if p.asset_id == "j-regressor-extra"]
    assert len(present) == 1 and "same file as" in present[0].note
    assert present[0].source.startswith(str(mg))                 # a path match beats a name match
    # two different checkpoints at the same catalog path: the first in path order wins, the other is reported
    assert by_id(result.imported)["metro-h36m"].source == str(mg / H36M)
    [skip] = [s for s in result.skipped if s.asset_id == "metro-h36m"]
    assert skip.source == str(checkout / "MeshTransformer" / H36M) and "kept that one" in skip.reason


# --------------------------------------------------------------------------- CLI

def test_cli_json_no_deep_and_exit_codes(tmp_path, checkout, manifest):
    runner = CliRunner()
    root = tmp_path / "root"
    r = runner.invoke(app, ["import", str(checkout), "--root", str(root), "--manifest", str(manifest),
                            "--no-deep", "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    imported = {i["asset_id"]: i for i in doc["imported"]}
    # without the deep check the mislabelled body checkpoint passes the structural check: that is what --no-deep means
    assert "metro-hand" in imported and "deep check not run" in imported["metro-hand"]["note"]
    assert imported["metro-h36m"]["how"] == "hardlink"
    assert any(ZERO_BYTE_NOTE in s["reason"] for s in doc["skipped"])

    junk = tmp_path / "junk"
    write(junk / "models" / "metro_release" / "metro_h36m_state_dict.bin", b"")
    write(junk / "metro_hand_state_dict.bin", HTML)
    r = runner.invoke(app, ["import", str(junk), "--root", str(tmp_path / "root2")])
    assert r.exit_code == 1
    assert ZERO_BYTE_NOTE in r.output and HTML_NOTE in r.output and "nothing METRO uses was found" in r.output
    r = runner.invoke(app, ["import", str(tmp_path / "nope"), "--root", str(root)])
    assert r.exit_code == 2


def test_import_help_names_the_flags_and_does_not_import_torch():
    r = CliRunner().invoke(app, ["import", "--help"], env={"COLUMNS": "200"})
    assert r.exit_code == 0
    for flag in ("--no-deep", "--copy", "--clean", "--json", "--manifest", "--root"):
        assert flag in r.stdout
    code = ("import sys, runpy; sys.argv=['metro-assets','import','--help']\n"
            "try:\n    runpy.run_module('metro_assets', run_name='__main__')\n"
            "except SystemExit:\n    pass\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
