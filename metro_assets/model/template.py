"""Template mesh tokens (spec section 4): the xyz half of every METRO token.

Two steps, kept apart so each can be checked on its own:

1. the body-model output: SMPL neutral at pose[0] = 3.1416 (metres), or
   MANO right in its mean pose (millimetres, vertices and 21 joints); built
   from the user's pickles, or given explicitly (``TemplateOverride``);
2. the reference tokens from that output, with the support data: exact
   gathers to the coarse mesh, H36M joint regression (body), centring.

Support data comes from the root (``metro/modeling/data``): the D matrices of
``mesh_downsampling.npz`` / ``mano_downsampling.npz`` (read with the restricted
unpickler; the psbody ``M`` member is never touched) and
``J_regressor_h36m_correct.npy`` (plain npy, no pickle).
"""
from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from metro_assets.errors import LoadError

DATA_DIR = Path("metro", "modeling", "data")
SMPL_FILE = "basicModel_neutral_lbs_10_207_0_v1.0.0.pkl"
MANO_FILE = "MANO_RIGHT.pkl"
J_REGRESSOR_FILE = "J_regressor_h36m_correct.npy"
BODY_DOWNSAMPLING_FILE = "mesh_downsampling.npz"
HAND_DOWNSAMPLING_FILE = "mano_downsampling.npz"

H36M_J17_TO_J14 = (3, 2, 1, 4, 5, 6, 16, 15, 14, 11, 12, 13, 8, 10)
H36M_PELVIS = 0
BODY_ROOT_ANGLE = 3.1416          # upstream's template pose[0], not math.pi
MANO_TIP_VERTICES = (745, 317, 444, 556, 673)   # right hand
# MANO joints + tips -> Wrist, Thumb1-4, Index1-4, Middle1-4, Ring1-4, Pinky1-4
MANO_JOINT_ORDER = (0, 13, 14, 15, 16, 1, 2, 3, 17, 4, 5, 6, 18, 10, 11, 12, 19, 7, 8, 9, 20)


# --------------------------------------------------------------------------- support data

@dataclass(frozen=True)
class BodySupport:
    sub_index: np.ndarray       # (1723,) 6890 -> 1723
    sub2_index: np.ndarray      # (431,)  1723 -> 431
    j_regressor: np.ndarray     # (17, 6890) float64, as shipped
    faces: np.ndarray           # (13776, 3) SMPL faces (level 0 of the npz)


@dataclass(frozen=True)
class HandSupport:
    sub_index: np.ndarray       # (195,) 778 -> 195
    faces: np.ndarray           # (1538, 3) MANO faces


def read_npz_pickled(path: Path, member: str) -> List[Any]:
    """One object-array member of upstream's python-2 npz, through the restricted unpickler."""
    from numpy.lib import format as npy_format

    from metro_assets.safe_pickle import _to_plain, loads_restricted

    try:
        with zipfile.ZipFile(path) as z:
            raw = z.read(member)
    except FileNotFoundError:
        raise
    except (OSError, zipfile.BadZipFile, KeyError) as exc:
        raise LoadError(f"Cannot read member {member} of {path}", expected="upstream's npz (a zip of .npy)",
                        got=f"{type(exc).__name__}: {exc}",
                        next_command=f"metro-assets verify {path.name} (then fetch it again)") from None
    fp = io.BytesIO(raw)
    version = npy_format.read_magic(fp)
    header = npy_format.read_array_header_1_0(fp) if version == (1, 0) else npy_format.read_array_header_2_0(fp)
    obj = loads_restricted(fp.read(), what=f"{path}:{member}")
    if header[2] != np.dtype(object) or not isinstance(obj, np.ndarray):
        raise LoadError(f"{path}:{member} is not a pickled object array", got=str(header))
    return _to_plain(list(obj))


def selection_indices(matrix: Any, where: str) -> np.ndarray:
    """Column index per row of a 0/1 selection matrix (exactly one 1.0 per row)."""
    coo = matrix.tocoo()
    rows, cols, vals = coo.row, coo.col, coo.data
    n = matrix.shape[0]
    if len(rows) != n or not np.array_equal(np.sort(rows), np.arange(n)) or not np.all(vals == 1.0):
        raise LoadError(f"{where} is not an exact selection matrix",
                        expected="one 1.0 per row (spec section 4)", got=f"{len(rows)} entries for {n} rows")
    out = np.empty(n, dtype=np.int64)
    out[rows] = cols
    return out


def _need(path: Path, asset: str, fix: str) -> Path:
    if not path.is_file():
        raise LoadError(f"Missing {asset}: {path}", expected="the file in the METRO root", got="no file",
                        next_command=fix)
    return path


def _support_fix(name: str) -> str:
    return "metro-assets fetch support --mirror BASE"


