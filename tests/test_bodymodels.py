"""Structural validation and classification of SMPL / MANO models."""
from __future__ import annotations

import numpy as np
import pytest

import bodymodel_fixtures as bf
from bodymodel_fixtures import bodymodel_files  # noqa: F401  (session fixture)
from metro_assets.bodymodels import (classify, clean_bytes, hand_chirality, inspect_bytes, inspect_file, uses_chumpy,
                                     validate, variant_from_name)
from metro_assets.errors import StructuralError
from metro_assets.safe_pickle import loads_restricted


@pytest.mark.parametrize("name,variant", [("neutral", "neutral"), ("female", "female"), ("male", "male"),
                                          ("right", "right"), ("left", "left")])
def test_classification_from_contents(bodymodel_files, name, variant):
    info, _ = inspect_bytes(bodymodel_files.bytes(name), name="model.pkl")
    assert info.variant == variant and info.chumpy
    assert info.variant_from == ("chirality" if variant in ("right", "left") else "metadata")


def test_hand_chirality_survives_rotation_and_flips_under_a_mirror():
    j = bf.mano_model("right")["J"]
    rng = np.random.default_rng(0)
    for _ in range(5):
        q, _ = np.linalg.qr(rng.standard_normal((3, 3)))
        q *= np.sign(np.linalg.det(q))          # a proper rotation
        assert hand_chirality(j @ q.T + rng.normal(size=3)) < -0.02
        assert hand_chirality(j @ q.T * np.array([1.0, -1.0, 1.0])) > 0.02


def test_undecidable_hand_falls_back_on_the_name():
    model = bf.mano_model("right")
    model["J_regressor"] = None          # unusable regressor -> stored joints
    model["J"] = np.zeros((16, 3))        # degenerate: no chirality
    assert classify(model, "mano", "MANO_RIGHT.pkl") == ("right", "name")
    assert classify(model, "mano", "hand.pkl") == ("unknown", "unknown")


def test_validation_lists_every_mismatch():
    model = bf.mano_model("right")
    model["posedirs"] = model["posedirs"][:, :, :100]
    del model["hands_components"]
    with pytest.raises(StructuralError) as info:
        validate(model, source="MANO_RIGHT.pkl")
    msg = str(info.value)
    assert "Expected posedirs (778,3,135), hands_components (45,45)" in msg
    assert "got posedirs (778,3,100), hands_components missing" in msg


def test_nan_values_are_refused():
    model = bf.mano_model("right")
    model["v_template"][0, 0] = np.nan
    with pytest.raises(StructuralError, match="NaN"):
        validate(model)


def test_not_a_body_model():
    with pytest.raises(StructuralError, match="not an SMPL or MANO model"):
        validate({"means": np.zeros(3)})


@pytest.mark.parametrize("name,expected", [
    ("basicmodel_m_lbs_10_207_0_v1.0.0.pkl", ("smpl", "male")),
    ("basicModel_f_lbs_10_207_0_v1.0.0.pkl", ("smpl", "female")),
    ("SMPL_FEMALE.pkl", ("smpl", "female")),
    ("SMPL_MALE.pkl", ("smpl", "male")),
    ("basicModel_neutral_lbs_10_207_0_v1.0.0.pkl", ("smpl", "neutral")),
    ("MANO_RIGHT.pkl", ("mano", "right")),
    ("SMPLH_female.pkl", None),
])
def test_variant_from_name(name, expected):
    assert variant_from_name(name) == expected


def test_clean_bytes_keep_keys_and_values(bodymodel_files):
    data = bodymodel_files.bytes("neutral")
    _, model = inspect_bytes(data)
    clean = clean_bytes(model)
    assert uses_chumpy(data) and not uses_chumpy(clean)
    again = loads_restricted(clean)
    assert list(again) == list(model)
    np.testing.assert_array_equal(again["shapedirs"], model["shapedirs"])


def test_inspect_file_checks_the_expected_asset(bodymodel_files):
    p = bodymodel_files.file("female", "basicModel_m_lbs_10_207_0_v1.0.0.pkl")
    assert inspect_file(p).variant == "female"
    with pytest.raises(StructuralError, match="wrong body model for smpl-male"):
        inspect_file(p, expect_asset="smpl-male")
