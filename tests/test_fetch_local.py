"""fetch / verify / list end to end against a file:// mirror (no network)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from asset_fixtures import make_test_mirror
from metro_assets.cli import app

runner = CliRunner()


def cli(*args, env=None):
    r = runner.invoke(app, [str(a) for a in args], env=env or {})
    return r


@pytest.fixture
def tm(tmp_path):
    return make_test_mirror(tmp_path)


def fetch(tm, root, *extra):
    return cli("fetch", "tst", "--root", root, "--manifest", tm.manifest, "--mirror", tm.dir, "--json", *extra)


def test_fetch_lays_out_verifies_and_records(tm, tmp_path):
    root = tmp_path / "root"
    r = fetch(tm, root)
    assert r.exit_code == 3, r.output          # only the manual asset remains
    out = json.loads(r.stdout)
    by = {a["id"]: a for a in out["assets"]}
    for aid, data in tm.files.items():
        assert (root / tm.paths[aid]).read_bytes() == data
        assert by[aid]["status"] == "ok" and by[aid]["sha256"] == tm.sha(aid)
    assert by["t-ckpt"]["recorded"] and not by["t-npy"]["recorded"]   # trust on first use only without a pinned hash
    assert by["t-manual"]["status"] == "action-required" and "metro-assets import" in by["t-manual"]["message"]
    lock = json.loads((root / "metro-assets.lock").read_text())
    assert lock["assets"]["t-ckpt"]["sha256"] == tm.sha("t-ckpt") and lock["assets"]["t-ckpt"]["how"] == "tofu"
    # nothing hidden or partial is left beside the files
    leftovers = [p for p in root.rglob("*.metro-part*")]
    assert leftovers == []

    r = cli("verify", "tst", "--root", root, "--manifest", tm.manifest, "--json")
    v = json.loads(r.stdout)
    assert r.exit_code == 3 and {a["id"]: a["status"] for a in v["assets"]}["t-ckpt"] == "ok"

    # second fetch: everything present, nothing re-downloaded
    r = fetch(tm, root)
    out = json.loads(r.stdout)
    assert out["bytes_downloaded"] == 0
    assert {a["action"] for a in out["assets"] if a["id"] != "t-manual"} == {"present"}


def test_verify_and_list_tell_the_truth_after_damage(tm, tmp_path):
    root = tmp_path / "root"
    fetch(tm, root, "--quiet")
    (root / tm.paths["t-npy"]).unlink()                                   # deleted
    p = root / tm.paths["t-ckpt"]
    p.write_bytes(p.read_bytes()[:-10])                                   # truncated (TOFU identity)
    z = root / tm.paths["t-zip"]
    data = bytearray(z.read_bytes()); data[40] ^= 0xFF
    st = z.stat()
    z.write_bytes(bytes(data)); os.utime(z, ns=(st.st_atime_ns, st.st_mtime_ns))   # altered in place, same size+mtime
    r = cli("list", "tst", "--root", root, "--manifest", tm.manifest, "--json")
    rows = {x["id"]: x for x in json.loads(r.stdout)}
    assert set(rows["t-npy"]) >= {"id", "group", "path", "size", "sha256", "manual", "status"}
    assert rows["t-npy"]["status"] == "missing"
    assert rows["t-ckpt"]["status"] == "corrupt"
    assert rows["t-yaml"]["status"] == "ok"
    assert rows["t-manual"]["manual"] is True and rows["t-manual"]["status"] == "action-required"
    # same inode/size/mtime: the fast path cannot see it, --full must
    r = cli("verify", "t-zip", "--root", root, "--manifest", tm.manifest, "--json", "--full")
    v = json.loads(r.stdout)["assets"][0]
    assert r.exit_code == 1 and v["status"] == "corrupt" and v["got_sha256"] != v["sha256"]
    # fetch repairs what it can; the corrupt file is replaced atomically
    r = fetch(tm, root)
    assert (root / tm.paths["t-npy"]).read_bytes() == tm.files["t-npy"]
    assert (root / tm.paths["t-ckpt"]).read_bytes() == tm.files["t-ckpt"]


def test_zero_byte_and_html_leftovers_are_replaced(tm, tmp_path):
    root = tmp_path / "root"
    (root / tm.paths["t-ckpt"]).parent.mkdir(parents=True)
    (root / tm.paths["t-ckpt"]).write_bytes(b"")                            # wget -nc leftover
    (root / tm.paths["t-big"]).parent.mkdir(parents=True, exist_ok=True)
    (root / tm.paths["t-big"]).write_bytes(b"<html><body>409</body></html>")
    r = cli("verify", "t-ckpt", "t-big", "--root", root, "--manifest", tm.manifest, "--json")
    assert {a["status"] for a in json.loads(r.stdout)["assets"]} == {"corrupt"}
    r = fetch(tm, root)
    assert (root / tm.paths["t-ckpt"]).read_bytes() == tm.files["t-ckpt"]
    assert (root / tm.paths["t-big"]).read_bytes() == tm.files["t-big"]


def test_mirror_with_wrong_bytes_is_refused_and_nothing_placed(tm, tmp_path):
    root = tmp_path / "root"
    (tm.dir / tm.paths["t-npy"]).write_bytes(b"\x93NUMPY" + b"x" * 100)     # wrong bytes for a pinned hash
    (tm.dir / tm.paths["t-ckpt"]).write_bytes(b"<!DOCTYPE html><html>login</html>")  # HTML for a TOFU asset
    r = fetch(tm, root)
    assert r.exit_code == 1
    by = {a["id"]: a for a in json.loads(r.stdout)["assets"]}
    assert by["t-npy"]["status"] == "failed" and "wrong s" in by["t-npy"]["message"]
    assert by["t-ckpt"]["status"] == "failed" and "HTML" in by["t-ckpt"]["message"]
    assert not (root / tm.paths["t-npy"]).exists() and not (root / tm.paths["t-ckpt"]).exists()
    assert "t-ckpt" not in json.loads((root / "metro-assets.lock").read_text())["assets"]
    assert not list(root.rglob("*.metro-part*"))


def test_dry_run_plans_without_side_effects(tm, tmp_path):
    root = tmp_path / "root"
    r = cli("fetch", "tst", "--root", root, "--manifest", tm.manifest, "--dry-run", "--json")
    assert r.exit_code == 0
    plan = json.loads(r.stdout)
    acts = {a["id"]: a["action"] for a in plan["assets"]}
    assert acts["t-manual"] == "manual" and acts["t-ckpt"] == "blocked"   # no mirror: only dead sources
    assert plan["disk_ok"] is True
    r = cli("fetch", "tst", "--root", root, "--manifest", tm.manifest, "--mirror", tm.dir, "--dry-run", "--json")
    plan = json.loads(r.stdout)
    assert {a["id"]: a["action"] for a in plan["assets"]}["t-ckpt"] == "download"
    # sizes not in the manifest are probed from the source (stat for file://, HEAD for http)
    assert plan["bytes_needed"] == sum(len(d) for d in tm.files.values()) and plan["unknown_sizes"] == 0
    assert not root.exists()


def test_blocked_dead_source_message_and_exit(tm, tmp_path):
    r = cli("fetch", "t-ckpt", "--root", tmp_path / "root", "--manifest", tm.manifest)
    assert r.exit_code == 1
    assert "known dead since 2025-02" in r.output and "--mirror" in r.output


def test_offline_uses_file_mirror_only(tm, tmp_path):
    r = cli("fetch", "t-npy", "--root", tmp_path / "root", "--manifest", tm.manifest, "--mirror", tm.dir, "--offline", "--json")
    assert r.exit_code == 0
    r = cli("fetch", "t-yaml", "--root", tmp_path / "root2", "--manifest", tm.manifest, "--mirror", "http://127.0.0.1:9/x",
            "--offline", "--json")
    assert r.exit_code == 1


def test_usage_errors_exit_2(tm, tmp_path):
    r = cli("fetch", "nope", "--root", tmp_path, "--manifest", tm.manifest)
    assert r.exit_code == 2 and "Nothing matches 'nope'" in r.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("assets:\n  - id: x\n    group: checkpoints\n    path: ../x\n")
    r = cli("verify", "--root", tmp_path, "--manifest", bad, "--json")
    assert r.exit_code == 2
    err = json.loads(r.stdout)
    assert err["line"] == 4 and err["key_path"] == "assets -> x -> path" and "'..'" in err["message"]


def test_env_root_and_mirror(tm, tmp_path):
    root = tmp_path / "envroot"
    r = cli("fetch", "t-yaml", "--manifest", tm.manifest, "--json",
            env={"METRO_ASSETS_ROOT": str(root), "METRO_ASSETS_MIRROR": str(tm.dir)})
    assert r.exit_code == 0, r.output
    assert (root / tm.paths["t-yaml"]).read_bytes() == tm.files["t-yaml"]


def test_disk_space_preflight_refuses_unless_forced(tm, tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    Usage = namedtuple("Usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: Usage(10**6, 10**6 - 100, 100))
    root = tmp_path / "root"
    r = cli("fetch", "tst", "--root", root, "--manifest", tm.manifest, "--mirror", tm.dir)
    assert r.exit_code == 1 and "Not enough free disk space" in r.output and "--force" in r.output
    assert not any(root.rglob("*.bin")) if root.exists() else True
    r = cli("fetch", "t-yaml", "--root", root, "--manifest", tm.manifest, "--mirror", tm.dir, "--force")
    assert r.exit_code == 0
