"""The wheel ships the manifests and every subpackage, and works outside the source tree."""
from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def test_wheel_contains_manifests_and_packages_and_lists_the_catalog(tmp_path):
    pytest.importorskip("setuptools", reason="building the wheel offline needs setuptools installed")
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(REPO),
                        "-w", str(tmp_path / "dist")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    wheel = next((tmp_path / "dist").glob("metro_assets-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    shipped = {Path(n).name for n in names if n.startswith("metro_assets/manifests/")}
    assert {p.name for p in (REPO / "manifests").glob("*.yaml")} <= shipped and "README.md" in shipped
    for pkg in ("cli", "model", "datasets", "demo"):
        assert f"metro_assets/{pkg}/__init__.py" in names, pkg
    # run the wheel's code (not the checkout's) from an unrelated directory
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = ("import sys, runpy; sys.argv=['metro-assets','list','--json','--root',%r]\n"
            "runpy.run_module('metro_assets', run_name='__main__')" % str(tmp_path / "root"))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                       env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr[-2000:]
    rows = json.loads(r.stdout)
    assert {"metro-hand", "smpl-neutral", "mesh-downsampling"} <= {x["id"] for x in rows}
