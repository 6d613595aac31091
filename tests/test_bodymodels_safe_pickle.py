"""The restricted body-model loader: chumpy files without chumpy, nothing else."""
from __future__ import annotations

import pickle
import sys

import numpy as np
import pytest
import scipy.sparse as sp

import bodymodel_fixtures as bf
from bodymodel_fixtures import bodymodel_files  # noqa: F401  (session fixture)
from metro_assets.errors import LoadError
from metro_assets.safe_pickle import dumps_py2, load_body_model, loads_restricted


@pytest.fixture
def no_chumpy(monkeypatch):
    """chumpy must never be needed: make ``import chumpy`` fail even if installed."""
    monkeypatch.setitem(sys.modules, "chumpy", None)
    with pytest.raises(ImportError):
        import chumpy  # noqa: F401


def test_chumpy_is_not_installed_in_the_test_env():
    with pytest.raises(ImportError):
        import chumpy  # noqa: F401


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_generated_files_are_python2_style_like_the_official_ones(bodymodel_files):
    data = bodymodel_files.bytes("right")
    assert data[:2] == b"\x80\x02"
    with pytest.raises(UnicodeDecodeError):       # BINSTRING needs encoding='latin1'
        pickle.loads(data)
    with pytest.raises(ModuleNotFoundError, match="chumpy"):
        pickle.loads(data, encoding="latin1")


def test_smpl_with_chumpy_shapedirs_loads_as_plain_arrays(bodymodel_files, no_chumpy):
    model = load_body_model(bodymodel_files.file("neutral"))
    expected = bf.smpl_model("neutral")
    assert list(model) == list(expected)
    assert type(model["shapedirs"]) is np.ndarray
    np.testing.assert_array_equal(model["shapedirs"], expected["shapedirs"])
    np.testing.assert_array_equal(model["posedirs"], expected["posedirs"])
    assert sp.issparse(model["J_regressor"]) and model["J_regressor"].format == "csc"
    assert model["J_regressor"].shape == (24, 6890)
    assert (model["J_regressor"] != expected["J_regressor"]).nnz == 0
    assert model["f"].dtype == np.uint32 and model["kintree_table"][0, 0] == 4294967295
    assert model["pose_training_info"]["gender"] == "neutral"
    assert model["bs_type"] == "lrotmin"


def test_mano_select_over_ch_becomes_the_selected_values(bodymodel_files, no_chumpy):
    model = load_body_model(bodymodel_files.file("right"))
    assert model["shapedirs"].shape == (778, 3, 10)
    np.testing.assert_array_equal(model["shapedirs"], bf.mano_model("right")["shapedirs"])
    assert model["hands_components"].shape == (45, 45)


def test_clean_and_chumpy_files_load_to_the_same_values(bodymodel_files):
    a = load_body_model(bodymodel_files.file("right"))
    b = load_body_model(bodymodel_files.file("clean-right"))
    assert list(a) == list(b)
    for k in a:
        if isinstance(a[k], np.ndarray):
            np.testing.assert_array_equal(a[k], b[k])


@pytest.mark.filterwarnings("error::DeprecationWarning")
def test_py2_writer_round_trips_and_loads_with_plain_pickle():
    model = bf.mano_model("right")
    data = dumps_py2(model)
    # no chumpy names, no deprecated scipy.sparse.csc path: stock pickle reads it without warnings
    plain = pickle.loads(data, encoding="latin1")
    again = loads_restricted(data)
    for k, v in model.items():
        if isinstance(v, np.ndarray):
            np.testing.assert_array_equal(plain[k], v)
            np.testing.assert_array_equal(again[k], v)
            assert again[k].dtype == v.dtype
        elif sp.issparse(v):
            assert (again[k] != v).nnz == 0
        else:
            assert again[k] == v


def test_modern_python3_pickles_load_too():
    model = {"v_template": np.arange(6.0).reshape(2, 3), "J_regressor": sp.csc_matrix(np.eye(2)),
             "n": np.float32(1.5), "tags": {"a"}}
    for proto in (2, 4, 5):
        out = loads_restricted(pickle.dumps(model, protocol=proto))
        np.testing.assert_array_equal(out["v_template"], model["v_template"])
        assert (out["J_regressor"] != model["J_regressor"]).nnz == 0
        assert out["n"] == np.float32(1.5) and out["tags"] == {"a"}


@pytest.mark.parametrize("module,name", [("posix", "system"), ("os", "system"), ("builtins", "eval"),
                                         ("subprocess", "Popen"), ("numpy", "load"), ("chumpy.ch", "ChLambda")])
def test_any_other_global_is_refused_by_name_and_nothing_runs(tmp_path, module, name):
    marker = tmp_path / "pwned"
    data = (b"\x80\x02c" + module.encode() + b"\n" + name.encode() + b"\n" + b"U" + bytes([len(f"touch {marker}")])
            + f"touch {marker}".encode() + b"\x85R.")
    bad = tmp_path / "MANO_RIGHT.pkl"
    bad.write_bytes(data)
    with pytest.raises(LoadError) as info:
        load_body_model(bad)
    assert f"{module}.{name}" in str(info.value)
    assert info.value.fields["global_name"] == f"{module}.{name}"
    assert "executed" in str(info.value)
    assert not marker.exists()


def test_malicious_helper_is_refused(tmp_path):
    bad = tmp_path / "x.pkl"
    bad.write_bytes(bf.malicious_pickle())
    with pytest.raises(LoadError, match=r"posix\.system"):
        load_body_model(bad)


@pytest.mark.parametrize("data", [bf.APPLEDOUBLE, b"", b"<html><body>Sign in</body></html>", b"\x80\x02}q\x00(U"],
                         ids=["appledouble", "empty", "html", "truncated"])
def test_non_pickles_raise_load_error(tmp_path, data):
    p = tmp_path / "f.pkl"
    p.write_bytes(data)
    with pytest.raises(LoadError):
        load_body_model(p)


def test_a_pickle_that_is_not_a_dict_is_refused(tmp_path):
    p = tmp_path / "list.pkl"
    p.write_bytes(dumps_py2([1, 2]))
    with pytest.raises(LoadError, match="does not hold a body model"):
        load_body_model(p)
