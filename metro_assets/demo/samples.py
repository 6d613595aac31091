"""Synthetic sample assets: every file METRO needs, with random values, laid out like the real ones.

Nothing here is SMPL, MANO, METRO or HRNet data.  Each file copies the real
file's *structure* so that the real commands can run on it:

* checkpoints of the released architecture (legacy torch serialization, random
  weights; :func:`metro_assets.model.synthetic.write_release_checkpoint`) and
  ImageNet-HRNet-style backbones (the METRO backbone's keys without ``backbone.``);
* the two HRNet classification configs (same keys, marked synthetic);
* support data: ``J_regressor_*.npy`` (rows >= 0 summing to 1) and the
  ``mesh_downsampling.npz`` / ``mano_downsampling.npz`` hierarchies as upstream
  ships them: uncompressed npz of Python-2 protocol-2 pickled object arrays of
  ``scipy.sparse.csc.csc_matrix`` (A, U, D with exact 0/1 selection D) and
  uint32 faces (F);
* SMPL and MANO models as protocol-2 Python-2 pickles with chumpy objects
  (``chumpy.ch.Ch``; for MANO a ``chumpy.reordering.Select`` over a (778,3,20)
  Ch), full-size shapes and the official key order, inside the three
  official-style archives (same member names, lower-case ``basicmodel_m``,
  ``__MACOSX`` AppleDouble decoys, SMPL+H decoys);
* FreiHAND-style prediction archives.

Meshes are closed (SMPL, and each coarse level) or open at the wrist (MANO),
built from rings around an axis, so a rendered picture shows a surface.  Every
archive carries a ``SYNTHETIC.txt`` note; the manifest override describes each
file as "SYNTHETIC sample".

The body-model writers are also the tests' (tests/bodymodel_fixtures.py): they
ask for the cheaper "scatter" layout (see ``LAYOUTS``) and archives without the note.
"""
from __future__ import annotations

import hashlib
import io
import json
import time
import zipfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import scipy.sparse as sp

from metro_assets import safe_pickle
from metro_assets.safe_pickle import Py2Object

SYNTHETIC_NOTE = ("SYNTHETIC sample written by `metro-assets demo`: random values with the structure of the real "
                  "file. It is not SMPL, MANO, METRO or HRNet data and gives meaningless predictions.\n")
SYNTHETIC_DESCRIPTION = "SYNTHETIC sample (metro-assets demo): random values, real structure"

SMPL_V, SMPL_F, SMPL_J = 6890, 13776, 24
MANO_V, MANO_F, MANO_J = 778, 1538, 16
SMPL_PARENTS = [-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 20, 21]
MANO_PARENTS = [-1, 0, 1, 2, 0, 4, 5, 0, 7, 8, 0, 10, 11, 0, 13, 14]
BODY_LEVELS = ((6890, 13776), (1723, 3442), (431, 858))
HAND_LEVELS = ((778, 1538), (195, 374), (49, 88), (13, 18), (4, 3))
SEEDS = {"neutral": 11, "female": 12, "male": 13, "right": 21, "left": 21}

# Archive names and members, as the official downloads spell them.
SMPLIFY_ZIP = "mpips_smplify_public_v2.zip"
SMPL_ZIP = "SMPL_python_v.1.0.0.zip"
MANO_ZIP = "mano_v1_2.zip"
NEUTRAL_MEMBER = "smplify_public/code/models/basicModel_neutral_lbs_10_207_0_v1.0.0.pkl"
FEMALE_MEMBER = "smpl/models/basicModel_f_lbs_10_207_0_v1.0.0.pkl"
MALE_MEMBER = "smpl/models/basicmodel_m_lbs_10_207_0_v1.0.0.pkl"   # lower-case m, as shipped
MANO_RIGHT_MEMBER = "mano_v1_2/models/MANO_RIGHT.pkl"
MANO_LEFT_MEMBER = "mano_v1_2/models/MANO_LEFT.pkl"
APPLEDOUBLE = b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        " + b"\x00" * 58  # 82 bytes, not a pickle


# =========================================================================== Python-2 pickles

def dumps_py2(obj: Any) -> bytes:
    """Protocol-2, Python-2 style, sparse matrices named ``scipy.sparse.csc.csc_matrix`` like the official
    files, object arrays like upstream's npz members."""
    return safe_pickle.dumps_py2(obj, legacy_sparse=True, object_arrays=True)


