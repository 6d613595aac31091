"""demo: the synthetic samples are structurally faithful, the demo server speaks Range/ETag,
and `metro-assets demo` runs end to end (the last test takes about 1-2 minutes and ~7 GB of disk)."""
from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pytest

from metro_assets.demo import samples as S
from metro_assets.demo.run import MARKER, run_demo
from metro_assets.demo.server import DemoServer
from metro_assets.errors import UsageError
from metro_assets.manifest import load_catalog
from metro_assets.safe_pickle import load_body_model

REPO = Path(__file__).resolve().parent.parent
# the samples name scipy.sparse.csc.csc_matrix exactly like the real files; scipy warns about that path
LEGACY_SPARSE = pytest.mark.filterwarnings("ignore:Please import `csc_matrix`:DeprecationWarning")


# --------------------------------------------------------------------------- samples

@pytest.mark.parametrize("v,f,closed", [(6890, 13776, True), (1723, 3442, True), (431, 858, True),
                                        (778, 1538, False), (195, 374, False), (4, 3, False)])
def test_ring_meshes_have_the_real_counts_and_valid_topology(v, f, closed):
    verts, faces = S.ring_mesh(v, f, closed=closed, rng=np.random.default_rng(0))
    assert verts.shape == (v, 3) and faces.shape == (f, 3) and faces.dtype == np.uint32
    assert faces.max() == v - 1 and len(np.unique(faces)) == v          # every vertex used
    edges = np.sort(np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]), axis=1)
    _, counts = np.unique(edges, axis=0, return_counts=True)
    if closed:
        assert set(counts) == {2}                                           # a closed surface
    else:
        assert set(counts) <= {1, 2} and (counts == 1).sum() == 2 * v - 2 - f   # one boundary loop (the wrist)


@LEGACY_SPARSE
def test_support_data_reads_like_upstream(tmp_path):
    from metro_assets.model.template import load_body_support, load_hand_support

    data = tmp_path / "metro" / "modeling" / "data"
    data.mkdir(parents=True)
    (data / "mesh_downsampling.npz").write_bytes(S.mesh_downsampling_bytes())
    (data / "mano_downsampling.npz").write_bytes(S.mano_downsampling_bytes())
    reg = S.joint_regressor(17, seed=17)
    (data / "J_regressor_h36m_correct.npy").write_bytes(S._npy(reg))
    assert reg.shape == (17, 6890) and np.allclose(reg.sum(1), 1) and (reg >= 0).all()
    body, hand = load_body_support(data), load_hand_support(data)        # the model's own restricted reader
    assert body.sub_index.shape == (1723,) and body.sub2_index.shape == (431,) and body.faces.shape == (13776, 3)
    assert hand.sub_index.shape == (195,) and hand.faces.shape == (1538, 3)
    # upstream's way: numpy with pickles allowed, python-2 strings; uncompressed members in upstream's order
    with zipfile.ZipFile(data / "mesh_downsampling.npz") as z:
        assert [i.filename for i in z.infolist()] == ["A.npy", "U.npy", "M.npy", "D.npy", "F.npy"]
        assert {i.compress_type for i in z.infolist()} == {zipfile.ZIP_STORED}
        assert b"scipy.sparse.csc\ncsc_matrix" in z.read("D.npy")
    z = np.load(data / "mesh_downsampling.npz", allow_pickle=True, encoding="latin1")
    assert [a.shape for a in z["A"]] == [(6890, 6890), (1723, 1723), (431, 431)]
    assert [a.nnz for a in z["A"]] == [41328, 10326, 2574]                  # the real files' edge counts
    assert [u.shape for u in z["U"]] == [(6890, 1723), (1723, 431)] and np.allclose(z["U"][0].sum(1), 1)
    assert [d.nnz for d in z["D"]] == [1723, 431] and z["D"][0].indices.dtype == np.int32
    assert [f.shape for f in z["F"]] == [(13776, 3), (3442, 3), (858, 3)]
    m = np.load(data / "mano_downsampling.npz", allow_pickle=True, encoding="latin1")
    assert sorted(m.files) == ["A", "D", "F", "U", "V"]
    assert [d.shape for d in m["D"]] == [(195, 778), (49, 195), (13, 49), (4, 13)]
    assert [v.shape for v in m["V"]] == [(778, 3), (195, 3), (49, 3), (13, 3), (4, 3)]


