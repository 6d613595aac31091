"""fetch over a real nginx: kill -9 mid-download then resume; concurrent fetches share one root."""
from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from asset_fixtures import make_test_mirror
from servers import NginxServer, skip_without_nginx


def run_cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "metro_assets", *map(str, args)], capture_output=True, text=True, **kw)


@pytest.fixture
def served(tmp_path):
    skip_without_nginx()
    tm = make_test_mirror(tmp_path, with_manual=False, big_n=2_000_000)   # t-big ~8 MB
    with NginxServer(tm.dir, throttle="1m") as srv:
        yield tm, srv


def test_fetch_over_http_then_verify(served, tmp_path):
    tm, srv = served
    root = tmp_path / "root"
    r = run_cli("fetch", "tst", "--root", root, "--manifest", tm.manifest, "--mirror", srv.url, "--json")
    assert r.returncode == 0, r.stderr + r.stdout
    out = json.loads(r.stdout)
    assert {a["status"] for a in out["assets"]} == {"ok"}
    for aid, data in tm.files.items():
        assert (root / tm.paths[aid]).read_bytes() == data
    r = run_cli("verify", "tst", "--root", root, "--manifest", tm.manifest, "--full", "--json")
    assert r.returncode == 0 and {a["status"] for a in json.loads(r.stdout)["assets"]} == {"ok"}