def object_npy(items: Sequence[Any]) -> bytes:
    """An .npy holding a pickled object array, as numpy under Python 2 wrote upstream's npz members."""
    arr = np.empty(len(items), dtype=object)
    for i, x in enumerate(items):
        arr[i] = x
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "|O", "fortran_order": False, "shape": (len(items),)})
    buf.write(dumps_py2(arr))
    return buf.getvalue()


# =========================================================================== meshes

def ring_mesh(n_verts: int, n_faces: int, *, closed: bool, rng: np.random.Generator,
              length: float = 1.0, radius: float = 0.2) -> Tuple[np.ndarray, np.ndarray]:
    """A triangulated tube with the exact vertex and face counts asked for.

    Closed (two poles): F = 2V - 4, a sphere.  Open (one pole, one boundary of
    b = 2V - 2 - F vertices): a sack, like MANO's hand open at the wrist.
    Extra vertices beyond the ring grid split faces (each adds 1 vertex, 2 faces).
    """
    if closed:
        if n_faces != 2 * n_verts - 4:
            raise ValueError("a closed triangle mesh has F = 2V - 4")
        s = max(3, int(round(np.sqrt(n_verts - 2))))
        r = (n_verts - 2) // s
    else:
        s = 2 * n_verts - 2 - n_faces
        if s < 3:
            raise ValueError("open mesh needs a boundary of at least 3 vertices")
        r = (n_verts - 1) // s
    t = (np.arange(r) + (1.0 if closed else 0.0)) / (r + (1.0 if closed else 0.0))   # 0..1 along the axis
    ang = 2 * np.pi * np.arange(s) / s
    prof = np.sin(np.pi * t) if closed else np.sqrt(np.clip(1 - t ** 2, 0, 1))
    if not closed:
        prof = np.maximum(prof, 0.35)
    ring = np.stack([np.outer(prof, np.cos(ang)) * radius,
                     np.repeat((t * length)[:, None], s, axis=1),
                     np.outer(prof, np.sin(ang)) * radius], axis=-1).reshape(-1, 3)
    verts = [ring]
    faces: List[Tuple[int, int, int]] = []
    for i in range(r - 1):
        for j in range(s):
            a, b = i * s + j, i * s + (j + 1) % s
            c, d = a + s, b + s
            faces += [(a, c, b), (b, c, d)]
    top = r * s
    verts.append(np.array([[0.0, length * (1.0 if closed else 1.02), 0.0]]))
    faces += [((r - 1) * s + j, top, (r - 1) * s + (j + 1) % s) for j in range(s)]
    if closed:
        bottom = top + 1
        verts.append(np.array([[0.0, 0.0, 0.0]]))
        faces += [(bottom, j, (j + 1) % s) for j in range(s)]
    v = np.concatenate(verts)
    f = np.array(faces, dtype=np.int64)
    while len(v) < n_verts:             # split a face: +1 vertex, +2 faces
        k = int(rng.integers(len(f)))
        a, b, c = f[k]
        n = len(v)
        v = np.vstack([v, v[[a, b, c]].mean(axis=0)])
        f[k] = (a, b, n)
        f = np.vstack([f, [(b, c, n), (c, a, n)]])
    assert v.shape == (n_verts, 3) and f.shape == (n_faces, 3), (v.shape, f.shape)
    return v, f.astype(np.uint32)


def _adjacency(faces: np.ndarray, n: int) -> sp.csc_matrix:
    f = faces.astype(np.int64)
    i = np.concatenate([f[:, 0], f[:, 1], f[:, 2], f[:, 1], f[:, 2], f[:, 0]])
    j = np.concatenate([f[:, 1], f[:, 2], f[:, 0], f[:, 0], f[:, 1], f[:, 2]])
    a = sp.coo_matrix((np.ones(len(i)), (i, j)), shape=(n, n)).tocsc()
    a.data[:] = 1.0
    a.indices = a.indices.astype(np.int32)
    a.indptr = a.indptr.astype(np.int32)
    return a


def _csc(m) -> sp.csc_matrix:
    m = sp.csc_matrix(m)
    m.sort_indices()
    m.indices = m.indices.astype(np.int32)
    m.indptr = m.indptr.astype(np.int32)
    return m


def _selection(keep: np.ndarray, n: int) -> sp.csc_matrix:
    """(len(keep), n) 0/1 matrix with one 1.0 per row: the exact gather upstream's D matrices are."""
    return _csc(sp.coo_matrix((np.ones(len(keep)), (np.arange(len(keep)), keep)), shape=(len(keep), n)))


