"""Small but structurally faithful SMPL / MANO stand-ins for tests.

They hold no SMPL or MANO data: values are seeded random numbers with the
official shapes, dtypes, key order, containers and pickle opcodes
(protocol 2, Python-2 BINSTRING strings, ``numpy.core.multiarray``,
``scipy.sparse.csc.csc_matrix``, ``__builtin__.set``, ``chumpy.ch.Ch`` and,
for MANO, ``chumpy.reordering.Select`` over a (778,3,20) Ch).  chumpy is not
needed to write them: chumpy objects are emitted as GLOBAL + NEWOBJ + state.

Other tests import these helpers::

    from bodymodel_fixtures import write_smpl_pickle, write_mano_pickle, write_official_zips

(tests/conftest.py puts tests/ on sys.path.)
Writing a full SMPL file costs ~0.5 s (posedirs alone is 34 MB); the
session-scoped pytest fixture :func:`bodymodel_files` builds every variant
once (import it into a test module to use it).
"""
from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import scipy.sparse as sp

from metro_assets.safe_pickle import Py2Object, dumps_py2

SMPL_V, SMPL_F, SMPL_J = 6890, 13776, 24
MANO_V, MANO_F, MANO_J = 778, 1538, 16
SMPL_PARENTS = [-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 20, 21]
MANO_PARENTS = [-1, 0, 1, 2, 0, 4, 5, 0, 7, 8, 0, 10, 11, 0, 13, 14]
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


def _kintree(parents) -> np.ndarray:
    t = np.zeros((2, len(parents)), dtype=np.int64)
    t[0] = [4294967295 if p < 0 else p for p in parents]
    t[1] = np.arange(len(parents))
    return t


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


def _faces(rng: np.random.Generator, n_faces: int, n_verts: int) -> np.ndarray:
    return rng.integers(0, n_verts, size=(n_faces, 3), dtype=np.uint32)


def _ch(x: np.ndarray) -> Py2Object:
    return Py2Object("chumpy.ch", "Ch", {"_make_sparse": False, "_dirty_vars": set(), "x": x, "_itr": None,
                                         "_depends_on_deps": {}, "_make_dense": False})


