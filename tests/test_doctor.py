"""doctor: each trap seeded into a tree is found and gets the right fix; --online never hangs."""
from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from asset_fixtures import make_test_mirror
from metro_assets.cli import app
from metro_assets.doctor import checkpoint_kind, environment_checks, run_doctor
from metro_assets.manifest import load_catalog
from metro_assets.settings import resolve
from metro_assets.store import Store, file_lock

runner = CliRunner()
DAY = 24 * 3600


def cli(*args):
    return runner.invoke(app, [str(a) for a in args], env={})


def doctor(root, catalog, **kw):
    return run_doctor(resolve(root=root, env={}), catalog, **kw)


def by_id(report):
    return {c.id: c for c in report.checks}


@pytest.fixture
def tm(tmp_path):
    return make_test_mirror(tmp_path, with_manual=False)


@pytest.fixture
def fetched(tm, tmp_path):
    """A root with every test asset fetched (and recorded) from the file mirror."""
    root = tmp_path / "root"
    r = cli("fetch", "tst", "--root", root, "--manifest", tm.manifest, "--mirror", tm.dir, "--quiet")
    assert r.exit_code == 0, r.output
    return root


def tst_catalog(tm):
    return load_catalog([tm.manifest], builtin=False)


def legacy_checkpoint(path: Path, keys) -> Path:
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: torch.zeros(2) for k in keys}, path, _use_new_zipfile_serialization=False)
    return path


BODY_KEYS = ["trans_encoder.0.bert.embeddings.position_embeddings.weight", "upsampling.weight", "upsampling2.weight",
             "backbone.conv1.weight"]
HAND_KEYS = ["trans_encoder.0.bert.embeddings.position_embeddings.weight", "upsampling.weight", "backbone.conv1.weight"]


def test_healthy_tree_has_no_errors(tm, fetched):
    report = doctor(fetched, tst_catalog(tm))
    checks = by_id(report)
    assert report.exit_code == 0, [c for c in report.checks if c.status == "error"]
    for aid in tm.files:
        assert checks[f"asset.{aid}"].status == "ok"
    assert checks["lockfile"].status == "ok"
    assert checks["root.writable"].status == "ok" and checks["root.locks"].status == "ok"
    assert checks["root.hardlinks"].status == "ok"
    assert "free" in checks["root.free-space"].detail
    assert {c.category for c in report.checks} >= {"environment", "root", "asset", "lockfile"}
    # the self-tests leave nothing behind
    assert not [p for p in fetched.iterdir() if p.name.startswith(".metro-assets-doctor-")]


def test_zero_byte_and_html_leftovers(tm, tmp_path):
    root = tmp_path / "root"
    ckpt = root / tm.paths["t-ckpt"]
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"")                                                    # wget -nc leftover
    big = root / tm.paths["t-big"]
    big.parent.mkdir(parents=True, exist_ok=True)
    big.write_bytes(b'<?xml version="1.0" encoding="utf-8"?><Error><Code>PublicAccessNotPermitted</Code></Error>')
    stray = root / "models" / "old_download.bin"
    stray.write_bytes(b"<!DOCTYPE html><html><head><title>Sign in</title></head></html>")
    report = doctor(root, tst_catalog(tm))
    c = by_id(report)
    assert report.exit_code == 1
    assert c["asset.t-ckpt"].status == "error" and "0-byte" in c["asset.t-ckpt"].detail
    assert c["asset.t-ckpt"].fix == f"rm {ckpt} && metro-assets fetch t-ckpt --root {root} --mirror BASE"
    assert "HTML/XML error page" in c["asset.t-big"].detail and "PublicAccessNotPermitted" in c["asset.t-big"].detail
    assert c["asset.t-big"].fix.startswith(f"rm {big} && metro-assets fetch t-big")
    assert c["trap.bad-file.models/old_download.bin"].fix == f"rm {stray}"
    assert "'Sign in'" in c["trap.bad-file.models/old_download.bin"].detail


def test_wrong_case_names(tmp_path):
    root = tmp_path / "root"
    data = root / "metro" / "modeling" / "data"
    data.mkdir(parents=True)
    male = data / "basicmodel_m_lbs_10_207_0_v1.0.0.pkl"                  # as the official zip spells it
    male.write_bytes(b"\x80\x02}q\x00.")
    mano = root / "MANO_right.pkl"                                         # any case-insensitive match, anywhere
    mano.write_bytes(b"\x80\x02}q\x00.")
    report = doctor(root, load_catalog())
    c = by_id(report)
    t = c["trap.misplaced.smpl-male"]
    assert "wrong-case" in t.detail and "basicModel_m_lbs_10_207_0_v1.0.0.pkl" in t.detail
    assert t.fix == f"metro-assets import {male} --root {root}"
    t = c["trap.misplaced.mano-right"]
    assert t.status == "error" and t.fix == f"metro-assets import {mano} --root {root}"