def _upsampling(fine: np.ndarray, coarse: np.ndarray, k: int = 3) -> sp.csc_matrix:
    """(n_fine, n_coarse): each fine vertex as a convex combination of its k nearest coarse vertices."""
    d = ((fine[:, None, :] - coarse[None, :, :]) ** 2).sum(-1)
    near = np.argsort(d, axis=1)[:, :k]
    w = 1.0 / (np.take_along_axis(d, near, 1) + 1e-9)
    w /= w.sum(axis=1, keepdims=True)
    rows = np.repeat(np.arange(len(fine)), k)
    return _csc(sp.coo_matrix((w.ravel(), (rows, near.ravel())), shape=(len(fine), len(coarse))))


@dataclass(frozen=True)
class Hierarchy:
    verts: Tuple[np.ndarray, ...]
    faces: Tuple[np.ndarray, ...]
    keep: Tuple[np.ndarray, ...]       # level i+1 vertices as indices into level i


def hierarchy(levels: Sequence[Tuple[int, int]], *, closed: bool, seed: int, length: float, radius: float) -> Hierarchy:
    """Meshes for every level; coarse level i+1 takes a sorted random subset of level i's vertices
    (so D is a selection) and its own triangulation of the same shape."""
    rng = np.random.default_rng(seed)
    v0, f0 = ring_mesh(*levels[0], closed=closed, rng=rng, length=length, radius=radius)
    verts, faces, keep = [v0], [f0], []
    for (n, nf) in levels[1:]:
        prev = verts[-1]
        idx = np.sort(rng.choice(len(prev), size=n, replace=False))
        keep.append(idx)
        _, fc = ring_mesh(n, nf, closed=closed, rng=rng, length=length, radius=radius)
        verts.append(prev[idx])
        faces.append(fc)
    return Hierarchy(tuple(verts), tuple(faces), tuple(keep))


@lru_cache(maxsize=None)
def body_hierarchy() -> Hierarchy:
    return hierarchy(BODY_LEVELS, closed=True, seed=5, length=1.7, radius=0.22)


@lru_cache(maxsize=None)
def hand_hierarchy() -> Hierarchy:
    return hierarchy(HAND_LEVELS, closed=False, seed=6, length=0.18, radius=0.04)


# =========================================================================== body models

def _kintree(parents) -> np.ndarray:
    t = np.zeros((2, len(parents)), dtype=np.int64)
    t[0] = [4294967295 if p < 0 else p for p in parents]
    t[1] = np.arange(len(parents))
    return t


def _nearest(v: np.ndarray, joints: np.ndarray) -> np.ndarray:
    return ((v[:, None, :] - joints[None, :, :]) ** 2).sum(-1).argmin(axis=1)


def _regressor(rng: np.random.Generator, assign: np.ndarray, n_joints: int, n_verts: int, per_joint: int) -> sp.csc_matrix:
    """Rows >= 0 summing to 1, each over a few vertices of its own cluster."""
    rows, cols, vals = [], [], []
    for j in range(n_joints):
        members = np.flatnonzero(assign == j)
        pick = rng.choice(members, size=min(per_joint, len(members)), replace=False)
        w = rng.random(len(pick)) + 0.1
        rows += [j] * len(pick)
        cols += list(pick)
        vals += list(w / w.sum())
    return sp.csc_matrix((np.array(vals), (np.array(rows), np.array(cols))), shape=(n_joints, n_verts))


def _weights(rng: np.random.Generator, assign: np.ndarray, n_joints: int) -> np.ndarray:
    w = rng.random((len(assign), n_joints)) * 0.05
    w[np.arange(len(assign)), assign] += 1.0
    return w / w.sum(axis=1, keepdims=True)


def _ch(x: np.ndarray) -> Py2Object:
    return Py2Object("chumpy.ch", "Ch", {"_make_sparse": False, "_dirty_vars": set(), "x": x, "_itr": None,
                                         "_depends_on_deps": {}, "_make_dense": False})


def _axis_joints(n: int, length: float, rng: np.random.Generator, spread: float) -> np.ndarray:
    """Joints inside the tube: along the axis, a little off it, every one owning some vertices."""
    y = np.linspace(0.08, 0.92, n) * length
    j = np.stack([rng.normal(scale=spread, size=n), y, rng.normal(scale=spread, size=n)], axis=1)
    return j


def _hand_joints() -> np.ndarray:
    """A right hand in MANO's frame: wrist at +x, fingers towards -x, thumb at +z, below the palm."""
    j = np.zeros((MANO_J, 3))
    j[0] = (0.095, 0.006, 0.006)
    # index, middle, pinky, ring (MANO order), three joints each
    for base, z in ((1, 0.027), (4, 0.003), (7, -0.040), (10, -0.020)):
        for k in range(3):
            j[base + k] = (0.008 - 0.025 * k, 0.004, z - 0.003 * k)
    for k in range(3):
        j[13 + k] = (0.072 - 0.021 * k, -0.010 - 0.002 * k, 0.032 + 0.019 * k)
    return j


