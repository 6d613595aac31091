"""Dataset fetch: streaming extraction, layouts, resume after a cut or a kill, evil tars."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import dataset_fixtures as fx
from metro_assets.datasets import fetch_dataset, verify_dataset
from metro_assets.datasets import stream as stream_mod
from metro_assets.datasets.tarsafe import UnsafeMember
from metro_assets.errors import DiskSpaceError, VerificationError
from metro_assets.manifest import load_catalog
from metro_assets.settings import resolve
from metro_assets.store import Store

CATALOG = load_catalog()


def asset(name: str):
    return CATALOG.get(fx.asset_id(name))


def ctx(root: Path):
    return Store(root), resolve(root=root, env={}, retries=2, backoff_base=0.01)


def tree_bytes(d: Path):
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    return fx.build_all(tmp_path_factory.mktemp("src"))


def test_fetch_all_eight_over_nginx(nginx, src, tmp_path):
    layouts = ["rooted", "dot", "datasets", "flat"]
    for i, name in enumerate(fx.NAMES):
        fx.make_tar(src[name], nginx.docroot / "datasets" / f"{name}.tar", layout=layouts[i % 4])
    root = tmp_path / "root"
    store, settings = ctx(root)
    for name in fx.NAMES:
        a = asset(name)
        tar = nginx.docroot / "datasets" / a.archive
        r = fetch_dataset(a, [f"{nginx.url}/{a.mirror_path}"], store, settings)
        assert r.action == "downloaded" and r.to_json()["status"] == "ok"
        assert r.archive_sha256 == hashlib.sha256(tar.read_bytes()).hexdigest()
        assert tree_bytes(root / "datasets" / name) == tree_bytes(src[name])
        assert store.lock_entry(a.id)["how"] == "tofu"
        assert (root / ".metro-assets" / "datasets" / f"{a.id}.json").is_file()
    # composite references resolve against its now-present siblings
    for name in fx.NAMES:
        v = verify_dataset(asset(name), store, deep=True)
        assert v.status == "ok", [f.describe() for f in v.findings]
    assert not any((root / ".metro-assets" / "staging").glob("*/"))
    assert not list(root.rglob("*.tar"))
    # second run: present, nothing downloaded
    a = asset("freihand")
    assert fetch_dataset(a, [f"{nginx.url}/{a.mirror_path}"], store, settings).action == "present"


@pytest.mark.parametrize("layout", ["rooted", "dot", "datasets", "flat"])
def test_layouts_land_in_datasets_name(layout, src, tmp_path):
    tar = fx.make_tar(src["freihand"], tmp_path / "m" / "datasets" / "freihand.tar", layout=layout)
    store, settings = ctx(tmp_path / "root")
    r = fetch_dataset(asset("freihand"), [tar.as_uri()], store, settings)
    assert r.layout == {"dot": "rooted"}.get(layout, {"datasets": "datasets-rooted"}.get(layout, layout))
    assert tree_bytes(tmp_path / "root" / "datasets" / "freihand") == tree_bytes(src["freihand"])


@pytest.mark.parametrize("kind", fx.EVIL_KINDS)
def test_evil_tar_refused_nothing_outside(kind, tmp_path):
    tar, bad = fx.evil_tar(tmp_path / "m" / "datasets" / "freihand.tar", kind)
    root = tmp_path / "root"
    store, settings = ctx(root)
    before = set(tmp_path.rglob("*"))
    with pytest.raises(UnsafeMember) as ei:
        fetch_dataset(asset("freihand"), [tar.as_uri()], store, settings)
    assert ei.value.fields["member"] == bad and repr(bad) in str(ei.value)
    assert not (root / "datasets" / "freihand").exists()
    assert not list((root / ".metro-assets" / "staging").glob("*/"))
    created = {p for p in set(tmp_path.rglob("*")) - before if not str(p).startswith(str(root))}
    assert not created
    assert not Path("/tmp/metro-evil-absolute").exists()
    assert store.lock_entry("freihand") is None


def test_wrong_sha_discarded(src, tmp_path):
    tar = fx.make_tar(src["mpii"], tmp_path / "m" / "datasets" / "mpii.tar")
    store, settings = ctx(tmp_path / "root")
    store.record("mpii", path="datasets/mpii", size=tar.stat().st_size, sha256="0" * 64, source="x", how="tofu")
    with pytest.raises(VerificationError):
        fetch_dataset(asset("mpii"), [tar.as_uri()], store, settings)
    assert not (tmp_path / "root" / "datasets" / "mpii").exists()


def test_disk_space_preflight(src, tmp_path, monkeypatch):
    import shutil
    from metro_assets.datasets import api

    tar = fx.make_tar(src["up3d"], tmp_path / "m" / "datasets" / "up3d.tar")
    store, settings = ctx(tmp_path / "root")
    monkeypatch.setattr(api.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10, 10, 1000))
    with pytest.raises(DiskSpaceError) as ei:
        fetch_dataset(asset("up3d"), [tar.as_uri()], store, settings)
    assert "--force" in str(ei.value) and ei.value.exit_code == 1
    assert not (tmp_path / "root" / "datasets" / "up3d").exists()
    assert fetch_dataset(asset("up3d"), [tar.as_uri()], store, settings, force=True).action == "downloaded"


def test_dry_run_and_keep_archive(src, tmp_path):
    tar = fx.make_tar(src["3dpw"], tmp_path / "m" / "datasets" / "3dpw.tar")
    root = tmp_path / "root"
    store, settings = ctx(root)
    store.record("3dpw", path="datasets/3dpw", size=tar.stat().st_size,
                 sha256=hashlib.sha256(tar.read_bytes()).hexdigest(), source="x", how="tofu")
    plan = fetch_dataset(asset("3dpw"), [tar.as_uri()], store, settings, dry_run=True)
    assert plan.action == "planned" and plan.downloaded_bytes == tar.stat().st_size and plan.disk_needed > tar.stat().st_size
    assert not (root / "datasets").exists()
    r = fetch_dataset(asset("3dpw"), [tar.as_uri()], store, settings, keep_archive=True)
    assert (root / "datasets" / "3dpw.tar").read_bytes() == tar.read_bytes()
    assert r.kept_archive and tree_bytes(root / "datasets" / "3dpw") == tree_bytes(src["3dpw"])


def _big_tar(tmp_path: Path, mb: int = 4, extras: int = 6) -> Path:
    d = fx.big_dataset(tmp_path / "bigsrc", "freihand", mb << 20, image_bytes=30_000)
    for i in range(extras):  # several members so there are boundaries to resume at
        (d / f"extra{i:02d}.bin").write_bytes((d / "train.img.tsv").read_bytes()[: 300_000])
    return fx.make_tar(d, tmp_path / "www" / "datasets" / "freihand.tar")


def test_resume_after_cut_uses_range_and_if_range(fault_server, tmp_path, monkeypatch):
    monkeypatch.setattr(stream_mod, "CHECKPOINT_SECONDS", 0.0)
    tar = _big_tar(tmp_path)
    data = tar.read_bytes()
    url = fault_server.add("/datasets/freihand.tar", data, cut_after=len(data) // 2, cut_times=1, etags=['"v1"'])
    store, settings = ctx(tmp_path / "root")
    r = fetch_dataset(asset("freihand"), [url], store, settings)
    reqs = fault_server.requests_for("/datasets/freihand.tar")
    assert len(reqs) == 2 and reqs[0].range is None
    start = int(reqs[1].range.split("=")[1].rstrip("-"))
    assert 0 < start <= len(data) // 2 and reqs[1].if_range == '"v1"'
    assert r.resumed_from == start and r.downloaded_bytes == len(data) // 2 + (len(data) - start)
    assert r.archive_sha256 == hashlib.sha256(data).hexdigest()
    assert tree_bytes(tmp_path / "root" / "datasets" / "freihand") == tree_bytes(tmp_path / "bigsrc" / "freihand")


def _kill_midway(url: str, root: Path) -> Path:
    code = ("import metro_assets.datasets.stream as s; s.CHECKPOINT_SECONDS = 0;"
            "from metro_assets.manifest import load_catalog; from metro_assets.store import Store;"
            "from metro_assets.settings import resolve; from metro_assets.datasets import fetch_dataset;"
            f"root = {str(root)!r}; fetch_dataset(load_catalog().get('freihand'), [{url!r}], Store(root), resolve(root=root, env={{}}))")
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, cwd=str(Path(__file__).resolve().parents[1]))
    state = root / ".metro-assets" / "staging" / "freihand" / "state.json"
    deadline = time.monotonic() + 30
    try:
        while time.monotonic() < deadline:
            try:
                if json.loads(state.read_text()).get("offset", 0) > 1 << 20:
                    break
            except (OSError, ValueError):
                pass
            time.sleep(0.05)
        else:
            pytest.fail("no checkpoint within 30 s")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    return state


def test_killed_fetch_resumes_without_redownloading(nginx, tmp_path):
    tar = _big_tar(tmp_path, mb=1, extras=14)  # ~5 MiB at 2 MiB/s: ~2.5 s in all
    data = tar.read_bytes()
    root = tmp_path / "root"
    url = f"{nginx.throttled_url}/datasets/freihand.tar"
    state = _kill_midway(url, root)
    cp = json.loads(state.read_text())
    assert not cp["complete"]
    offset = cp["offset"]
    store, settings = ctx(root)
    a = asset("freihand")
    r = fetch_dataset(a, [url], store, settings)
    assert r.action == "resumed" and r.resumed_from >= offset > 0
    assert r.downloaded_bytes == len(data) - r.resumed_from
    assert any(f'"bytes={r.resumed_from}-"' in line for line in nginx.access_log()), nginx.access_log()
    assert r.archive_sha256 == hashlib.sha256(data).hexdigest()
    assert tree_bytes(root / "datasets" / "freihand") == tree_bytes(tmp_path / "bigsrc" / "freihand")
    v = verify_dataset(a, store, deep=True, sample=5)
    assert v.status == "ok", [f.describe() for f in v.findings]


def test_tampered_staging_starts_over(fault_server, tmp_path, monkeypatch):
    monkeypatch.setattr(stream_mod, "CHECKPOINT_SECONDS", 0.0)
    tar = _big_tar(tmp_path)
    data = tar.read_bytes()
    url = fault_server.add("/datasets/freihand.tar", data, cut_after=len(data) // 2, cut_times=1)
    root = tmp_path / "root"
    store, settings = ctx(root)
    settings = resolve(root=root, env={}, retries=0)
    with pytest.raises(Exception):
        fetch_dataset(asset("freihand"), [url], store, settings)
    staged = root / ".metro-assets" / "staging" / "freihand" / "tree"
    victim = next(p for p in staged.rglob("*") if p.is_file() and p.stat().st_size > 10)
    b = bytearray(victim.read_bytes())
    b[5] ^= 1
    victim.write_bytes(bytes(b))
    r = fetch_dataset(asset("freihand"), [url], store, ctx(root)[1])
    assert r.resumed_from == 0 and r.archive_sha256 == hashlib.sha256(data).hexdigest()
    assert tree_bytes(root / "datasets" / "freihand") == tree_bytes(tmp_path / "bigsrc" / "freihand")