def test_body_checkpoint_under_the_hand_name(tmp_path):
    pytest.importorskip("torch")
    root = tmp_path / "root"
    rel = root / "models" / "metro_release"
    hand = legacy_checkpoint(rel / "metro_hand_state_dict.bin", BODY_KEYS)
    body = legacy_checkpoint(rel / "metro_h36m_state_dict.bin", BODY_KEYS)
    legacy_checkpoint(rel / "metro_3dpw_state_dict.bin", HAND_KEYS)       # and the reverse
    report = doctor(root, load_catalog())
    c = by_id(report)
    t = c["trap.swapped.metro-hand"]
    assert t.status == "error" and "body checkpoint" in t.detail and "upsampling2.weight" in t.detail
    assert t.fix == f"rm {hand} && metro-assets fetch metro-hand --root {root} --mirror BASE"
    assert "hand checkpoint" in c["trap.swapped.metro-3dpw"].detail
    assert "trap.swapped.metro-h36m" not in c
    assert checkpoint_kind(body) == "body"


def test_checkpoint_kind_reads_zip_checkpoints_and_ignores_others(tmp_path):
    torch = pytest.importorskip("torch")
    z = tmp_path / "hand.pth"
    torch.save({k: torch.zeros(1) for k in HAND_KEYS}, z)
    assert checkpoint_kind(z) == "hand"
    torch.save({"conv1.weight": torch.zeros(1)}, z)
    assert checkpoint_kind(z) is None


def test_chumpy_body_model(tmp_path):
    from bodymodel_fixtures import write_mano_pickle

    root = tmp_path / "root"
    p = write_mano_pickle(root / "metro" / "modeling" / "data" / "MANO_RIGHT.pkl", chumpy=True)
    report = doctor(root, load_catalog())
    t = by_id(report)["trap.chumpy.mano-right"]
    assert t.status == "warn" and "chumpy" in t.detail
    assert t.fix == f"metro-assets import --clean {p} --root {root}"
    write_mano_pickle(p, chumpy=False)
    assert "trap.chumpy.mano-right" not in by_id(doctor(root, load_catalog()))


def test_stale_partials_temp_files_and_locks(tm, fetched):
    root = fetched
    d = root / "models" / "metro_release"
    old = time.time() - 2 * DAY
    orphan = d / ".metro_h36m_state_dict.bin.metro-part"                  # no resume state: cannot resume
    orphan.write_bytes(b"x" * 100)
    abandoned = d / ".metro_hand_state_dict.bin.metro-part"               # old, with state
    abandoned.write_bytes(b"x" * 100)
    (d / ".metro_hand_state_dict.bin.metro-part.json").write_text("{}")
    for p in (abandoned, d / ".metro_hand_state_dict.bin.metro-part.json"):
        os.utime(p, (old, old))
    fresh = d / ".metro_3dpw_state_dict.bin.metro-part"                   # fresh, resumable: not a problem
    fresh.write_bytes(b"x")
    (d / ".metro_3dpw_state_dict.bin.metro-part.json").write_text("{}")
    tmpf = d / ".metro-assets.lock.abc123.tmp"
    tmpf.write_bytes(b"{")
    os.utime(tmpf, (old, old))
    store = Store(root)
    bad_lock = store.state_dir / "locks" / "t-zip.lock"
    bad_lock.parent.mkdir(parents=True, exist_ok=True)
    bad_lock.unlink()
    bad_lock.mkdir()                                                         # a lock that is a directory
    with file_lock(store.lock_path("t-npy")):                                # held by "another process"
        report = doctor(root, tst_catalog(tm))
    c = by_id(report)
    rel = "models/metro_release/"
    t = c[f"trap.stale-part.{rel}.metro_h36m_state_dict.bin.metro-part"]
    assert "without its resume state" in t.detail and t.fix == f"rm {orphan}"
    t = c[f"trap.stale-part.{rel}.metro_hand_state_dict.bin.metro-part"]
    assert "2.0 days" in t.detail and t.fix == f"rm {abandoned} {abandoned}.json"
    assert not [k for k in c if "metro_3dpw" in k]
    assert c[f"trap.stale-tmp.{rel}.metro-assets.lock.abc123.tmp"].fix == f"rm {tmpf}"
    t = c["trap.lock..metro-assets/locks/t-npy.lock"]
    assert t.status == "warn" and "held by a running process" in t.detail
    t = c["trap.lock..metro-assets/locks/t-zip.lock"]
    assert t.status == "error" and t.fix == f"rm -r {bad_lock}"
    # without the held lock and the broken one, lock files are harmless
    bad_lock.rmdir()
    c = by_id(doctor(root, tst_catalog(tm)))
    assert c["trap.locks"].status == "ok" and "none held" in c["trap.locks"].detail


