"""Source selection: mirrors first, manifest order, URL rewriting by scheme."""
from pathlib import Path

from metro_assets.manifest import Asset, Source
from metro_assets.settings import resolve
from metro_assets.sources import candidates, hf_resolve, onedrive_direct


def _asset(*sources):
    return Asset(id="x", group="g", path="models/metro_release/x.bin", kind="binary", sources=tuple(sources))


def test_mirrors_come_first_then_manifest_order(tmp_path):
    a = _asset(Source("https", "https://a.invalid/x.bin", dead_since="2025-02", reason="409"), Source("https", "https://b.invalid/x.bin"))
    s = resolve(root=tmp_path, mirrors=["http://127.0.0.1:1/m/", str(tmp_path / "local")], env={})
    c = candidates(a, s)
    assert [x.label for x in c] == ["mirror", "mirror", "manifest", "manifest"]
    assert c[0].url == "http://127.0.0.1:1/m/models/metro_release/x.bin"
    assert c[1].url == (tmp_path / "local" / "models/metro_release/x.bin").as_uri() and c[1].kind == "file"
    assert not c[2].usable and "known dead since 2025-02" in c[2].describe()
    assert c[3].usable


def test_env_mirror_and_offline(tmp_path):
    a = _asset(Source("https", "https://b.invalid/x.bin"))
    s = resolve(root=tmp_path, env={"METRO_ASSETS_MIRROR": f"file://{tmp_path}/m, http://127.0.0.1:1/n", "METRO_ASSETS_OFFLINE": "1"})
    c = candidates(a, s)
    assert c[0].kind == "file" and c[0].usable
    assert not c[1].usable and not c[2].usable      # offline: http sources are never used


def test_scheme_rewrites():
    assert onedrive_direct("https://1drv.ms/u/s!AbC").startswith("https://api.onedrive.com/v1.0/shares/u!")
    assert hf_resolve("hf://owner/repo/models/x.bin@v2").endswith("/owner/repo/resolve/v2/models/x.bin")
    a = _asset(Source("onedrive", "https://1drv.ms/u/s!AbC"), Source("hf", "hf://owner/repo/x.bin"))
    c = candidates(a, resolve(root=Path("/tmp"), env={}))
    assert c[0].declared == "https://1drv.ms/u/s!AbC" and "api.onedrive.com" in c[0].url
    assert "/owner/repo/resolve/main/x.bin" in c[1].url