# How a model's vertices, joints and faces are laid out:
#   "mesh"    the ring meshes of the downsampling hierarchies (closed SMPL, MANO open at the wrist), joints
#             inside along the axis, each vertex skinned to its nearest joint: a picture shows a surface;
#   "scatter" vertices scattered around the joints (for MANO an anatomical right hand, so its chirality is
#             decidable from the joints) and random faces: no mesh to build, the tests' stand-ins.
LAYOUTS = ("mesh", "scatter")


def _mesh_owners(v: np.ndarray, n_joints: int, rng: np.random.Generator, spread: float) -> np.ndarray:
    """Each vertex's joint (the nearest of joints along the axis), every joint owning at least one vertex."""
    assign = _nearest(v, _axis_joints(n_joints, v[:, 1].max(), rng, spread))
    missing = np.setdiff1d(np.arange(n_joints), assign)
    assign[missing] = missing
    return assign


def _scatter(rng: np.random.Generator, joints: np.ndarray, n_verts: int, noise: float) -> Tuple[np.ndarray, np.ndarray]:
    """(vertices, owner joint of each): vertices near random joints, the first ones one per joint."""
    assign = rng.integers(0, len(joints), size=n_verts)
    assign[:len(joints)] = np.arange(len(joints))          # every joint owns vertices
    return joints[assign] + rng.normal(scale=noise, size=(n_verts, 3)), assign


def _layout_faces(layout: str, rng: np.random.Generator, mesh_faces: Callable[[], np.ndarray],
                  n_faces: int, n_verts: int) -> np.ndarray:
    if layout == "mesh":
        return mesh_faces().copy()
    return rng.integers(0, n_verts, size=(n_faces, 3), dtype=np.uint32)


def _check_layout(layout: str) -> None:
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, not {layout!r}")


def smpl_model(gender: str = "neutral", *, shape_components: int = 10, seed: Optional[int] = None,
               layout: str = "mesh") -> Dict[str, Any]:
    """Plain values of a synthetic SMPL model in the official key order (see LAYOUTS; with "mesh",
    faces = mesh_downsampling F[0])."""
    _check_layout(layout)
    rng = np.random.default_rng(SEEDS.get(gender, 10) if seed is None else seed)
    if layout == "mesh":
        v_template = body_hierarchy().verts[0] * (1.0 + 0.03 * rng.standard_normal())   # genders differ a little in size
        assign = _mesh_owners(v_template, SMPL_J, rng, 0.03)
    else:
        v_template, assign = _scatter(rng, rng.normal(scale=0.3, size=(SMPL_J, 3)), SMPL_V, 0.02)
    jreg = _regressor(rng, assign, SMPL_J, SMPL_V, 8)
    weights = _weights(rng, assign, SMPL_J)
    f = _layout_faces(layout, rng, lambda: body_hierarchy().faces[0], SMPL_F, SMPL_V)
    info = {"expid": "tj10smooth", "J_regressor_prior_wt": 10.0, "restpose_type": "t", "bs_style": "lbs",
            "gender": gender, "bs_type": "lrotmin"}
    return {
        "J_regressor_prior": jreg.copy(),
        "f": f,
        "J_regressor": jreg,
        "kintree_table": _kintree(SMPL_PARENTS),
        "J": np.asarray(jreg @ v_template),
        "weights_prior": weights.copy(),
        "weights": weights,
        "vert_sym_idxs": rng.permutation(SMPL_V).astype(np.int64),
        "posedirs": rng.standard_normal((SMPL_V, 3, 207)) * 1e-3,
        "pose_training_info": info,
        "bs_style": "lbs",
        "v_template": v_template,
        "shapedirs": rng.standard_normal((SMPL_V, 3, shape_components)) * 1e-2,
        "bs_type": "lrotmin",
    }