def test_lockfile_drift(tm, fetched):
    root = fetched
    store = Store(root)
    ckpt = root / tm.paths["t-ckpt"]
    e = store.lock_entry("t-ckpt")
    store.record("t-ckpt", path=e["path"], size=e["size"], sha256="0" * 64, source="x", how="tofu")    # sha drift
    store.record("gone-asset", path="models/gone.bin", size=1, sha256="1" * 64, source="x", how="tofu")
    store.record("t-zip", path="predictions/elsewhere.zip", size=1, sha256="2" * 64, source="x", how="tofu")
    store.record("t-npy", path=tm.paths["t-npy"], size=len(tm.files["t-npy"]), sha256="3" * 64, source="x", how="import")
    c = by_id(doctor(root, tst_catalog(tm)))
    t = c["lockfile.t-ckpt"]
    assert t.status == "error" and "changed after it was recorded" in t.detail
    assert t.fix.startswith(f"rm {ckpt} && metro-assets fetch t-ckpt")
    assert c["asset.t-ckpt"].status == "error"                                 # verify agrees
    t = c["lockfile.gone-asset"]
    assert t.status == "warn" and "no manifest defines it" in t.detail and '.forget("gone-asset")' in t.fix
    assert "recorded path 'predictions/elsewhere.zip'" in c["lockfile.t-zip"].detail
    assert "differs from the manifest" in c["lockfile.t-npy"].detail
    assert "lockfile" not in c
    # the forget command the report prints really works
    import subprocess

    import shlex

    argv = shlex.split(t.fix)
    assert argv[:2] == ["python", "-c"]
    subprocess.run([sys.executable, *argv[1:]], check=True, cwd=Path(__file__).resolve().parent.parent)
    assert "gone-asset" not in store.lock_entries()


def test_size_drift_in_lockfile(tm, fetched):
    ckpt = fetched / tm.paths["t-ckpt"]
    ckpt.write_bytes(ckpt.read_bytes() + b"extra")
    c = by_id(doctor(fetched, tst_catalog(tm)))
    assert "recorded as" in c["lockfile.t-ckpt"].detail and c["lockfile.t-ckpt"].status == "error"


def test_missing_root_and_missing_torch(tmp_path, monkeypatch):
    root = tmp_path / "does" / "not" / "exist"
    report = doctor(root, load_catalog())
    c = by_id(report)
    assert c["root.exists"].status == "warn" and c["root.exists"].fix == f"metro-assets fetch all --root {root}"
    assert c["root.writable"].status == "ok"
    assert c["asset.smpl-neutral"].fix == f"metro-assets import ~/Downloads/mpips_smplify_public_v2.zip --root {root}"
    assert not root.exists()
    monkeypatch.setitem(sys.modules, "torch", None)                            # import torch -> ImportError
    env = {c.id: c for c in environment_checks()}
    assert env["env.torch"].status == "warn" and env["env.torch"].fix == "pip install 'metro-assets[model]'"
    assert "env.cuda" not in env


# --------------------------------------------------------------------------- --online

