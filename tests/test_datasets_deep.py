"""verify --deep on datasets: each planted fault is reported at its file and row; reindex; CLI."""
from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

import dataset_fixtures as fx
from metro_assets.cli import app
from metro_assets.datasets import reindex_dataset, verify_dataset
from metro_assets.manifest import load_catalog
from metro_assets.store import Store

CATALOG = load_catalog()


@pytest.fixture
def root(tmp_path):
    fx.build_all(tmp_path / "datasets")
    return tmp_path


def deep(root: Path, name: str, sample=None):
    v = verify_dataset(CATALOG.get(fx.asset_id(name)), Store(root), deep=True, sample=sample)
    return v, {(f.file, f.row) for f in v.findings if f.severity == "error"}, [f.describe() for f in v.findings]


def rewrite_row(tsv: Path, row: int, new: str) -> None:
    """Replace one row and regenerate the lineidx (so only the planted fault remains)."""
    lines = tsv.read_text().splitlines()
    lines[row] = new
    fx.write_tsv(tsv, [ln.split("\t") for ln in lines])


@pytest.mark.parametrize("name", fx.NAMES)
def test_clean_datasets_have_no_findings(root, name):
    v, errors, text = deep(root, name)
    assert not errors, text
    assert v.status == "unverified" and v.rows_checked > 0  # no extraction record: hashes unknown


def test_bad_lineidx_offset(root):
    li = root / "datasets/freihand/train.img.lineidx"
    offs = li.read_text().split()
    offs[2] = str(int(offs[2]) + 3)
    li.write_text("\n".join(offs))  # also: no final newline is accepted
    v, errors, text = deep(root, "freihand")
    assert ("train.img.lineidx", 2) in errors and v.status == "corrupt", text


def test_decreasing_and_non_decimal_lineidx(root):
    li = root / "datasets/muco/train.hw.lineidx"
    offs = li.read_text().split()
    offs[1], offs[3] = "x12", "0"
    li.write_text("\n".join(offs) + "\n")
    _, errors, text = deep(root, "muco")
    assert {("train.hw.lineidx", 1), ("train.hw.lineidx", 3)} <= errors, text


def test_missing_lineidx_then_reindex(root):
    (root / "datasets/3dpw/has_gender/test.label.lineidx").unlink()
    v, errors, text = deep(root, "3dpw")
    assert ("has_gender/test.label.lineidx", None) in errors
    assert any("metro-assets datasets reindex 3dpw" in t for t in text) and v.fix == "metro-assets datasets reindex 3dpw"
    r = reindex_dataset(CATALOG.get("3dpw"), Store(root))
    assert r.regenerated == (("has_gender/test.label.lineidx", 4),)
    assert not deep(root, "3dpw")[1]


def test_bad_base64_and_not_jpeg(root):
    tsv = root / "datasets/up3d/trainval.img.tsv"
    key = tsv.read_text().splitlines()[1].split("\t")[0]
    rewrite_row(tsv, 1, f"{key}\t/9j/4AAQ*bad")
    rewrite_row(tsv, 3, f"{tsv.read_text().splitlines()[3].split(chr(9))[0]}\t" + base64.b64encode(b"GIF89a....").decode())
    _, errors, text = deep(root, "up3d")
    assert {("trainval.img.tsv", 1), ("trainval.img.tsv", 3)} <= errors, text


def test_jpeg_size_disagrees_with_hw(root):
    tsv = root / "datasets/mpii/train.img.tsv"
    key = tsv.read_text().splitlines()[0].split("\t")[0]
    rewrite_row(tsv, 0, f"{key}\t" + base64.b64encode(fx.jpeg(7, 9)).decode())
    _, errors, text = deep(root, "mpii")
    assert ("train.img.tsv", 0) in errors and any("7x9" in t for t in text), text


@pytest.mark.parametrize("label,needle", [
    ('[{"center": NaN}]', "NaN"),
    ("[{not json", "not valid JSON"),
    ('[{"center": [1, 2]}]', "missing field"),
])
def test_bad_label_json(root, label, needle):
    tsv = root / "datasets/coco_smpl/smpl/train.label.tsv"
    key = tsv.read_text().splitlines()[2].split("\t")[0]
    rewrite_row(tsv, 2, f"{key}\t{label}")
    _, errors, text = deep(root, "coco_smpl")
    assert ("smpl/train.label.tsv", 2) in errors and any(needle in t for t in text), text


