"""The safe loader: both serializations, strict key checks, kind/arch inference, refusals."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from metro_assets.errors import LoadError  # noqa: E402
from metro_assets.model.checkpoint import is_unused, load_checkpoint, read_state_dict, sniff_format  # noqa: E402
from metro_assets.model.deepcheck import check_checkpoint  # noqa: E402
from metro_assets.model.metro import build_model  # noqa: E402
from metro_assets.model.synthetic import random_state_dict, write_release_checkpoint  # noqa: E402


@pytest.fixture(scope="module")
def tiny_body():
    return random_state_dict("body-tiny", seed=1)


def _save(sd, path: Path, legacy: bool) -> Path:
    torch.save(sd, path, _use_new_zipfile_serialization=not legacy)
    return path


@pytest.mark.parametrize("legacy", [True, False])
def test_tiny_checkpoint_loads_strictly_in_both_serializations(tmp_path, tiny_body, legacy):
    path = _save(tiny_body, tmp_path / "metro_h36m_state_dict.bin", legacy)
    assert sniff_format(path) == ("legacy" if legacy else "zip")
    loaded = load_checkpoint(path, expect_kind="body")
    r = loaded.report
    assert r.ok and r.kind == "body" and r.arch == "tiny" and r.variant == "body-tiny"
    assert r.format == ("legacy" if legacy else "zip")
    assert r.num_keys == len(tiny_body) and not (r.missing or r.unexpected or r.mismatched)
    assert not loaded.model.training
    sd = loaded.model.state_dict()
    for k, v in tiny_body.items():   # loaded values are exactly the saved ones
        if legacy and is_unused(k):  # ... except dead weights of legacy files, left unread on CPU
            assert k in r.unread and not sd[k].any()
        else:
            assert torch.equal(sd[k], v), k
    assert len(r.unread) == (23 if legacy else 0)   # the spec's 23 never-used keys


def test_legacy_full_read_when_asked(tmp_path, tiny_body):
    path = _save(tiny_body, tmp_path / "l.bin", legacy=True)
    sd, fmt = read_state_dict(path, lean=True)
    assert fmt == "legacy" and all(torch.equal(sd[k], v) for k, v in tiny_body.items())
    sd, _ = read_state_dict(path)                     # plain torch.load path
    assert all(torch.equal(sd[k], v) for k, v in tiny_body.items())
    loaded = load_checkpoint(path, read_unused=True)  # what a GPU-bound model gets
    assert not loaded.report.unread
    assert all(torch.equal(loaded.model.state_dict()[k], v) for k, v in tiny_body.items())


def test_assign_load_makes_no_copy(tmp_path, tiny_body):
    path = _save(tiny_body, tmp_path / "a.bin", legacy=False)
    sd, fmt = read_state_dict(path)
    ptr = sd["upsampling2.weight"].data_ptr()
    from metro_assets.model.checkpoint import load_state_dict

    model = load_state_dict(sd, expect_kind="body").model
    assert model.upsampling2.weight.data_ptr() == ptr   # the mmap'd tensor itself, not a copy


def test_module_prefix_is_stripped(tmp_path, tiny_body):
    path = _save({f"module.{k}": v for k, v in tiny_body.items()}, tmp_path / "ddp.bin", legacy=False)
    r = load_checkpoint(path, expect_kind="body").report
    assert r.ok and r.stripped_prefix == "module."


def test_wrapped_state_dict_is_unwrapped(tmp_path, tiny_body):
    path = _save({"state_dict": tiny_body}, tmp_path / "w.bin", legacy=False)
    assert load_checkpoint(path).report.ok


def test_body_checkpoint_under_hand_name(tmp_path, tiny_body):
    path = _save(tiny_body, tmp_path / "metro_hand_state_dict.bin", legacy=True)
    with pytest.raises(LoadError) as ei:
        load_checkpoint(path, expect_kind="hand")
    msg = str(ei.value)
    assert "metro_hand_state_dict.bin holds a body" in msg and "used as the hand checkpoint" in msg
    assert "issue #3" in msg and "metro-assets fetch hand" in msg


def test_hand_checkpoint_under_body_name(tmp_path):
    path = _save(random_state_dict("hand-tiny"), tmp_path / "metro_h36m_state_dict.bin", legacy=True)
    with pytest.raises(LoadError, match=r"holds a hand \(metro_hand\) checkpoint, but it is used as the body checkpoint"):
        load_checkpoint(path, expect_kind="body")


def test_missing_keys(tmp_path, tiny_body):
    sd = dict(tiny_body)
    del sd["trans_encoder.1.bert.pooler.dense.weight"]   # a dead weight: upstream's strict=False hides this
    with pytest.raises(LoadError) as ei:
        load_checkpoint(_save(sd, tmp_path / "m.bin", legacy=False), expect_kind="body")
    assert "does not match the body-tiny network: missing keys" in str(ei.value)
    assert ei.value.fields["report"]["missing"] == ["trans_encoder.1.bert.pooler.dense.weight"]


def test_unexpected_keys(tmp_path, tiny_body):
    sd = dict(tiny_body, **{"trans_encoder.0.bert.embeddings.position_ids": torch.arange(512)})
    with pytest.raises(LoadError, match="unexpected keys") as ei:
        load_checkpoint(_save(sd, tmp_path / "u.bin", legacy=False), expect_kind="body")
    assert ei.value.fields["report"]["unexpected"] == ["trans_encoder.0.bert.embeddings.position_ids"]


def test_wrong_shapes(tmp_path, tiny_body):
    sd = dict(tiny_body)
    sd["cam_param_fc3.weight"] = torch.zeros(3, 251)
    with pytest.raises(LoadError, match="wrong shapes") as ei:
        load_checkpoint(_save(sd, tmp_path / "s.bin", legacy=True), expect_kind="body")
    assert "cam_param_fc3.weight: expected float32 (3, 250), got float32 (3, 251)" in str(ei.value)


@pytest.mark.parametrize("legacy", [True, False])
def test_truncated_file(tmp_path, tiny_body, legacy):
    path = _save(tiny_body, tmp_path / "t.bin", legacy)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(LoadError, match="truncated or corrupt"):
        load_checkpoint(path, expect_kind="body")


def test_html_file(tmp_path):
    path = tmp_path / "metro_h36m_state_dict.bin"
    path.write_text("<!DOCTYPE html>\n<html><body>409 Public access is not permitted</body></html>")
    with pytest.raises(LoadError, match="is an HTML/XML page, not a checkpoint"):
        load_checkpoint(path, expect_kind="body")


def test_empty_and_foreign_files(tmp_path):
    (tmp_path / "e.bin").write_bytes(b"")
    with pytest.raises(LoadError, match=r"is empty \(0 bytes\)"):
        load_checkpoint(tmp_path / "e.bin")
    (tmp_path / "f.bin").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 100)
    with pytest.raises(LoadError, match="is not a torch checkpoint"):
        load_checkpoint(tmp_path / "f.bin")
    with pytest.raises(LoadError, match="No checkpoint at"):
        load_checkpoint(tmp_path / "absent.bin")


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("legacy", [True, False])
def test_malicious_pickle_is_refused_without_running(tmp_path, legacy):
    marker = tmp_path / "PWNED"
    path = _save({"backbone.conv1.weight": torch.zeros(1), "x": _Evil(marker)}, tmp_path / "evil.bin", legacy)
    with pytest.raises(LoadError) as ei:
        load_checkpoint(path, expect_kind="body")
    assert not marker.exists()
    assert f"{os.system.__module__}.system" in str(ei.value)      # posix.system: the offending global is named
    assert "Nothing from the file was executed" in str(ei.value)
    assert f"{os.system.__module__}.system" in ei.value.fields["globals"]


def test_deepcheck_reads_metadata_only(tmp_path, tiny_body):
    path = _save(tiny_body, tmp_path / "metro_h36m_state_dict.bin", legacy=True)
    report = check_checkpoint(path, "metro-body")
    assert report.ok and report.kind == "body" and report.arch == "tiny"
    with pytest.raises(LoadError, match="used as the hand checkpoint"):
        check_checkpoint(path, "metro-hand")


def test_deepcheck_hrnet_width(tmp_path):
    model = build_model("body-w40", device="meta")
    sd = {k[len("backbone."):]: torch.zeros(v.shape, dtype=v.dtype) if v.dim() == 0 else torch.empty(v.shape, dtype=v.dtype)
          for k, v in model.state_dict().items() if k.startswith("backbone.")}
    path = _save(sd, tmp_path / "hrnetv2_w40_imagenet_pretrained.pth", legacy=False)
    del sd
    assert check_checkpoint(path, "hrnet-w40").variant == "hrnet-w40"
    with pytest.raises(LoadError, match="is the hrnet-w40 HRNet, not hrnet-w64"):
        check_checkpoint(path, "hrnet-w64")


def test_write_release_checkpoint_tiny(tmp_path):
    path = write_release_checkpoint(tmp_path / "x" / "metro_hand_state_dict.bin", "hand", "tiny", legacy=True)
    assert sniff_format(path) == "legacy"
    r = load_checkpoint(path, expect_kind="hand").report
    assert r.ok and r.variant == "hand-tiny"