def _silent_listener():
    """A socket that accepts connections (kernel backlog) and never answers."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    return s


def _manifest(path: Path, sources) -> Path:
    lines = ["version: 1", "groups:", "  net: {description: probes}", "assets:"]
    for i, (url, dead) in enumerate(sources):
        lines += [f"  - id: n{i}", "    group: net", f"    path: net/n{i}.bin", "    kind: binary", "    size: null",
                  "    sha256: null", "    sources:", f"      - url: {url}"]
        if dead:
            lines += ["        dead_since: '2025-02'", "        reason: answers 409"]
    lines += ["  - id: lic", "    group: net", "    path: net/lic.pkl", "    kind: body-model", "    size: null", "    sha256: null",
              "    sources:", "      - kind: manual", "        site: https://licensed.invalid", "        archive: a.zip", "        member: a.pkl"]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_online_probes_alive_dead_stalled_and_unreachable(fault_server, tmp_path):
    from servers import AZURE_409_BODY

    alive = fault_server.add("/alive.bin", b"x" * 1000)
    gone = fault_server.add("/gone.bin", status=404, error_body=b"nope")
    azure = fault_server.add("/azure.bin", status=409, error_body=AZURE_409_BODY)
    stall = fault_server.add("/stall.bin", b"y" * 100000, stall_after=0, stall_seconds=30)   # headers, then nothing
    back = fault_server.add("/back.bin", b"z" * 10)
    silent = _silent_listener()
    mute = f"http://127.0.0.1:{silent.getsockname()[1]}/mute.bin"
    refused = f"http://127.0.0.1:{_silent_listener_port_closed()}/refused.bin"
    man = _manifest(tmp_path / "net.yaml", [(alive, False), (gone, False), (azure, True), (stall, False), (back, True),
                                            (mute, False), (refused, False)])
    catalog = load_catalog([man], builtin=False)
    t0 = time.monotonic()
    try:
        report = doctor(tmp_path / "root", catalog, online=True, probe_timeout=1.0)
    finally:
        silent.close()
    assert time.monotonic() - t0 < 8
    online = {c.detail.split(":", 1)[0]: c for c in report.checks if c.category == "online"}
    assert set(online) == {"n0", "n1", "n2", "n3", "n4", "n5", "n6"}            # the manual source is not probed
    assert online["n0"].status == "ok" and "alive" in online["n0"].detail and "206" in online["n0"].detail
    assert online["n1"].status == "error" and "dead (HTTP 404)" in online["n1"].detail
    assert online["n1"].fix.startswith("metro-assets fetch n1 --mirror BASE")
    assert online["n2"].status == "warn" and "still dead" in online["n2"].detail and "PublicAccessNotPermitted" in online["n2"].detail
    assert online["n3"].status == "ok" and "alive" in online["n3"].detail              # answered; the body stalls
    assert online["n4"].status == "ok" and "came back" in online["n4"].detail
    assert online["n5"].status == "warn" and "unreachable" in online["n5"].detail
    assert online["n6"].status == "warn" and "unreachable" in online["n6"].detail
    assert report.exit_code == 1                                                         # n1 is newly dead
    for path in ("/alive.bin", "/gone.bin"):
        assert fault_server.requests_for(path)[0].range == "bytes=0-0"


def _silent_listener_port_closed() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


# --------------------------------------------------------------------------- CLI

def test_cli_json_contract_and_exit_codes(tm, fetched):
    r = cli("doctor", "--root", fetched, "--manifest", tm.manifest, "--json")
    assert r.exit_code == 1                                            # built-in assets are missing in this root
    out = json.loads(r.stdout)
    assert set(out) >= {"ok", "exit_code", "checks"} and out["ok"] is False and out["exit_code"] == 1
    for c in out["checks"]:
        assert set(c) >= {"id", "category", "status", "detail", "fix"}
        assert c["status"] in ("ok", "warn", "error")
    ids = {c["id"]: c for c in out["checks"]}
    assert ids["asset.t-ckpt"]["status"] == "ok" and ids["asset.metro-h36m"]["status"] == "error"
    assert ids["asset.metro-h36m"]["fix"] == f"metro-assets fetch metro-h36m --root {fetched} --mirror BASE"


def test_cli_text_report_prints_fixes(tm, tmp_path):
    root = tmp_path / "root"
    ckpt = root / tm.paths["t-ckpt"]
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"")
    r = cli("doctor", "--root", root, "--manifest", tm.manifest)
    assert r.exit_code == 1
    assert "How to fix:" in r.stdout
    assert f"rm {ckpt} && metro-assets fetch t-ckpt --root {root} --mirror BASE" in r.stdout
    assert "exit code 1" in r.stderr



@pytest.mark.parametrize("cmd,flags", [("doctor", ["--root", "--online", "--json", "--manifest", "--timeout"]),
                                       ("demo", ["--root", "--keep"])])
def test_help_documents_flags_and_exit_codes_without_torch(cmd, flags):
    import subprocess

    r = runner.invoke(app, [cmd, "--help"], env={"COLUMNS": "200"})
    assert r.exit_code == 0
    for flag in flags:
        assert flag in r.stdout, flag
    assert "Exit codes: 0" in r.stdout
    code = ("import sys, runpy; sys.argv=['metro-assets', %r, '--help']\n"
            "try:\n    runpy.run_module('metro_assets', run_name='__main__')\n"
            "except SystemExit:\n    pass\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n" % cmd)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