def load_body_support(data_dir: Path) -> BodySupport:
    ds = _need(data_dir / BODY_DOWNSAMPLING_FILE, "mesh_downsampling.npz", _support_fix("mesh-downsampling"))
    jr = _need(data_dir / J_REGRESSOR_FILE, "J_regressor_h36m_correct.npy", _support_fix("j-regressor-h36m"))
    d = read_npz_pickled(ds, "D.npy")
    faces = read_npz_pickled(ds, "F.npy")[0]
    try:
        regressor = np.load(jr, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise LoadError(f"Cannot read {jr}", expected="a plain (17, 6890) float64 .npy", got=str(exc),
                        next_command=f"metro-assets verify {jr.name}") from None
    if regressor.shape != (17, 6890):
        raise LoadError(f"{jr} has the wrong shape", expected="(17, 6890)", got=str(regressor.shape))
    return BodySupport(selection_indices(d[0], f"{ds.name} D[0]"), selection_indices(d[1], f"{ds.name} D[1]"),
                       regressor, np.asarray(faces, dtype=np.int64))


def load_hand_support(data_dir: Path) -> HandSupport:
    ds = _need(data_dir / HAND_DOWNSAMPLING_FILE, "mano_downsampling.npz", _support_fix("mano-downsampling"))
    d = read_npz_pickled(ds, "D.npy")
    faces = read_npz_pickled(ds, "F.npy")[0]
    return HandSupport(selection_indices(d[0], f"{ds.name} D[0]"), np.asarray(faces, dtype=np.int64))


# --------------------------------------------------------------------------- body models (numpy, float32)

def _quat_rodrigues(theta: np.ndarray) -> np.ndarray:
    """(N,3) axis-angle -> (N,3,3) via upstream's quaternion route (+1e-8 in the norm), float32."""
    theta = theta.astype(np.float32)
    angle = np.sqrt(((theta + np.float32(1e-8)) ** 2).sum(1, keepdims=True)).astype(np.float32)
    normalized = theta / angle
    half = angle * np.float32(0.5)
    quat = np.concatenate([np.cos(half), np.sin(half) * normalized], axis=1)
    quat = quat / np.sqrt((quat ** 2).sum(1, keepdims=True))
    w, x, y, z = quat.T
    w2, x2, y2, z2 = w * w, x * x, y * y, z * z
    wx, wy, wz, xy, xz, yz = w * x, w * y, w * z, x * y, x * z, y * z
    rot = np.stack([w2 + x2 - y2 - z2, 2 * xy - 2 * wz, 2 * wy + 2 * xz,
                    2 * wz + 2 * xy, w2 - x2 + y2 - z2, 2 * yz - 2 * wx,
                    2 * xz - 2 * wy, 2 * wx + 2 * yz, w2 - x2 - y2 + z2], axis=1)
    return rot.reshape(-1, 3, 3).astype(np.float32)


def _dense(m: Any) -> np.ndarray:
    return np.asarray(m.toarray() if hasattr(m, "toarray") else m)


def smpl_template_vertices(model: Dict[str, Any]) -> np.ndarray:
    """SMPL at pose[0] = 3.1416, zero betas: V = R (v_template - J0) + J0, (6890, 3) float32 metres."""
    v = np.asarray(model["v_template"], dtype=np.float32)
    j0 = (_dense(model["J_regressor"][0:1]).astype(np.float32) @ v)[0]
    rot = _quat_rodrigues(np.array([[BODY_ROOT_ANGLE, 0.0, 0.0]]))[0]
    return ((v - j0) @ rot.T + j0).astype(np.float32)


def mano_template(model: Dict[str, Any]) -> Tuple[np.ndarray, np.ndarray]:
    """MANO right, flat_hand_mean=False, zero pose and betas: (778,3) vertices and (21,3) joints in mm.

    Forward kinematics as manopth's ManoLayer: pose = [0,0,0] + hands_mean,
    pose blend shapes from the 15 finger rotations, linear blend skinning, then
    the five fingertip vertices and the visualisation joint order.
    """
    v_shaped = np.asarray(model["v_template"], dtype=np.float32)      # betas are zero
    regressor = _dense(model["J_regressor"]).astype(np.float32)
    joints = regressor @ v_shaped                                      # (16, 3)
    pose = np.concatenate([np.zeros(3), np.asarray(model["hands_mean"], dtype=np.float64).ravel()])
    rots = _quat_rodrigues(pose.reshape(-1, 3))                        # (16, 3, 3)
    pose_map = (rots[1:] - np.eye(3, dtype=np.float32)).reshape(-1)    # (135,)
    posedirs = np.asarray(model["posedirs"], dtype=np.float32)         # (778, 3, 135)
    v_posed = v_shaped + posedirs @ pose_map
    parents = np.asarray(model["kintree_table"])[0].astype(np.int64)
    n = len(joints)
    world = np.zeros((n, 4, 4), dtype=np.float32)
    for i in range(n):
        local = np.eye(4, dtype=np.float32)
        local[:3, :3] = rots[i]
        local[:3, 3] = joints[i] - (joints[parents[i]] if i else 0)
        world[i] = local if i == 0 else world[parents[i]] @ local
    posed_joints = world[:, :3, 3].copy()
    # remove the rest-pose joint location so transforms act on rest-pose vertices
    rest = np.einsum("nij,nj->ni", world[:, :3, :3], joints)
    world[:, :3, 3] -= rest
    weights = np.asarray(model["weights"], dtype=np.float32)            # (778, 16)
    blended = np.einsum("vn,nij->vij", weights, world)                  # (778, 4, 4)
    verts = np.einsum("vij,vj->vi", blended[:, :3, :3], v_posed) + blended[:, :3, 3]
    tips = verts[list(MANO_TIP_VERTICES)]
    all_joints = np.concatenate([posed_joints, tips])[list(MANO_JOINT_ORDER)]
    return (verts * 1000).astype(np.float32), (all_joints * 1000).astype(np.float32)


def _load_body_model(path: Path, fix: str) -> Dict[str, Any]:
    _need(path, path.name, fix)
    from metro_assets.safe_pickle import load_body_model

    return load_body_model(path)


# --------------------------------------------------------------------------- reference tokens (torch)

@dataclass(frozen=True)
class TemplateOverride:
    """Body-model output given explicitly (spec section 4): body vertices (6890,3) in metres;
    hand vertices (778,3) and joints (21,3) in millimetres."""

    vertices: np.ndarray
    joints: Optional[np.ndarray] = None

    @classmethod
    def from_npz(cls, path: Path, kind: str) -> "TemplateOverride":
        """Read ``body_template_vertices`` or ``hand_template_{vertices,joints}`` (golden inputs.npz layout)."""
        try:
            with np.load(path, allow_pickle=False) as z:
                if kind == "body":
                    return cls(np.asarray(z["body_template_vertices"], dtype=np.float32))
                return cls(np.asarray(z["hand_template_vertices"], dtype=np.float32),
                           np.asarray(z["hand_template_joints"], dtype=np.float32))
        except (OSError, ValueError, KeyError) as exc:
            raise LoadError(f"Cannot read the {kind} template override {path}",
                            expected=("body_template_vertices (6890,3)" if kind == "body" else
                                      "hand_template_vertices (778,3) and hand_template_joints (21,3)"),
                            got=f"{type(exc).__name__}: {exc}") from None


def body_reference(vertices: Any, support: BodySupport):
    """(6890,3) metres -> (1, 445, 3) reference tokens: 14 joints then 431 vertices, pelvis-centred."""
    import torch

    v = torch.as_tensor(np.asarray(vertices, dtype=np.float32)).reshape(1, -1, 3)
    sub = v[:, torch.from_numpy(support.sub_index)]
    sub2 = sub[:, torch.from_numpy(support.sub2_index)]
    # float32 regressor, float32 einsum (numpy's loop is the same on every machine)
    j17 = torch.from_numpy(np.einsum("ji,bik->bjk", support.j_regressor.astype(np.float32), v.numpy()))
    pelvis = j17[:, H36M_PELVIS, :]
    j14 = j17[:, list(H36M_J17_TO_J14), :]
    return torch.cat([j14 - pelvis[:, None, :], sub2 - pelvis[:, None, :]], dim=1)


def hand_reference(vertices_mm: Any, joints_mm: Any, support: HandSupport):
    """(778,3), (21,3) mm -> (1, 216, 3) reference tokens: 21 joints then 195 vertices, wrist-centred, metres."""
    import torch

    v = torch.as_tensor(np.asarray(vertices_mm, dtype=np.float32)).reshape(1, -1, 3) / 1000.0
    j = torch.as_tensor(np.asarray(joints_mm, dtype=np.float32)).reshape(1, -1, 3) / 1000.0
    sub = v[:, torch.from_numpy(support.sub_index)]
    root = j[:, 0, :]
    return torch.cat([j - root[:, None, :], sub - root[:, None, :]], dim=1)


@dataclass(frozen=True)
class Template:
    kind: str
    reference: Any              # torch (1, T, 3)
    faces: np.ndarray           # full-resolution faces
    source: str                 # where the body-model output came from


def load_template(kind: str, root: Path, override: Optional[TemplateOverride] = None) -> Template:
    """Build the reference tokens from the root's body model + support data (or an override)."""
    data_dir = Path(root) / DATA_DIR
    if kind == "body":
        support = load_body_support(data_dir)
        if override is not None:
            verts, source = override.vertices, "override"
        else:
            model = _load_body_model(data_dir / SMPL_FILE, "metro-assets import ~/Downloads/mpips_smplify_public_v2.zip")
            verts, source = smpl_template_vertices(model), str(data_dir / SMPL_FILE)
            del model
        return Template("body", body_reference(verts, support), support.faces, source)
    support_h = load_hand_support(data_dir)
    if override is not None:
        if override.joints is None:
            raise LoadError("A hand template override needs joints too", expected="(21,3) joints in mm", got="none")
        verts, joints, source = override.vertices, override.joints, "override"
    else:
        model = _load_body_model(data_dir / MANO_FILE, "metro-assets import ~/Downloads/mano_v1_2.zip")
        verts, joints = mano_template(model)
        source = str(data_dir / MANO_FILE)
    return Template("hand", hand_reference(verts, joints, support_h), support_h.faces, source)


__all__ = ["BodySupport", "HandSupport", "Template", "TemplateOverride", "body_reference", "hand_reference",
           "load_body_support", "load_hand_support", "load_template", "mano_template", "smpl_template_vertices"]
