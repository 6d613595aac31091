"""run-check end to end on tiny-config checkpoints (seconds on CPU), library and CLI."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from typer.testing import CliRunner  # noqa: E402

from metro_assets import console  # noqa: E402
from metro_assets.cli import app  # noqa: E402
from metro_assets.errors import ActionRequired, UsageError  # noqa: E402
from metro_assets.model.golden import golden_inputs  # noqa: E402
from metro_assets.model.synthetic import write_release_checkpoint  # noqa: E402
from metro_assets.runcheck import run_check  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from bodymodel_fixtures import write_mano_pickle, write_smpl_pickle  # noqa: E402

DATA = Path(__file__).parent / "data" / "metro-data"
REL = Path("models", "metro_release")
BODY_SHAPES = {"cam": [1, 3], "joints": [1, 14, 3], "vertices_sub2": [1, 431, 3], "vertices_sub": [1, 1723, 3],
               "vertices": [1, 6890, 3]}
HAND_SHAPES = {"cam": [1, 3], "joints": [1, 21, 3], "vertices_sub": [1, 195, 3], "vertices": [1, 778, 3]}


@pytest.fixture(scope="module")
def bodymodel_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("bodymodels")
    write_smpl_pickle(d / "basicModel_neutral_lbs_10_207_0_v1.0.0.pkl")
    write_mano_pickle(d / "MANO_RIGHT.pkl")
    return d


@pytest.fixture(scope="module")
def ckpt_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpts")
    write_release_checkpoint(d / "metro_h36m_state_dict.bin", "body", "tiny", legacy=True, seed=1)
    write_release_checkpoint(d / "metro_3dpw_state_dict.bin", "body", "tiny", legacy=False, seed=2)
    write_release_checkpoint(d / "metro_hand_state_dict.bin", "hand", "tiny", legacy=True, seed=3)
    return d


def make_root(base: Path, bodymodel_dir: Path, ckpt_dir: Path, *, checkpoints=("h36m", "3dpw", "hand"),
              bodymodels=True) -> Path:
    data = base / "metro" / "modeling" / "data"
    shutil.copytree(DATA, data)
    if bodymodels:
        for f in bodymodel_dir.iterdir():
            shutil.copy(f, data)
    (base / REL).mkdir(parents=True)
    for c in checkpoints:
        name = f"metro_{c}_state_dict.bin"
        (base / REL / name).symlink_to(ckpt_dir / name)
    return base


@pytest.fixture
def root(tmp_path, bodymodel_dir, ckpt_dir):
    return make_root(tmp_path / "root", bodymodel_dir, ckpt_dir)


def cli(*args: str):
    console.reset()
    result = CliRunner().invoke(app, list(args))
    console.reset()
    return result


def test_all_checks_every_checkpoint_and_writes_outputs(root, tmp_path):
    out = tmp_path / "out"
    res = run_check("all", root=root, device="cpu", save_outputs=out / "o.npz", save_mesh=out / "m.obj",
                    render=out / "r.png")
    assert res.ok and res.exit_code == 0 and res.device == "cpu"
    assert [c.name for c in res.checks] == ["metro-h36m", "metro-3dpw", "metro-hand"]
    h36m, dpw, hand = res.checks
    assert (h36m.kind, h36m.arch, h36m.format) == ("body", "tiny", "legacy")
    assert (dpw.format, hand.kind) == ("zip", "hand")
    assert {k: list(v) for k, v in h36m.output_shapes.items()} == BODY_SHAPES
    assert {k: list(v) for k, v in hand.output_shapes.items()} == HAND_SHAPES
    assert h36m.keys_loaded == 690 and h36m.peak_rss_bytes > 0 and h36m.forward_seconds > 0
    # one file per checkpoint, unambiguous names
    with np.load(out / "o.metro-h36m.npz") as z:
        assert {k: list(z[k].shape) for k in z.files} == BODY_SHAPES
        assert all(z[k].dtype == np.float32 for k in z.files)
    with np.load(out / "o.metro-hand.npz") as z:
        assert {k: list(z[k].shape) for k in z.files} == HAND_SHAPES
    obj = (out / "m.metro-hand.obj").read_text().splitlines()
    assert sum(line.startswith("v ") for line in obj) == 778 and sum(line.startswith("f ") for line in obj) == 1538
    from PIL import Image

    with Image.open(out / "r.metro-h36m.png") as im:
        assert im.size == (896, 448)
    assert h36m.template_source.endswith("basicModel_neutral_lbs_10_207_0_v1.0.0.pkl")


def test_single_checkpoint_keeps_the_given_names(root, tmp_path):
    res = run_check("hand", root=root, device="cpu", save_outputs=tmp_path / "hand.npz", save_mesh=tmp_path / "hand.obj")
    assert res.ok and (tmp_path / "hand.npz").is_file() and (tmp_path / "hand.obj").is_file()


def test_image_input(root, tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (300, 500, 3), dtype=np.uint8)).save(tmp_path / "in.jpg")
    res = run_check("hand", root=root, device="cpu", image=tmp_path / "in.jpg", render=tmp_path / "r.png")
    assert res.ok and res.input.endswith("in.jpg") and (tmp_path / "r.png").is_file()
    from metro_assets.model.image import load_image

    x, crop = load_image(tmp_path / "in.jpg")
    assert x.shape == (1, 3, 224, 224) and crop.shape == (224, 224, 3)


def test_template_override(root, tmp_path):
    np.savez(tmp_path / "inputs.npz", **golden_inputs())
    res = run_check("body", root=root, device="cpu", template=tmp_path / "inputs.npz")
    assert res.ok and all(c.template_source == "override" for c in res.checks)


def test_cli_json_report(root):
    r = cli("run-check", "body", "--root", str(root), "--device", "cpu", "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["ok"] and [c["name"] for c in doc["checks"]] == ["metro-h36m", "metro-3dpw"]
    assert doc["checks"][0]["output_shapes"] == BODY_SHAPES and doc["checks"][0]["non_finite"] == []


def test_cli_table_report(root, tmp_path):
    r = cli("run-check", "all", "--root", str(root), "--device", "cpu", "--save-outputs", str(tmp_path / "o.npz"))
    assert r.exit_code == 0, r.output
    for text in ("metro-h36m", "metro-3dpw", "metro-hand", "legacy", "zip", "tiny", "all finite",
                 f"wrote outputs {tmp_path / 'o.metro-3dpw.npz'}"):
        assert text in r.stdout


def test_root_from_environment(root, monkeypatch):
    monkeypatch.setenv("METRO_ASSETS_ROOT", str(root))
    assert run_check("hand", device="cpu").ok


def test_body_checkpoint_under_the_hand_name(tmp_path, bodymodel_dir, ckpt_dir):
    root = make_root(tmp_path / "r", bodymodel_dir, ckpt_dir, checkpoints=("h36m",))
    (root / REL / "metro_hand_state_dict.bin").symlink_to(ckpt_dir / "metro_h36m_state_dict.bin")
    r = cli("run-check", "hand", "--root", str(root), "--device", "cpu")
    assert r.exit_code == 1
    assert "metro_hand_state_dict.bin holds a body" in r.stderr and "issue #3" in r.stderr
    assert "metro-assets fetch hand" in r.stderr


def test_missing_checkpoint_names_the_fix(tmp_path, bodymodel_dir, ckpt_dir):
    root = make_root(tmp_path / "r", bodymodel_dir, ckpt_dir, checkpoints=("h36m",))
    r = cli("run-check", "body", "--root", str(root), "--device", "cpu", "--json")
    assert r.exit_code == 1
    doc = json.loads(r.stdout)
    assert [c["ok"] for c in doc["checks"]] == [True, False]
    assert doc["checks"][1]["error"]["next_command"].startswith("metro-assets fetch body --mirror BASE")
    r = cli("run-check", "all", "--root", str(make_root(tmp_path / "empty", bodymodel_dir, ckpt_dir, checkpoints=())))
    assert r.exit_code == 1 and "No METRO checkpoint under" in r.stderr and "metro-assets fetch checkpoints" in r.stderr
    assert "Traceback" not in r.output


def test_missing_smpl_is_an_action(tmp_path, bodymodel_dir, ckpt_dir):
    root = make_root(tmp_path / "r", bodymodel_dir, ckpt_dir, bodymodels=False)
    with pytest.raises(ActionRequired):
        run_check("body", root=root, device="cpu")
    r = cli("run-check", "body", "--root", str(root), "--device", "cpu")
    assert r.exit_code == 3
    assert "metro-assets import ~/Downloads/mpips_smplify_public_v2.zip" in r.stderr
    r = cli("run-check", "hand", "--root", str(root), "--device", "cpu")
    assert r.exit_code == 3 and "MANO_RIGHT.pkl" in r.stderr and "metro-assets import" in r.stderr


def test_missing_support_data(tmp_path, bodymodel_dir, ckpt_dir):
    root = make_root(tmp_path / "r", bodymodel_dir, ckpt_dir)
    (root / "metro/modeling/data/mano_downsampling.npz").unlink()
    r = cli("run-check", "hand", "--root", str(root), "--device", "cpu")
    assert r.exit_code == 1 and "Missing mano_downsampling.npz" in r.stderr and "metro-assets fetch support" in r.stderr


def test_explicit_checkpoint_and_usage_errors(root, ckpt_dir):
    res = run_check("all", root=root, device="cpu", checkpoint=ckpt_dir / "metro_hand_state_dict.bin")
    assert res.ok and res.checks[0].kind == "hand"
    with pytest.raises(UsageError):
        run_check("feet", root=root)
    r = cli("run-check", "body", "--root", str(root), "--device", "tpu")
    assert r.exit_code == 2
    if not torch.cuda.is_available():
        r = cli("run-check", "body", "--root", str(root), "--device", "cuda")
        assert r.exit_code == 2 and "--device cpu" in r.stderr


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(root):
    res = run_check("all", root=root, device="cuda")
    assert res.ok
    for c in res.checks:
        assert c.cuda_max_abs_diff is not None and c.cuda_max_abs_diff <= 1e-4 and c.peak_cuda_bytes > 0


def test_cli_without_torch_gives_the_install_command(root):
    code = ("import sys; sys.modules['torch'] = None\n"
            "from metro_assets.cli import main\n"
            f"sys.argv = ['metro-assets', 'run-check', 'body', '--root', {str(root)!r}]\n"
            "main()\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert p.returncode == 1, p.stderr
    assert "pip install 'metro-assets[model]'" in p.stderr and "Traceback" not in p.stderr


def test_cli_import_and_help_never_import_torch():
    code = ("import sys\n"
            "import metro_assets.cli\n"
            "assert 'torch' not in sys.modules\n"
            "from typer.testing import CliRunner\n"
            "for args in (['--help'], ['run-check', '--help']):\n"
            "    r = CliRunner().invoke(metro_assets.cli.app, args)\n"
            "    assert r.exit_code == 0, r.output\n"
            "import metro_assets.model, metro_assets.runcheck, metro_assets.model.config\n"
            "assert 'torch' not in sys.modules, 'torch imported'\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert p.returncode == 0, p.stderr


@pytest.mark.slow
def test_full_size_body_check_peak_rss(tmp_path, bodymodel_dir):
    """A released-architecture body check (legacy file, random weights) stays within 1.3x the file size."""
    root = tmp_path / "root"
    data = root / "metro" / "modeling" / "data"
    shutil.copytree(DATA, data)
    for f in bodymodel_dir.iterdir():
        shutil.copy(f, data)
    path = write_release_checkpoint(root / REL / "metro_h36m_state_dict.bin", "body", "w64", legacy=True)
    code = ("import sys, json\nfrom metro_assets.runcheck import run_check\n"
            f"r = run_check('body', root={str(root)!r}, device='cpu', checkpoint={str(path)!r})\n"
            "print(json.dumps(r.to_json()))\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert p.returncode == 0, p.stderr
    check = json.loads(p.stdout)["checks"][0]
    assert check["ok"] and check["arch"] == "w64" and check["keys_loaded"] == 2202
    assert check["peak_rss_bytes"] <= 1.3 * path.stat().st_size, check["peak_rss_bytes"] / path.stat().st_size
