"""Manifest validation: every error names file, line, key path and what was expected."""
from pathlib import Path

import pytest

from metro_assets.errors import ManifestError, SelectionError
from metro_assets.manifest import load_catalog, parse_manifest

GOOD = """\
version: 1
groups:
  t: {description: test}
assets:
  - id: a
    group: t
    path: models/a.bin
    kind: binary
    size: 3
    sha256: null
    sources: [https://example.invalid/a.bin]
  - id: b
    group: t
    path: models/b.bin
    kind: binary
    size: null
    sha256: null
    sources:
      - kind: manual
        site: https://example.invalid
        archive: b.zip
        member: b/b.bin
"""


def _err(text: str) -> ManifestError:
    with pytest.raises(ManifestError) as ei:
        parse_manifest(text, "m.yaml")
    return ei.value


def test_good_manifest_parses():
    groups, assets = parse_manifest(GOOD, "m.yaml")
    assert [a.id for a in assets] == ["a", "b"]
    assert assets[1].manual and not assets[0].manual
    assert assets[0].sources[0].kind == "https"


def test_syntax_error_names_line():
    e = _err(GOOD.replace("    kind: binary\n    size: 3", "    kind: [binary\n    size: 3"))
    assert e.fields["file"] == "m.yaml" and e.fields["line"] is not None
    assert "YAML syntax error" in e.what


def test_missing_key_names_key_path():
    e = _err(GOOD.replace("    path: models/a.bin\n", ""))
    assert e.fields["key_path"] == "assets[0] -> path" or e.fields["key_path"].endswith("-> path")
    assert "missing required key 'path'" in e.what
    assert e.fields["line"] == 5


def test_duplicate_path():
    e = _err(GOOD.replace("models/b.bin", "models/a.bin"))
    assert "duplicate path" in e.what and e.fields["key_path"] == "assets -> b -> path"
    assert e.fields["line"] == 14


@pytest.mark.parametrize("bad", ["../escape.bin", "/etc/passwd", "models/../../x", "C:/x.bin", "a\\b.bin"])
def test_paths_must_stay_inside_root(bad):
    e = _err(GOOD.replace("models/a.bin", bad))
    assert e.fields["key_path"] == "assets -> a -> path"
    assert e.fields["line"] == 7


def test_bad_hash():
    e = _err(GOOD.replace("size: 3\n    sha256: null", "size: 3\n    sha256: abc123"))
    assert "bad sha256" in e.what and e.fields["key_path"] == "assets -> a -> sha256"
    assert "64 lower-case hex" in e.expected


def test_wrong_type_and_unknown_keys():
    e = _err(GOOD.replace("size: 3", "size: three"))
    assert e.fields["key_path"] == "assets -> a -> size" and "integer" in e.expected
    e = _err(GOOD.replace("    kind: binary\n    size: 3", "    kind: binary\n    colour: red\n    size: 3"))
    assert "unknown asset key 'colour'" in e.what


def test_manual_source_needs_fields():
    e = _err(GOOD.replace("        member: b/b.bin\n", ""))
    assert e.fields["key_path"] == "assets -> b -> sources[0] -> member"


def test_duplicate_id_and_unknown_group():
    e = _err(GOOD.replace("  - id: b", "  - id: a"))
    assert "duplicate asset id" in e.what
    e = _err(GOOD.replace("    group: t\n    path: models/b.bin", "    group: nope\n    path: models/b.bin"))
    assert "unknown group 'nope'" in e.what


def test_dead_source_fields():
    text = GOOD.replace("    sources: [https://example.invalid/a.bin]",
                        "    sources:\n      - url: https://example.invalid/a.bin\n        dead_since: '2025-02'\n        reason: gone")
    _, assets = parse_manifest(text, "m.yaml")
    assert assets[0].sources[0].dead and assets[0].sources[0].reason == "gone"


def test_builtin_catalog_covers_the_download_page():
    cat = load_catalog()
    paths = {a.path for a in cat.assets}
    for p in ["models/metro_release/metro_h36m_state_dict.bin", "models/metro_release/metro_3dpw_state_dict.bin",
              "models/metro_release/metro_hand_state_dict.bin", "models/hrnet/hrnetv2_w64_imagenet_pretrained.pth",
              "models/hrnet/hrnetv2_w40_imagenet_pretrained.pth",
              "models/hrnet/cls_hrnet_w64_sgd_lr5e-2_wd1e-4_bs32_x100.yaml",
              "models/hrnet/cls_hrnet_w40_sgd_lr5e-2_wd1e-4_bs32_x100.yaml",
              "metro/modeling/data/basicModel_neutral_lbs_10_207_0_v1.0.0.pkl", "metro/modeling/data/MANO_RIGHT.pkl",
              "metro/modeling/data/J_regressor_extra.npy", "metro/modeling/data/J_regressor_h36m_correct.npy",
              "metro/modeling/data/mesh_downsampling.npz", "metro/modeling/data/mano_downsampling.npz",
              "predictions/ckpt200-sc10_rot0-pred.zip", "predictions/ckpt200-multisc-pred.zip",
              "datasets/freihand", "datasets/Tax-H36m-coco40k-Muco-UP-Mpii"]:
        assert p in paths, p
    by = cat.by_id()
    assert by["smpl-neutral"].manual and by["mano-right"].manual
    assert by["metro-h36m"].sources[0].dead_since == "2025-02"
    assert by["mesh-downsampling"].sha256 == "5683b656d9acd7f1558db832527beb0cc6b3b45388cf41a7979dab52e2c57477"
    all_ids = {a.id for a in cat.select(["all"])}
    assert "freihand" not in all_ids and "metro-hand" in all_ids        # datasets are opt-in
    assert {a.id for a in cat.select(["datasets"])} >= {"freihand", "3dpw", "human3.6m"}
    assert "freihand" not in {a.id for a in cat.select(["hand"])}        # tags stay out of opt-in groups
    with pytest.raises(SelectionError):
        cat.select(["no-such-thing"])


def test_override_manifest_replaces_by_id(tmp_path: Path):
    m = tmp_path / "o.yaml"
    m.write_text("version: 1\nassets:\n  - id: metro-hand\n    group: checkpoints\n    path: models/metro_release/metro_hand_state_dict.bin\n"
                 "    kind: torch-checkpoint\n    size: 10\n    sha256: null\n    sources: [https://mirror.invalid/h.bin]\n")
    cat = load_catalog([m])
    assert cat.get("metro-hand").size == 10 and cat.get("metro-hand").origin == str(m)