def mano_model(side: str = "right", *, shape_components: int = 10, seed: Optional[int] = None,
               layout: str = "mesh") -> Dict[str, Any]:
    """Plain values of a synthetic MANO model (see LAYOUTS).  The left hand mirrors the right in x (faces
    reversed, hand pose y/z negated) but keeps the right's shapedirs x sign, as the official MANO_LEFT does."""
    if side not in ("right", "left"):
        raise ValueError(side)
    _check_layout(layout)
    rng = np.random.default_rng(SEEDS["right"] if seed is None else seed)
    if layout == "mesh":
        v_template = hand_hierarchy().verts[0].copy()
        assign = _mesh_owners(v_template, MANO_J, rng, 0.008)
    else:
        v_template, assign = _scatter(rng, _hand_joints(), MANO_V, 0.004)
    jreg = _regressor(rng, assign, MANO_J, MANO_V, 12)
    comps, _ = np.linalg.qr(rng.standard_normal((45, 45)))
    hands_mean = rng.normal(scale=0.2, size=45)
    f = _layout_faces(layout, rng, lambda: hand_hierarchy().faces[0], MANO_F, MANO_V)
    shapedirs = rng.standard_normal((MANO_V, 3, shape_components)) * 1e-3
    if side == "left":
        v_template = v_template * np.array([-1.0, 1.0, 1.0])
        f = f[:, [0, 2, 1]].copy()
        hands_mean = (hands_mean.reshape(15, 3) * np.array([1.0, -1.0, -1.0])).ravel()
    return {
        "hands_components": comps,
        "f": f,
        "J_regressor": jreg,
        "kintree_table": _kintree(MANO_PARENTS),
        "J": np.asarray(jreg @ v_template),
        "bs_style": "lbs",
        "hands_coeffs": rng.standard_normal((1554, 45)),
        "weights": _weights(rng, assign, MANO_J),
        "posedirs": rng.standard_normal((MANO_V, 3, 135)) * 1e-3,
        "hands_mean": hands_mean,
        "betas": np.zeros(10),
        "v_template": v_template,
        "shapedirs": shapedirs,
        "bs_type": "lrotmin",
    }


def _mano_select(shapedirs: np.ndarray) -> Py2Object:
    """chumpy.reordering.Select over a (778,3,2n) Ch that keeps the first n components."""
    n = shapedirs.shape[2]
    extra = np.random.default_rng(99).standard_normal(shapedirs.shape) * 1e-3
    full = np.concatenate([shapedirs, extra], axis=2)
    idxs = np.arange(full.size, dtype=np.int64).reshape(full.shape)[:, :, :n].ravel()
    return Py2Object("chumpy.reordering", "Select", {
        "_make_sparse": False, "_dirty_vars": {"a", "idxs", "preferred_shape"}, "_itr": None,
        "_depends_on_deps": {}, "_make_dense": False, "preferred_shape": (full.shape[0], full.shape[1], n),
        "idxs": idxs, "a": _ch(full)})


def smpl_bytes(gender: str = "neutral", *, chumpy: bool = True, **kw: Any) -> bytes:
    model = smpl_model(gender, **kw)
    if chumpy:
        model["shapedirs"] = _ch(model["shapedirs"])
    return dumps_py2(model)


def mano_bytes(side: str = "right", *, chumpy: bool = True, **kw: Any) -> bytes:
    model = mano_model(side, **kw)
    if chumpy:
        model["shapedirs"] = _mano_select(model["shapedirs"])
    return dumps_py2(model)


