"""metro-assets import / export smplx with generated official-style archives."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import bodymodel_fixtures as bf
from bodymodel_fixtures import bodymodel_files  # noqa: F401  (session fixture)
from metro_assets.bodymodels import uses_chumpy
from metro_assets.cli import app
from metro_assets.export import export_smplx
from metro_assets.importer import ORIGINALS_DIR, import_paths, manual_instructions
from metro_assets.manifest import load_catalog
from metro_assets.safe_pickle import load_body_model
from metro_assets.store import Store

DATA = "metro/modeling/data"
PATHS = {
    "smpl-neutral": f"{DATA}/basicModel_neutral_lbs_10_207_0_v1.0.0.pkl",
    "smpl-female": f"{DATA}/basicModel_f_lbs_10_207_0_v1.0.0.pkl",
    "smpl-male": f"{DATA}/basicModel_m_lbs_10_207_0_v1.0.0.pkl",
    "mano-right": f"{DATA}/MANO_RIGHT.pkl",
}
MEMBER_BYTES = {"smpl-neutral": "neutral", "smpl-female": "female", "smpl-male": "male", "mano-right": "right"}


@pytest.fixture(scope="module")
def catalog():
    return load_catalog()


@pytest.fixture(autouse=True)
def no_chumpy(monkeypatch):
    """Every test here runs as if chumpy were not installed."""
    monkeypatch.setitem(sys.modules, "chumpy", None)


@pytest.fixture
def downloads(tmp_path, bodymodel_files):
    """~/Downloads with the three official archives (and unrelated clutter)."""
    d = tmp_path / "Downloads"
    d.mkdir()
    for name, p in bodymodel_files.zips().items():
        shutil.copyfile(p, d / name)
    (d / "holiday.jpg").write_bytes(b"\xff\xd8\xff")
    with zipfile.ZipFile(d / "unrelated.zip", "w") as z:
        z.writestr("notes/readme.txt", "hi")
    return d


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def assert_placed(root: Path, asset_id: str, expected: bytes, source_part: str):
    dest = root / PATHS[asset_id]
    assert dest.read_bytes() == expected
    entry = Store(root).lock_entry(asset_id)
    assert entry["path"] == PATHS[asset_id] and entry["how"] == "import"
    assert entry["sha256"] == sha(expected) and entry["size"] == len(expected)
    assert source_part in entry["source"]
    assert Store(root).stamped_sha(dest, os.stat(dest)) == sha(expected)
    assert not [p for p in dest.parent.iterdir() if p.name.startswith(".")], "temp files left beside the dest"


# --------------------------------------------------------------------------- archives, files, dirs

@pytest.mark.parametrize("archive,ids", [
    (bf.SMPLIFY_ZIP, ["smpl-neutral"]),
    (bf.SMPL_ZIP, ["smpl-female", "smpl-male"]),
    (bf.MANO_ZIP, ["mano-right"]),
])
def test_each_official_archive(tmp_path, bodymodel_files, catalog, archive, ids):
    root = tmp_path / "root"
    result = import_paths([bodymodel_files.zips()[archive]], Store(root), catalog)
    assert sorted(i.asset_id for i in result.imported) == sorted(ids)
    for aid in ids:
        assert_placed(root, aid, bodymodel_files.bytes(MEMBER_BYTES[aid]), f"{archive}!")
    reasons = " | ".join(f"{s.source}: {s.reason}" for s in result.skipped)
    if archive == bf.SMPL_ZIP:
        # the lower-case male member lands at METRO's basicModel_m name; AppleDouble decoys are skipped
        assert "!smpl/models/basicmodel_m_lbs_10_207_0_v1.0.0.pkl" in Store(root).lock_entry("smpl-male")["source"]
        assert reasons.count("AppleDouble") == 2 and "__MACOSX" in reasons
    if archive == bf.MANO_ZIP:
        assert "MANO_LEFT.pkl: MANO left" in reasons and "METRO does not use it" in reasons
        assert reasons.count("not an SMPL or MANO model") == 2
    assert not (root / DATA / "MANO_LEFT.pkl").exists()


def test_one_import_of_downloads_places_everything(tmp_path, downloads, catalog, bodymodel_files):
    root = tmp_path / "root"
    before = {p: p.read_bytes() for p in downloads.iterdir()}
    result = import_paths([downloads], Store(root), catalog)
    assert result.placed == PATHS
    for aid in PATHS:
        assert_placed(root, aid, bodymodel_files.bytes(MEMBER_BYTES[aid]), str(downloads))
    assert {p: p.read_bytes() for p in downloads.iterdir()} == before, "the user's files must not change"
    for aid in PATHS:   # usable without chumpy by METRO-style loading
        assert load_body_model(root / PATHS[aid])["v_template"].shape[1] == 3


def test_loose_files_including_the_lower_case_male_name(tmp_path, bodymodel_files, catalog):
    root = tmp_path / "root"
    male = bodymodel_files.file("male", "basicmodel_m_lbs_10_207_0_v1.0.0.pkl")
    mano = bodymodel_files.file("right", "MANO_RIGHT.pkl")
    result = import_paths([male, mano], Store(root), catalog)
    assert {i.asset_id for i in result.imported} == {"smpl-male", "mano-right"}
    assert_placed(root, "smpl-male", bodymodel_files.bytes("male"), str(male))
    assert male.exists()


def test_an_old_metro_checkout_directory(tmp_path, bodymodel_files, catalog):
    old = tmp_path / "old-METRO" / "metro" / "modeling" / "data"
    old.mkdir(parents=True)
    (old / "basicModel_neutral_lbs_10_207_0_v1.0.0.pkl").write_bytes(bodymodel_files.bytes("neutral"))
    (old / "MANO_RIGHT.pkl").write_bytes(bodymodel_files.bytes("right"))
    (old / "._MANO_RIGHT.pkl").write_bytes(bf.APPLEDOUBLE)
    (old / "J_regressor_extra.npy").write_bytes(b"\x93NUMPY")
    root = tmp_path / "root"
    result = import_paths([tmp_path / "old-METRO"], Store(root), catalog)
    assert {i.asset_id for i in result.imported} == {"smpl-neutral", "mano-right"}
    assert any("AppleDouble" in s.reason for s in result.skipped)


def test_content_decides_not_the_name(tmp_path, bodymodel_files, catalog):
    """A female model saved under the male name goes to the female path, with a note."""
    f = bodymodel_files.file("female", "basicModel_m_lbs_10_207_0_v1.0.0.pkl")
    result = import_paths([f], Store(tmp_path / "root"), catalog)
    [imp] = result.imported
    assert imp.asset_id == "smpl-female" and "named like SMPL male" in imp.note


# --------------------------------------------------------------------------- refusals

def test_malicious_pickle_is_refused_and_not_run(tmp_path, catalog):
    marker = tmp_path / "pwned"
    bad = tmp_path / "MANO_RIGHT.pkl"
    bad.write_bytes(bf.malicious_pickle(f"touch {marker}"))
    root = tmp_path / "root"
    result = import_paths([bad], Store(root), catalog)
    assert not result.ok and not marker.exists()
    [skip] = result.skipped
    assert "posix.system" in skip.reason
    assert not (root / PATHS["mano-right"]).exists() and Store(root).lock_entry("mano-right") is None


def test_smpl_with_300_shape_components_is_refused_with_what_was_expected(tmp_path, catalog):
    p = bf.write_smpl_pickle(tmp_path / "SMPL_NEUTRAL.pkl", gender="neutral", shape_components=300)
    result = import_paths([p], Store(tmp_path / "root"), catalog)
    [skip] = result.skipped
    assert "expected shapedirs (6890,3,10), got shapedirs (6890,3,300)" in skip.reason
    assert not result.imported


def test_a_left_hand_under_the_right_name_is_refused(tmp_path, bodymodel_files, catalog):
    p = bodymodel_files.file("left", "MANO_RIGHT.pkl")
    result = import_paths([p], Store(tmp_path / "root"), catalog)
    [skip] = result.skipped
    assert "MANO left" in skip.reason and "named like MANO right" in skip.reason
    assert not result.imported


def test_a_zero_byte_and_an_html_file_are_skipped(tmp_path, catalog):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "MANO_RIGHT.pkl").write_bytes(b"")
    (tmp_path / "in" / "basicModel_neutral_lbs_10_207_0_v1.0.0.pkl").write_bytes(b"<!DOCTYPE html><html>login</html>")
    result = import_paths([tmp_path / "in"], Store(tmp_path / "root"), catalog)
    assert len(result.skipped) == 2 and not result.ok


# --------------------------------------------------------------------------- idempotence, clean

def test_importing_the_same_file_twice_is_already_present(tmp_path, bodymodel_files, catalog):
    root = tmp_path / "root"
    archive = bodymodel_files.zips()[bf.MANO_ZIP]
    import_paths([archive], Store(root), catalog)
    dest = root / PATHS["mano-right"]
    st = os.stat(dest)
    again = import_paths([archive], Store(root), catalog)
    assert not again.imported and [p.asset_id for p in again.already_present] == ["mano-right"]
    st2 = os.stat(dest)
    assert (st.st_ino, st.st_mtime_ns) == (st2.st_ino, st2.st_mtime_ns), "no rewrite"


def test_clean_places_a_chumpy_free_copy_and_keeps_the_original(tmp_path, bodymodel_files, catalog):
    root = tmp_path / "root"
    original = bodymodel_files.bytes("right")
    result = import_paths([bodymodel_files.zips()[bf.MANO_ZIP]], Store(root), catalog, clean=True)
    [imp] = result.imported
    dest = root / PATHS["mano-right"]
    data = dest.read_bytes()
    assert imp.clean and not uses_chumpy(data) and uses_chumpy(original)
    entry = Store(root).lock_entry("mano-right")
    assert entry["sha256"] == sha(data) == imp.sha256            # verify checks what is at the path
    assert entry["original_sha256"] == sha(original) and entry["clean"] is True
    assert (root / entry["original"]).read_bytes() == original
    assert entry["original"] == f"{ORIGINALS_DIR}/{sha(original)}.pkl"
    # same values as the official file, readable by stock pickle (no chumpy)
    import pickle
    plain = pickle.loads(data, encoding="latin1")
    np.testing.assert_array_equal(plain["shapedirs"], load_body_model(dest)["shapedirs"])
    # idempotent with and without --clean: the clean copy stays
    for flag in (True, False):
        again = import_paths([bodymodel_files.zips()[bf.MANO_ZIP]], Store(root), catalog, clean=flag)
        assert not again.imported and again.already_present[0].sha256 == sha(data)


# --------------------------------------------------------------------------- export + smplx

def test_export_smplx_layout_runs_a_forward_pass(tmp_path, downloads, catalog):
    torch = pytest.importorskip("torch")
    smplx = pytest.importorskip("smplx")
    root = tmp_path / "root"
    import_paths([downloads], Store(root), catalog)
    out = tmp_path / "smplx-models"
    result = export_smplx(Store(root), catalog, out)
    assert {e.asset_id: e.how for e in result.exported} == {a: "cleaned" for a in PATHS}
    for g in ("NEUTRAL", "FEMALE", "MALE"):
        assert not uses_chumpy((out / "smpl" / f"SMPL_{g}.pkl").read_bytes())
    for gender in ("neutral", "female", "male"):
        model = smplx.create(str(out), model_type="smpl", gender=gender)
        assert model(betas=torch.zeros(1, 10)).vertices.shape == (1, 6890, 3)
    mano = smplx.create(str(out), model_type="mano", use_pca=False)
    assert mano().vertices.shape == (1, 778, 3)


def test_export_links_files_that_are_already_clean(tmp_path, bodymodel_files, catalog):
    root = tmp_path / "root"
    import_paths([bodymodel_files.zips()[bf.MANO_ZIP]], Store(root), catalog, clean=True)
    result = export_smplx(Store(root), catalog, tmp_path / "out")
    assert [(e.asset_id, e.how) for e in result.exported] == [("mano-right", "linked")]
    assert {a for a, _ in result.missing} == {"smpl-neutral", "smpl-female", "smpl-male"}


# --------------------------------------------------------------------------- CLI

def test_cli_import_json_and_export(tmp_path, downloads):
    root = tmp_path / "root"
    runner = CliRunner()
    r = runner.invoke(app, ["import", str(downloads), "--root", str(root), "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["ok"] and {i["asset_id"] for i in doc["imported"]} == set(PATHS)
    assert any("AppleDouble" in s["reason"] for s in doc["skipped"])
    r = runner.invoke(app, ["import", str(downloads), "--root", str(root)])
    assert r.exit_code == 0 and "0 imported, 4 already present" in r.stdout
    r = runner.invoke(app, ["export", "smplx", str(tmp_path / "x"), "--root", str(root), "--json"])
    assert r.exit_code == 0 and len(json.loads(r.stdout)["exported"]) == 4


def test_cli_import_failures(tmp_path):
    runner = CliRunner()
    r = runner.invoke(app, ["import", str(tmp_path / "nope.zip"), "--root", str(tmp_path / "root")])
    assert r.exit_code == 2 and "No such file or directory" in r.output
    bad = tmp_path / "MANO_RIGHT.pkl"
    bad.write_bytes(bf.malicious_pickle())
    r = runner.invoke(app, ["import", str(bad), "--root", str(tmp_path / "root")])
    assert r.exit_code == 1 and "posix.system" in r.output
    r = runner.invoke(app, ["export", "obj", str(tmp_path / "x"), "--root", str(tmp_path / "root")])
    assert r.exit_code == 2 and "smplx" in r.output


def test_manual_instructions_name_site_archive_member_and_command(catalog, tmp_path):
    text = manual_instructions(catalog.get("smpl-male"), root=tmp_path)
    for part in ("https://smpl.is.tue.mpg.de", "SMPL_python_v.1.0.0.zip", "smpl/models/basicmodel_m_lbs_10_207_0_v1.0.0.pkl",
                 "lower-case m", f"metro-assets import ~/Downloads/SMPL_python_v.1.0.0.zip --root {tmp_path}"):
        assert part in text