def test_hand_shapes_in_body_dataset(root):
    tsv = root / "datasets/muco/train.label.tsv"
    hand = (root / "datasets/freihand/train.label.tsv").read_text().splitlines()[0].split("\t")[1]
    key = tsv.read_text().splitlines()[1].split("\t")[0]
    rewrite_row(tsv, 1, f"{key}\t{hand}")
    _, errors, text = deep(root, "muco")
    assert ("train.label.tsv", 1) in errors and any("(24, 3)" in t for t in text), text


def test_row_count_and_key_mismatch(root):
    tsv = root / "datasets/freihand/test.label.tsv"
    lines = tsv.read_text().splitlines()
    fx.write_tsv(tsv, [ln.split("\t") for ln in lines[:-1]])
    hw = root / "datasets/freihand/test.hw.tsv"
    rewrite_row(hw, 1, "wrong.jpg\t" + hw.read_text().splitlines()[1].split("\t")[1])
    _, errors, text = deep(root, "freihand")
    assert ("test.label.tsv", None) in errors and any("row-count mismatch" in t for t in text), text
    assert any(f == "test.img.tsv" and r == 1 for f, r in errors) or ("test.label.tsv", 1) in errors, text


def test_missing_yaml_reference_and_escaping_paths(root):
    y = root / "datasets/human3.6m/valid.protocol2.yaml"
    y.write_text("img: valid_protocol2/valid.img.tsv\nhw: valid_protocol2/nope.hw.tsv\nlabel: /etc/passwd\n"
                 "linelist: ../../outside.tsv\n")
    _, errors, text = deep(root, "human3.6m")
    assert ("valid.protocol2.yaml", None) in errors
    assert any("nope.hw.tsv" in t and "does not exist" in t for t in text)
    assert any("absolute path" in t for t in text) and any("leaves the datasets folder" in t for t in text), text


def test_composite_missing_source_and_out_of_range(root):
    ll = root / "datasets" / fx.COMPOSITE / "train.linelist.tsv"
    lines = ll.read_text().splitlines()
    lines[0] = "0\t99"
    lines[1] = "7\t0"
    fx.write_tsv(ll, [ln.split("\t") for ln in lines])
    (root / "datasets/up3d/trainval.hw.tsv").unlink()
    _, errors, text = deep(root, fx.COMPOSITE)
    assert {("train.linelist.tsv", 0), ("train.linelist.tsv", 1), ("train.yaml", None)} <= errors, text


def test_linelist_out_of_range_and_empty_label(root):
    ll = root / "datasets/muco/train.linelist.tsv"
    fx.write_tsv(ll, [("0",), ("2",), ("9",)])  # row 2 has an empty annotation list
    _, errors, text = deep(root, "muco")
    assert {("train.linelist.tsv", 1), ("train.linelist.tsv", 2)} <= errors, text


def test_sample_limits_rows(tmp_path):
    fx.big_dataset(tmp_path / "datasets", "freihand", 2 << 20, image_bytes=2000)
    v, errors, _ = deep(tmp_path, "freihand", sample=10)
    assert not errors and v.rows_checked == 10


def test_cli_reindex_and_verify(root):
    (root / "datasets/freihand/train.img.lineidx").unlink()
    runner = CliRunner()
    r = runner.invoke(app, ["datasets", "verify", "freihand", "--root", str(root)])
    assert r.exit_code == 1
    assert "train.img.lineidx" in r.output and "metro-assets datasets reindex freihand" in r.output
    r = runner.invoke(app, ["datasets", "reindex", "freihand", "--root", str(root)])
    assert r.exit_code == 0 and "regenerated datasets/freihand/train.img.lineidx (4 rows)" in r.output
    r = runner.invoke(app, ["datasets", "verify", "freihand", "--root", str(root), "--json"])
    data = json.loads(r.output)
    assert data["datasets"][0]["status"] == "unverified" and not [f for f in data["datasets"][0]["findings"] if f["severity"] == "error"]