def write_official_zips(directory: Path, *, models: Optional[Dict[str, bytes]] = None, note: bool = True,
                        layout: str = "mesh") -> Dict[str, Path]:
    """The three official-style archives (members, decoys and, with ``note``, a SYNTHETIC.txt note).

    ``models`` may pass pre-built member bytes (keys neutral/female/male/right/left); the others are
    generated with ``layout``.  Returns archive name -> path.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    b = dict(models or {})
    for g in ("neutral", "female", "male"):
        if g not in b:
            b[g] = smpl_bytes(g, layout=layout)
    for side in ("right", "left"):
        if side not in b:
            b[side] = mano_bytes(side, layout=layout)
    smplh_decoys = [(f"mano_v1_2/models/SMPLH_{g}.pkl",
                     dumps_py2({"decoy": f"SMPL+H {g} model placeholder (not a usable body model)"}))
                    for g in ("female", "male")]
    # archive -> (top folder, members in the order written)
    archives: Dict[str, Tuple[str, List[Tuple[str, Any]]]] = {
        SMPLIFY_ZIP: ("smplify_public", [
            ("smplify_public/README.txt", "SMPLify (synthetic stand-in)\n"),
            ("smplify_public/LICENSE.txt", "placeholder\n"),
            ("smplify_public/code/fit_3d.py", "# placeholder\n"),
            (NEUTRAL_MEMBER, b["neutral"]),
            ("smplify_public/code/models/gmm_08.pkl", dumps_py2({"means": np.zeros((8, 69)), "weights": np.ones(8) / 8})),
            ("smplify_public/code/models/regressors_locked_normalized_male.npz", b"PK\x05\x06" + b"\x00" * 18)]),
        SMPL_ZIP: ("smpl", [
            (FEMALE_MEMBER, b["female"]),
            ("__MACOSX/smpl/models/._basicModel_f_lbs_10_207_0_v1.0.0.pkl", APPLEDOUBLE),
            (MALE_MEMBER, b["male"]),
            ("__MACOSX/smpl/models/._basicmodel_m_lbs_10_207_0_v1.0.0.pkl", APPLEDOUBLE),
            ("smpl/smpl_webuser/serialization.py", "# placeholder\n"),
            ("smpl/smpl_webuser/README.txt", "placeholder\n")]),
        MANO_ZIP: ("mano_v1_2", [
            ("mano_v1_2/LICENSE.txt", "placeholder\n"),
            ("mano_v1_2/models/info.txt", "placeholder\n"),
            (MANO_LEFT_MEMBER, b["left"]),
            (MANO_RIGHT_MEMBER, b["right"]),
            *smplh_decoys,
            ("mano_v1_2/webuser/serialization.py", "# placeholder\n")]),
    }
    out: Dict[str, Path] = {}
    for name, (top, members) in archives.items():
        p = directory / name
        with zipfile.ZipFile(p, "w", zipfile.ZIP_STORED) as z:   # random floats: deflate would only cost time
            if note:
                z.writestr(f"{top}/SYNTHETIC.txt", SYNTHETIC_NOTE)
            for member, data in members:
                z.writestr(member, data)
        out[name] = p
    return out


# =========================================================================== support data

def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def joint_regressor(n_joints: int, seed: int, per_joint: Tuple[int, int] = (4, 9)) -> np.ndarray:
    """(n_joints, 6890) float64: a few non-negative weights per row summing to 1, over nearby vertices."""
    rng = np.random.default_rng(seed)
    v = body_hierarchy().verts[0]
    joints = _axis_joints(n_joints, v[:, 1].max(), rng, 0.03)
    out = np.zeros((n_joints, SMPL_V))
    order = ((v[:, None, :] - joints[None]) ** 2).sum(-1).argsort(axis=0)
    for j in range(n_joints):
        k = int(rng.integers(per_joint[0], per_joint[1] + 1))
        w = rng.random(k) + 0.1
        out[j, order[:k, j]] = w / w.sum()
    return out


def _npz(members: Sequence[Tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        for name, data in members:
            z.writestr(name, data)
    return buf.getvalue()


def mesh_downsampling_bytes() -> bytes:
    """Like upstream's mesh_downsampling.npz: members A, U, M, D, F; 6890 -> 1723 -> 431."""
    h = body_hierarchy()
    a = [_adjacency(f, len(v)) for v, f in zip(h.verts, h.faces)]
    u = [_upsampling(h.verts[i], h.verts[i + 1]) for i in range(len(h.keep))]
    d = [_selection(h.keep[i], len(h.verts[i])) for i in range(len(h.keep))]
    # M holds psbody meshes of a __main__ class upstream never reads (and nobody can load)
    m = [Py2Object("__main__", "MyMesh", {"v": v, "f": f}) for v, f in zip(h.verts, h.faces)]
    return _npz([("A.npy", object_npy(a)), ("U.npy", object_npy(u)), ("M.npy", object_npy(m)),
                 ("D.npy", object_npy(d)), ("F.npy", object_npy(list(h.faces)))])


def mano_downsampling_bytes() -> bytes:
    """Like upstream's mano_downsampling.npz: members A, F, U, D, V; 778 -> 195 -> 49 -> 13 -> 4."""
    h = hand_hierarchy()
    faces = list(h.faces)
    a = [_adjacency(f, len(v)) for v, f in zip(h.verts, faces)]
    u = [_upsampling(h.verts[i], h.verts[i + 1]) for i in range(len(h.keep))]
    d = [_selection(h.keep[i], len(h.verts[i])) for i in range(len(h.keep))]
    return _npz([("A.npy", object_npy(a)), ("F.npy", object_npy(faces)), ("U.npy", object_npy(u)),
                 ("D.npy", object_npy(d)), ("V.npy", object_npy([np.asarray(v, dtype=np.float64) for v in h.verts]))])


