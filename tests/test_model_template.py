"""Template mesh from the body models (spec section 4), checked independently.

SMPL: the closed form V = R (v_template - J0) + J0 against scipy's rotation.
MANO: our numpy forward kinematics against smplx's MANO layer (flat_hand_mean=False,
no PCA, zero pose and betas), on a synthetic but structurally faithful MANO pickle.
"""
from __future__ import annotations

import math
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from metro_assets.model.template import (MANO_TIP_VERTICES, load_template, mano_template,
                                         smpl_template_vertices)
from metro_assets.safe_pickle import load_body_model

sys.path.insert(0, str(Path(__file__).parent))
from bodymodel_fixtures import write_mano_pickle, write_smpl_pickle  # noqa: E402

DATA = Path(__file__).parent / "data" / "metro-data"


@pytest.fixture(scope="module")
def bodymodels(tmp_path_factory):
    d = tmp_path_factory.mktemp("bodymodels")
    return {"smpl": write_smpl_pickle(d / "basicModel_neutral_lbs_10_207_0_v1.0.0.pkl"),
            "mano": write_mano_pickle(d / "MANO_RIGHT.pkl", chumpy=False),
            "mano_chumpy": write_mano_pickle(d / "chumpy" / "MANO_RIGHT.pkl")}


def test_smpl_template_is_the_root_rotation(bodymodels):
    from scipy.spatial.transform import Rotation

    model = load_body_model(bodymodels["smpl"])
    got = smpl_template_vertices(model)
    v = np.asarray(model["v_template"], dtype=np.float64)
    j0 = np.asarray(model["J_regressor"][0].toarray()) @ v
    rot = Rotation.from_rotvec([3.1416, 0, 0]).as_matrix()      # 3.1416, not pi (upstream)
    want = (v - j0) @ rot.T + j0
    assert got.dtype == np.float32 and got.shape == (6890, 3)
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-6)
    assert not np.allclose(got, (v - j0) @ Rotation.from_rotvec([math.pi, 0, 0]).as_matrix().T + j0, atol=1e-6)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_mano_template_matches_smplx(bodymodels):
    torch = pytest.importorskip("torch")
    smplx = pytest.importorskip("smplx")
    verts, joints = mano_template(load_body_model(bodymodels["mano"]))
    layer = smplx.MANO(str(bodymodels["mano"].parent), is_rhand=True, use_pca=False, flat_hand_mean=False)
    with torch.no_grad():
        out = layer(betas=torch.zeros(1, 10), global_orient=torch.zeros(1, 3), hand_pose=torch.zeros(1, 45))
    ref_v = out.vertices[0].numpy() * 1000
    assert verts.shape == (778, 3) and joints.shape == (21, 3)
    np.testing.assert_allclose(verts, ref_v, rtol=0, atol=2e-3)                   # mm
    # the mean pose is not the flat hand
    assert np.abs(verts - np.asarray(load_body_model(bodymodels["mano"])["v_template"]) * 1000).max() > 1.0
    # joints: wrist + MANO's 15 (visualisation order) + the five fingertip vertices
    ref_j16 = out.joints[0, :16].numpy() * 1000
    order = [0, 13, 14, 15, 16, 1, 2, 3, 17, 4, 5, 6, 18, 10, 11, 12, 19, 7, 8, 9, 20]
    mano_to_ours = {m: i for i, m in enumerate(order)}
    for m in range(16):
        np.testing.assert_allclose(joints[mano_to_ours[m]], ref_j16[m], rtol=0, atol=2e-3)
    for t, v in enumerate(MANO_TIP_VERTICES):
        np.testing.assert_allclose(joints[mano_to_ours[16 + t]], ref_v[v], rtol=0, atol=2e-3)


def test_chumpy_and_clean_mano_agree(bodymodels):
    a = mano_template(load_body_model(bodymodels["mano"]))
    b = mano_template(load_body_model(bodymodels["mano_chumpy"]))
    np.testing.assert_array_equal(a[0], b[0])


def test_load_template_from_a_root(tmp_path, bodymodels):
    pytest.importorskip("torch")
    data = tmp_path / "metro" / "modeling" / "data"
    shutil.copytree(DATA, data)
    shutil.copy(bodymodels["smpl"], data)
    shutil.copy(bodymodels["mano"], data)
    body = load_template("body", tmp_path)
    hand = load_template("hand", tmp_path)
    assert tuple(body.reference.shape) == (1, 445, 3) and body.faces.shape == (13776, 3)
    assert tuple(hand.reference.shape) == (1, 216, 3) and hand.faces.shape == (1538, 3)
    assert float(hand.reference[0, 0].abs().max()) == 0.0        # wrist-centred
    assert float(hand.reference.abs().max()) < 0.5               # metres, not millimetres