@LEGACY_SPARSE
def test_body_models_are_full_size_chumpy_pickles(tmp_path):
    smpl = tmp_path / "smpl.pkl"
    smpl.write_bytes(S.smpl_bytes("neutral"))
    raw = smpl.read_bytes()
    assert raw.startswith(b"\x80\x02") and b"cchumpy.ch\nCh\n" in raw and b"cscipy.sparse.csc\ncsc_matrix\n" in raw
    import pickle

    with pytest.raises(UnicodeDecodeError):                                  # python-2 strings, like the real files
        pickle.loads(raw)
    m = load_body_model(smpl)
    assert m["v_template"].shape == (6890, 3) and m["f"].shape == (13776, 3) and m["J_regressor"].shape == (24, 6890)
    assert m["shapedirs"].shape == (6890, 3, 10) and m["posedirs"].shape == (6890, 3, 207)
    assert m["weights"].shape == (6890, 24) and m["kintree_table"].shape == (2, 24)
    assert np.allclose(np.asarray(m["J_regressor"].sum(1)).ravel(), 1)
    mano = tmp_path / "mano.pkl"
    mano.write_bytes(S.mano_bytes("right"))
    assert b"cchumpy.reordering\nSelect\n" in mano.read_bytes()
    h = load_body_model(mano)
    assert h["v_template"].shape == (778, 3) and h["f"].shape == (1538, 3) and h["shapedirs"].shape == (778, 3, 10)
    assert h["posedirs"].shape == (778, 3, 135) and h["hands_components"].shape == (45, 45) and h["hands_mean"].shape == (45,)
    # the body model's faces are the support data's level-0 faces, as upstream's are
    assert np.array_equal(m["f"], S.body_hierarchy().faces[0])


def test_official_style_archives(tmp_path):
    out = S.write_official_zips(tmp_path, models={k: b"\x80\x02}q\x00." for k in ("neutral", "female", "male", "right", "left")})
    assert set(out) == {S.SMPLIFY_ZIP, S.SMPL_ZIP, S.MANO_ZIP}
    with zipfile.ZipFile(out[S.SMPL_ZIP]) as z:
        names = z.namelist()
    assert "smpl/models/basicmodel_m_lbs_10_207_0_v1.0.0.pkl" in names                 # lower-case m, as shipped
    assert any(n.startswith("__MACOSX/") for n in names) and "smpl/SYNTHETIC.txt" in names
    with zipfile.ZipFile(out[S.MANO_ZIP]) as z:
        assert {"mano_v1_2/models/MANO_RIGHT.pkl", "mano_v1_2/models/MANO_LEFT.pkl"} <= set(z.namelist())


def test_sample_manifest_overrides_pinned_assets(tmp_path):
    catalog = load_catalog()
    files = []
    for aid in S.PINNED:
        p = tmp_path / aid
        data = aid.encode() * 10
        p.write_bytes(data)
        files.append(S.SampleFile(aid, p, len(data), hashlib.sha256(data).hexdigest(), 0.0))
    samples = S.SampleSet(tmp_path, tmp_path, tuple(files), (), 0.0)
    man = tmp_path / "sample-manifest.yaml"
    man.write_text(S.sample_manifest_text(samples, catalog))
    merged = load_catalog([man]).by_id()
    for f in files:
        a = merged[f.asset_id]
        assert (a.size, a.sha256) == (f.size, f.sha256) and a.description.startswith("SYNTHETIC")
        assert a.path == catalog.get(f.asset_id).path
    assert merged["metro-h36m"].sha256 is None                                       # untouched


# --------------------------------------------------------------------------- server