def hrnet_config_text(width: int) -> str:
    ch = [width, 2 * width, 4 * width, 8 * width]

    def stage(n: int, modules: int, block: str, key: str = "NUM_BRANCHES") -> str:
        blocks = "".join("      - 4\n" for _ in range(n))
        chans = "".join(f"      - {c}\n" for c in ([64] if block == "BOTTLENECK" else ch[:n]))
        return (f"      NUM_MODULES: {modules}\n      {key}: {n}\n      BLOCK: {block}\n      NUM_BLOCKS:\n{blocks}"
                f"      NUM_CHANNELS:\n{chans}      FUSE_METHOD: SUM\n")

    return ("# SYNTHETIC sample (metro-assets demo): the structure of HRNet's cls_hrnet config, not the original file.\n"
            "GPUS: (0,)\nLOG_DIR: 'log/'\nDATA_DIR: ''\nOUTPUT_DIR: 'output/'\nWORKERS: 4\nPRINT_FREQ: 1000\n\n"
            "MODEL: \n  NAME: cls_hrnet\n  IMAGE_SIZE: \n    - 224\n    - 224\n  EXTRA:\n"
            "    STAGE1:\n" + stage(1, 1, "BOTTLENECK", "NUM_RANCHES") +
            "    STAGE2:\n" + stage(2, 1, "BASIC") + "    STAGE3:\n" + stage(3, 4, "BASIC") +
            "    STAGE4:\n" + stage(4, 3, "BASIC") +
            "CUDNN:\n  BENCHMARK: true\n  DETERMINISTIC: false\n  ENABLED: true\n"
            "DATASET:\n  DATASET: 'imagenet'\n  DATA_FORMAT: 'jpg'\n  ROOT: 'data/imagenet/'\n  TEST_SET: 'val'\n  TRAIN_SET: 'train'\n"
            "TEST:\n  BATCH_SIZE_PER_GPU: 32\n  MODEL_FILE: ''\n"
            "TRAIN:\n  BATCH_SIZE_PER_GPU: 32\n  BEGIN_EPOCH: 0\n  END_EPOCH: 100\n  OPTIMIZER: sgd\n  LR: 0.05\n"
            "DEBUG:\n  DEBUG: false\n")


def predictions_zip_bytes(seed: int, n: int = 8) -> bytes:
    """A FreiHAND-style submission: pred.json = [xyz (n,21,3), verts (n,778,3)] (synthetic, n samples)."""
    rng = np.random.default_rng(seed)
    xyz = np.round(rng.normal(scale=0.05, size=(n, 21, 3)), 5).tolist()
    verts = np.round(rng.normal(scale=0.05, size=(n, 778, 3)), 5).tolist()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("pred.json", json.dumps([xyz, verts]))
        z.writestr("SYNTHETIC.txt", SYNTHETIC_NOTE)
    return buf.getvalue()


# =========================================================================== torch files