def smpl_model(gender: str = "neutral", *, shape_components: int = 10, seed: Optional[int] = None) -> Dict[str, Any]:
    """Plain values of an SMPL model (official key order)."""
    rng = np.random.default_rng(SEEDS.get(gender, 10) if seed is None else seed)
    joints = rng.normal(scale=0.3, size=(SMPL_J, 3))
    assign = rng.integers(0, SMPL_J, size=SMPL_V)
    assign[:SMPL_J] = np.arange(SMPL_J)          # every joint owns vertices
    v_template = joints[assign] + rng.normal(scale=0.02, size=(SMPL_V, 3))
    jreg = _regressor(rng, assign, SMPL_J, SMPL_V, 8)
    weights = _weights(rng, assign, SMPL_J)
    info = {"expid": "tj10smooth", "J_regressor_prior_wt": 10.0, "restpose_type": "t", "bs_style": "lbs",
            "gender": gender, "bs_type": "lrotmin"}
    return {
        "J_regressor_prior": jreg.copy(),
        "f": _faces(rng, SMPL_F, SMPL_V),
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


def mano_model(side: str = "right", *, shape_components: int = 10, seed: Optional[int] = None) -> Dict[str, Any]:
    """Plain values of a MANO model.  The left hand mirrors the right in x (faces
    reversed, hand pose y/z negated) but keeps the right's shapedirs x sign, as
    the official MANO_LEFT does."""
    rng = np.random.default_rng(SEEDS["right"] if seed is None else seed)
    joints = _hand_joints()
    assign = rng.integers(0, MANO_J, size=MANO_V)
    assign[:MANO_J] = np.arange(MANO_J)
    v_template = joints[assign] + rng.normal(scale=0.004, size=(MANO_V, 3))
    jreg = _regressor(rng, assign, MANO_J, MANO_V, 12)
    comps, _ = np.linalg.qr(rng.standard_normal((45, 45)))
    hands_mean = rng.normal(scale=0.2, size=45)
    f = _faces(rng, MANO_F, MANO_V)
    shapedirs = rng.standard_normal((MANO_V, 3, shape_components)) * 1e-3
    if side == "left":
        v_template = v_template * np.array([-1.0, 1.0, 1.0])
        f = f[:, [0, 2, 1]].copy()
        hands_mean = (hands_mean.reshape(15, 3) * np.array([1.0, -1.0, -1.0])).ravel()
    elif side != "right":
        raise ValueError(side)
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
    return dumps_py2(model, legacy_sparse=True)


def mano_bytes(side: str = "right", *, chumpy: bool = True, **kw: Any) -> bytes:
    model = mano_model(side, **kw)
    if chumpy:
        model["shapedirs"] = _mano_select(model["shapedirs"])
    return dumps_py2(model, legacy_sparse=True)


def write_smpl_pickle(path: Path, *, chumpy: bool = True, gender: str = "neutral", **kw: Any) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(smpl_bytes(gender, chumpy=chumpy, **kw))
    return path


def write_mano_pickle(path: Path, *, chumpy: bool = True, side: str = "right", **kw: Any) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(mano_bytes(side, chumpy=chumpy, **kw))
    return path


def malicious_pickle(command: str = "echo pwned") -> bytes:
    """A protocol-2 pickle that would call posix.system(command) when loaded."""
    cmd = command.encode()
    return b"\x80\x02cposix\nsystem\nU" + bytes([len(cmd)]) + cmd + b"\x85R."


def write_official_zips(directory: Path, *, smpl: Optional[Dict[str, bytes]] = None) -> Dict[str, Path]:
    """Write the three official archives (members, decoys) into ``directory``.

    ``smpl`` may pass pre-built member bytes (keys neutral/female/male/right/left)
    to reuse a session cache.  Returns archive name -> path.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    b = dict(smpl or {})
    for g in ("neutral", "female", "male"):
        b.setdefault(g, smpl_bytes(g))
    b.setdefault("right", mano_bytes("right"))
    b.setdefault("left", mano_bytes("left"))
    out: Dict[str, Path] = {}
    store = zipfile.ZIP_STORED   # the pickles are random floats: deflate would only cost time

    p = directory / SMPLIFY_ZIP
    with zipfile.ZipFile(p, "w", store) as z:
        z.writestr("smplify_public/README.txt", "SMPLify (synthetic stand-in)\n")
        z.writestr("smplify_public/LICENSE.txt", "placeholder\n")
        z.writestr("smplify_public/code/fit_3d.py", "# placeholder\n")
        z.writestr(NEUTRAL_MEMBER, b["neutral"])
        z.writestr("smplify_public/code/models/gmm_08.pkl", dumps_py2({"means": np.zeros((8, 69)), "weights": np.ones(8) / 8}))
        z.writestr("smplify_public/code/models/regressors_locked_normalized_male.npz", b"PK\x05\x06" + b"\x00" * 18)
    out[SMPLIFY_ZIP] = p

    p = directory / SMPL_ZIP
    with zipfile.ZipFile(p, "w", store) as z:
        z.writestr(FEMALE_MEMBER, b["female"])
        z.writestr("__MACOSX/smpl/models/._basicModel_f_lbs_10_207_0_v1.0.0.pkl", APPLEDOUBLE)
        z.writestr(MALE_MEMBER, b["male"])
        z.writestr("__MACOSX/smpl/models/._basicmodel_m_lbs_10_207_0_v1.0.0.pkl", APPLEDOUBLE)
        z.writestr("smpl/smpl_webuser/serialization.py", "# placeholder\n")
        z.writestr("smpl/smpl_webuser/README.txt", "placeholder\n")
    out[SMPL_ZIP] = p

    p = directory / MANO_ZIP
    with zipfile.ZipFile(p, "w", store) as z:
        z.writestr("mano_v1_2/LICENSE.txt", "placeholder\n")
        z.writestr("mano_v1_2/models/info.txt", "placeholder\n")
        z.writestr(MANO_LEFT_MEMBER, b["left"])
        z.writestr(MANO_RIGHT_MEMBER, b["right"])
        for g in ("female", "male"):
            z.writestr(f"mano_v1_2/models/SMPLH_{g}.pkl",
                       dumps_py2({"decoy": f"SMPL+H {g} model placeholder (not a usable body model)"}))
        z.writestr("mano_v1_2/webuser/serialization.py", "# placeholder\n")
    out[MANO_ZIP] = p
    return out


class BodyModelFiles:
    """Session cache of generated files (paths under one temp directory)."""

    def __init__(self, base: Path) -> None:
        self.base = Path(base)
        self._bytes: Dict[str, bytes] = {}

    def bytes(self, name: str) -> bytes:
        """name: neutral | female | male | right | left | clean-<any of those>."""
        if name not in self._bytes:
            chumpy = not name.startswith("clean-")
            which = name.split("-", 1)[1] if not chumpy else name
            if which in ("right", "left"):
                self._bytes[name] = mano_bytes(which, chumpy=chumpy)
            else:
                self._bytes[name] = smpl_bytes(which, chumpy=chumpy)
        return self._bytes[name]

    def file(self, name: str, filename: Optional[str] = None) -> Path:
        """A fresh copy of the named model under ``filename`` in a new directory."""
        d = self.base / f"f{len(list(self.base.iterdir()))}"
        d.mkdir()
        p = d / (filename or f"{name}.pkl")
        p.write_bytes(self.bytes(name))
        return p

    def zips(self) -> Dict[str, Path]:
        """The three official archives (written once; treat as read-only)."""
        zdir = self.base / "zips"
        if not zdir.is_dir():
            write_official_zips(zdir, smpl={k: self.bytes(k) for k in ("neutral", "female", "male", "right", "left")})
        return {n: zdir / n for n in (SMPLIFY_ZIP, SMPL_ZIP, MANO_ZIP)}


try:
    import pytest

    @pytest.fixture(scope="session")
    def bodymodel_files(tmp_path_factory) -> BodyModelFiles:
        return BodyModelFiles(tmp_path_factory.mktemp("bodymodels"))
except ImportError:  # pragma: no cover
    pass