def test_sigkill_mid_download_then_resume(served, tmp_path):
    tm, srv = served
    root = tmp_path / "root"
    dest = root / tm.paths["t-big"]
    part = dest.parent / f".{dest.name}.metro-part"
    proc = subprocess.Popen([sys.executable, "-m", "metro_assets", "fetch", "t-big", "--root", str(root), "--manifest",
                             str(tm.manifest), "--mirror", srv.throttled_url, "--connections", "1", "--quiet"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if part.exists() and part.stat().st_size > 0:
            state = dest.parent / f".{dest.name}.metro-part.json"
            if state.exists():
                break
        time.sleep(0.05)
    time.sleep(2.5)   # the resume state is rewritten every second while bytes arrive
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not dest.exists(), "an unfinished download reached the final path"
    assert part.exists()
    # re-run from the same source (now with 4 connections): it must resume, complete and hash right
    r = run_cli("fetch", "t-big", "--root", root, "--manifest", tm.manifest, "--mirror", srv.throttled_url,
                "--connections", "4", "--json")
    assert r.returncode == 0, r.stderr + r.stdout
    o = json.loads(r.stdout)["assets"][0]
    assert o["action"] == "resumed", o
    assert dest.read_bytes() == tm.files["t-big"]
    assert not part.exists() and not list(root.rglob("*.metro-part*"))
    ranged = [l for l in srv.access_log() if "t_big.pth" in l and '"bytes=' in l]
    assert ranged, "the second run did not ask for a Range"


def test_four_concurrent_fetches_download_each_asset_once(served, tmp_path):
    tm, srv = served
    root = tmp_path / "root"
    procs = [subprocess.Popen([sys.executable, "-m", "metro_assets", "fetch", "tst", "--root", str(root), "--manifest",
                               str(tm.manifest), "--mirror", srv.url, "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(4)]
    results = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), results
    served_bytes = collections.Counter()
    for line in srv.access_log():
        parts = line.split()
        # "GET /path HTTP/1.1 status bytes ..."
        if len(parts) >= 5 and parts[0] == "GET":      # (HEAD probes of unknown sizes send no body)
            served_bytes[parts[1].lstrip("/")] += int(parts[4])
    for aid, data in tm.files.items():
        assert (root / tm.paths[aid]).read_bytes() == data
        assert served_bytes[tm.paths[aid]] == len(data), (aid, served_bytes[tm.paths[aid]], len(data))
    r = run_cli("verify", "tst", "--root", root, "--manifest", tm.manifest, "--full", "--json")
    assert r.returncode == 0
    lock = json.loads((root / "metro-assets.lock").read_text())["assets"]
    assert lock["t-ckpt"]["sha256"] == tm.sha("t-ckpt")


def test_sources_fall_through_409_html_and_wrong_bytes(tmp_path, fault_server):
    """Each bad source is explained and skipped (409 never retried); the good one wins."""
    from servers import AZURE_409_BODY, HTML_PAGE
    from asset_fixtures import _torch_legacy_bytes

    good = _torch_legacy_bytes()
    u409 = fault_server.add("/blob/ckpt.bin", b"", status=409, error_body=AZURE_409_BODY, content_type="application/xml")
    uhtml = fault_server.add("/html/ckpt.bin", HTML_PAGE, content_type="text/html")
    ugood = fault_server.add("/good/ckpt.bin", good, fail_first=1, fail_status=503, retry_after="0")
    m = tmp_path / "m.yaml"
    m.write_text(f"version: 1\nassets:\n  - id: x\n    group: checkpoints\n    path: models/metro_release/x.bin\n"
                 f"    kind: torch-checkpoint\n    size: null\n    sha256: null\n    sources: [{u409}, {uhtml}, {ugood}]\n")
    root = tmp_path / "root"
    r = run_cli("fetch", "x", "--root", root, "--manifest", m, "--json")
    assert r.returncode == 0, r.stderr + r.stdout
    o = json.loads(r.stdout)["assets"][0]
    assert o["status"] == "ok" and o["source"] == ugood and o["recorded"]
    errors = {a["url"]: a for a in o["attempts"]}
    assert "PublicAccessNotPermitted" in errors[u409]["error"] and errors[u409]["status"] == 409
    assert "HTML" in errors[uhtml]["error"]
    gets = lambda p: [x for x in fault_server.requests_for(p) if x.method == "GET"]
    assert len(gets("/blob/ckpt.bin")) == 1                                 # 409 is never retried
    assert len(gets("/good/ckpt.bin")) >= 2                                 # 503 is
    assert (root / "models/metro_release/x.bin").read_bytes() == good


def test_dry_run_probes_unknown_sizes_over_http(served, tmp_path):
    tm, srv = served
    r = run_cli("fetch", "tst", "--root", tmp_path / "root", "--manifest", tm.manifest, "--mirror", srv.url,
                "--dry-run", "--json")
    assert r.returncode == 0, r.stderr
    plan = json.loads(r.stdout)
    assert plan["unknown_sizes"] == 0
    assert plan["bytes_needed"] == sum(len(d) for d in tm.files.values())
    assert not (tmp_path / "root").exists()
    assert any(l.startswith("HEAD ") for l in srv.access_log())


def test_fetch_over_https_checks_the_certificate(tmp_path):
    """HTTPS through the lean client: a trusted CA bundle works, an untrusted server is refused."""
    skip_without_nginx()
    tm = make_test_mirror(tmp_path, with_manual=False, big_n=2_000_000)
    with NginxServer(tm.dir, tls=True) as srv:
        assert srv.url.startswith("https://")
        env = {k: v for k, v in os.environ.items() if k not in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")}
        r = run_cli("fetch", "t-big", "t-npy", "--root", tmp_path / "untrusted", "--manifest", tm.manifest,
                    "--mirror", srv.url, "--json", env=env)
        assert r.returncode == 1
        assert "certificate" in r.stdout.lower() or "ssl" in r.stdout.lower(), r.stdout
        assert not (tmp_path / "untrusted" / tm.paths["t-npy"]).exists()
        env["REQUESTS_CA_BUNDLE"] = str(srv.ca_file)
        root = tmp_path / "root"
        r = run_cli("fetch", "t-big", "t-npy", "--root", root, "--manifest", tm.manifest, "--mirror", srv.url,
                    "--connections", "4", "--json", env=env)
        assert r.returncode == 0, r.stderr + r.stdout
        assert (root / tm.paths["t-big"]).read_bytes() == tm.files["t-big"]
        assert (root / tm.paths["t-npy"]).read_bytes() == tm.files["t-npy"]


def test_unresolvable_host_fails_at_once_with_a_next_step(tmp_path, monkeypatch):
    """No DNS (offline machine): no half-minute of retries, and the message says what to do."""
    import socket

    from typer.testing import CliRunner

    from metro_assets.cli import app

    def no_dns(*a, **k):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    m = tmp_path / "m.yaml"
    m.write_text("version: 1\nassets:\n  - id: x\n    group: support\n    path: metro/modeling/data/x.npy\n"
                 "    kind: npy\n    size: null\n    sha256: null\n    sources: [http://mirror.example.test/x.npy]\n")
    t0 = time.monotonic()
    r = CliRunner().invoke(app, ["fetch", "x", "--root", str(tmp_path / "root"), "--manifest", str(m), "--json"])
    assert r.exit_code == 1
    o = json.loads(r.stdout)["assets"][0]
    assert "cannot resolve the host 'mirror.example.test'" in o["message"] and "--mirror" in o["next_command"]
    assert time.monotonic() - t0 < 5


def test_ctrl_c_stops_at_once_and_the_next_run_resumes(served, tmp_path):
    tm, srv = served
    root = tmp_path / "root"
    dest = root / tm.paths["t-big"]
    part = dest.parent / f".{dest.name}.metro-part"
    state = dest.parent / f".{dest.name}.metro-part.json"
    proc = subprocess.Popen([sys.executable, "-m", "metro_assets", "fetch", "t-big", "--root", str(root), "--manifest",
                             str(tm.manifest), "--mirror", srv.throttled_url, "--connections", "2", "--quiet"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not (part.exists() and part.stat().st_size and state.exists()):
        time.sleep(0.05)
    time.sleep(1.5)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    err = proc.communicate(timeout=20)[1]
    assert time.monotonic() - t0 < 5, "Ctrl-C waited for the download to finish"
    assert proc.returncode == 130 and "resume" in err
    assert not dest.exists() and part.exists() and state.exists()
    r = run_cli("fetch", "t-big", "--root", root, "--manifest", tm.manifest, "--mirror", srv.throttled_url,
                "--connections", "4", "--json")
    assert r.returncode == 0, r.stderr + r.stdout
    assert json.loads(r.stdout)["assets"][0]["action"] == "resumed"
    assert dest.read_bytes() == tm.files["t-big"]