def write_hrnet_weights(path: Path, width: int, seed: int) -> Path:
    """ImageNet-HRNet-style weights: the METRO backbone's keys and shapes, random values (legacy format)."""
    import os
    import tempfile

    import torch

    from metro_assets.model.checkpoint import hrnet_signature

    gen = torch.Generator().manual_seed(seed)
    sd = {}
    for key, shape, dtype in hrnet_signature(width):
        if not dtype.is_floating_point:
            sd[key] = torch.zeros(shape, dtype=dtype)
        elif key.endswith("running_var") or (key.endswith(".weight") and len(shape) == 1):
            sd[key] = torch.ones(shape, dtype=dtype)
        else:
            fan_in = max(1, int(np.prod(shape[1:]))) if len(shape) > 1 else 1
            sd[key] = torch.empty(shape, dtype=dtype).uniform_(-1, 1, generator=gen).mul_(1.0 / np.sqrt(fan_in))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save(sd, tmp, _use_new_zipfile_serialization=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


# =========================================================================== the sample set

@dataclass(frozen=True)
class SampleFile:
    asset_id: str
    path: Path
    size: int
    sha256: str
    seconds: float


@dataclass(frozen=True)
class SampleSet:
    mirror: Path                      # files at their tree paths: serve this folder
    downloads: Path                   # the official-style body-model archives
    files: Tuple[SampleFile, ...]
    archives: Tuple[Path, ...]
    seconds: float

    def by_id(self) -> Dict[str, SampleFile]:
        return {f.asset_id: f for f in self.files}


def _sha256(path: Path) -> str:
    from metro_assets.hashing import sha256_file

    return sha256_file(path)


# asset id -> (writer kind, args).  Checkpoints use distinct seeds so the files differ.
CHECKPOINTS = {"metro-h36m": ("body", 1), "metro-3dpw": ("body", 2), "metro-hand": ("hand", 3)}
HRNETS = {"hrnet-w64": 64, "hrnet-w40": 40}
# assets whose real bytes are pinned by sha256 in the built-in manifests: the demo overrides them
PINNED = ("hrnet-w64-config", "hrnet-w40-config", "j-regressor-extra", "j-regressor-h36m",
          "mesh-downsampling", "mano-downsampling")


def build_samples(base: Path, catalog, *, names: Sequence[str] = ("all",),
                  log: Optional[Callable[[str], None]] = None) -> SampleSet:
    """Write a mirror of every selected non-manual asset, plus the body-model archives.

    ``catalog`` gives the tree paths (the built-in manifests).  Returns what was written.
    """
    t0 = time.monotonic()
    base = Path(base)
    mirror, downloads = base / "mirror", base / "downloads"
    files: List[SampleFile] = []

    def put(asset_id: str, writer: Callable[[Path], None]) -> None:
        t = time.monotonic()
        a = catalog.get(asset_id)
        dest = mirror.joinpath(*a.mirror_path.split("/"))
        dest.parent.mkdir(parents=True, exist_ok=True)
        writer(dest)
        sf = SampleFile(asset_id, dest, dest.stat().st_size, _sha256(dest), time.monotonic() - t)
        files.append(sf)
        if log:
            log(f"  {asset_id:<28} {sf.size:>13,} bytes  {sf.seconds:5.1f}s  {a.mirror_path}")

    def raw(data: bytes) -> Callable[[Path], None]:
        return lambda p: p.write_bytes(data)

    selected = {a.id for a in catalog.select(list(names)) if not a.manual}
    for aid, (kind, seed) in CHECKPOINTS.items():
        if aid in selected:
            def w(p: Path, kind=kind, seed=seed) -> None:
                from metro_assets.model.synthetic import write_release_checkpoint

                write_release_checkpoint(p, kind=kind, arch="w64", legacy=True, seed=seed)
            put(aid, w)
    for aid, width in HRNETS.items():
        if aid in selected:
            put(aid, lambda p, width=width: write_hrnet_weights(p, width, seed=width))
    for aid, width in (("hrnet-w64-config", 64), ("hrnet-w40-config", 40)):
        if aid in selected:
            put(aid, raw(hrnet_config_text(width).encode()))
    if "j-regressor-h36m" in selected:
        put("j-regressor-h36m", raw(_npy(joint_regressor(17, seed=17))))
    if "j-regressor-extra" in selected:
        put("j-regressor-extra", raw(_npy(joint_regressor(14, seed=14, per_joint=(1, 12)))))
    if "mesh-downsampling" in selected:
        put("mesh-downsampling", raw(mesh_downsampling_bytes()))
    if "mano-downsampling" in selected:
        put("mano-downsampling", raw(mano_downsampling_bytes()))
    for i, aid in enumerate(("freihand-pred-sc10-rot0", "freihand-pred-multisc")):
        if aid in selected:
            put(aid, raw(predictions_zip_bytes(seed=100 + i)))
    t = time.monotonic()
    archives = write_official_zips(downloads)
    if log:
        for name, p in archives.items():
            log(f"  {name:<28} {p.stat().st_size:>13,} bytes         downloads/{name} (official-style; license-gated in real life)")
        log(f"  body-model archives written in {time.monotonic() - t:.1f}s")
    return SampleSet(mirror, downloads, tuple(files), tuple(archives.values()), time.monotonic() - t0)


def sample_manifest_text(samples: SampleSet, catalog) -> str:
    """A --manifest override for the assets whose real bytes are pinned: the synthetic size and sha256."""
    import yaml

    by_id = samples.by_id()
    assets = []
    for aid in PINNED:
        if aid not in by_id:
            continue
        a = catalog.get(aid)
        f = by_id[aid]
        srcs = []
        for s in a.sources:
            d = {"url": s.url}
            if s.dead_since:
                d.update(dead_since=s.dead_since, reason=s.reason)
            srcs.append(d)
        entry = {"id": a.id, "group": a.group, "tags": list(a.tags), "path": a.path, "kind": a.kind,
                 "size": f.size, "sha256": f.sha256, "license": a.license or "MIT",
                 "description": SYNTHETIC_DESCRIPTION, "sources": srcs}
        assets.append({k: v for k, v in entry.items() if v not in (None, [])})
    head = ("# Written by `metro-assets demo`: the synthetic sample files' identities, overriding the real\n"
            "# (pinned) ones.  Never use it for real downloads.\n")
    return head + yaml.safe_dump({"version": 1, "assets": assets}, sort_keys=False, width=200)


def file_sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