def _get(url, headers=None, method="GET"):
    req = urllib.request.Request(url, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def test_demo_server_range_etag_head(tmp_path):
    data = os.urandom(100_000)
    (tmp_path / "a b").mkdir()
    (tmp_path / "a b" / "f.bin").write_bytes(data)
    (tmp_path.parent / "secret.txt").write_text("no")
    with DemoServer(tmp_path) as srv:
        url = srv.url + "/a%20b/f.bin"
        st, h, body = _get(url)
        assert st == 200 and body == data and h["Accept-Ranges"] == "bytes" and h["ETag"]
        st, h2, body = _get(url, {"Range": "bytes=10-19"})
        assert st == 206 and body == data[10:20] and h2["Content-Range"] == f"bytes 10-19/{len(data)}"
        assert _get(url, {"Range": "bytes=-5"})[2] == data[-5:]
        assert _get(url, {"Range": "bytes=99990-"})[2] == data[99990:]
        st, _, body = _get(url, {"Range": "bytes=5-9", "If-Range": h["ETag"]})
        assert st == 206 and body == data[5:10]
        st, _, body = _get(url, {"Range": "bytes=5-9", "If-Range": '"stale"'})      # changed: whole file
        assert st == 200 and body == data
        assert _get(url, {"Range": "bytes=200000-"})[0] == 416
        st, h3, body = _get(url, method="HEAD")
        assert st == 200 and body == b"" and h3["Content-Length"] == str(len(data))
        assert _get(srv.url + "/missing.bin")[0] == 404
        assert _get(srv.url + "/../secret.txt")[0] == 404
        assert srv.url.startswith("http://127.0.0.1:")


# --------------------------------------------------------------------------- the flow

def test_demo_refuses_a_non_empty_root(tmp_path):
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(UsageError):
        run_demo(tmp_path, log=lambda s: None)
    assert (tmp_path / "precious.txt").read_text() == "keep me"
    r = subprocess.run([sys.executable, "-m", "metro_assets", "demo", "--root", str(tmp_path)], cwd=REPO,
                       capture_output=True, text=True)
    assert r.returncode == 2 and "not empty" in r.stderr


def test_demo_failure_is_reported_and_cleaned_up(tmp_path, monkeypatch):
    def broken(*a, **kw):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(S, "build_samples", broken)
    lines = []
    root = tmp_path / "new"
    result = run_demo(root, log=lines.append)
    assert result.exit_code == 1 and not result.ok
    assert result.steps[0].name == "build samples" and "No space left" in result.steps[0].note
    assert not root.exists()                                  # we made it, we removed it
    empty = tmp_path / "empty"
    empty.mkdir()
    run_demo(empty, log=lines.append)
    assert empty.is_dir() and not any(empty.iterdir())       # the user's directory stays, emptied


@pytest.mark.slow
def test_demo_end_to_end(tmp_path):
    """The README's first command, for real: ~1-2 minutes, ~7 GB of temporary disk, no network."""
    root = tmp_path / "demo"
    env = {k: v for k, v in os.environ.items() if not k.startswith("METRO_ASSETS_")}
    env["NO_COLOR"] = "1"
    r = subprocess.run([sys.executable, "-m", "metro_assets", "demo", "--root", str(root), "--keep"], cwd=REPO,
                       env=env, capture_output=True, text=True, timeout=600)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-6000:]
    for cmd in ("$ metro-assets fetch all --root", "$ metro-assets import", "$ metro-assets verify --root",
                "$ metro-assets doctor --root", "$ metro-assets run-check all --root"):
        assert cmd in out, cmd
    assert "SYNTHETIC" in out and "demo passed; exit code 0" in out
    for step in ("build samples", "fetch all", "import body models", "verify", "doctor", "run-check all"):
        assert f"-- {step}: ok" in out
    pictures = sorted(root.glob("run-check*.png"))
    assert len(pictures) == 3 and all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pictures)
    assert (root / MARKER).exists() and (root / "sample-manifest.yaml").exists()
    tree = root / "metro-root"
    v = subprocess.run([sys.executable, "-m", "metro_assets", "verify", "--root", str(tree), "--manifest",
                        str(root / "sample-manifest.yaml"), "--json"], cwd=REPO, env=env, capture_output=True, text=True)
    assert v.returncode == 0, v.stdout[-3000:]
    # nothing half-written is left in the tree
    assert not list(tree.rglob("*.metro-part*")) and not list(tree.rglob("*.tmp"))
