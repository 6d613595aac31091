"""Dataset benchmark: streaming fetch+extract vs `curl URL | tar x`, peak extra disk, deep verify times.

    python bench/datasets_bench.py [--mb 2048] [--work /tmp/metro-ds-bench]

Builds a synthetic dataset tar (tests/dataset_fixtures.py), serves it with a
private nginx (tests/servers.py) and prints one JSON line of figures.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE.parent))

import dataset_fixtures as fx  # noqa: E402
from servers import NginxServer  # noqa: E402


def du(path: Path) -> int:
    total = 0
    for dirpath, _d, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(dirpath, f)).st_blocks * 512
            except FileNotFoundError:
                pass
    return total


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=2048)
    ap.add_argument("--work", type=Path, default=Path("/tmp/metro-ds-bench"))
    args = ap.parse_args()
    from metro_assets.datasets import fetch_dataset, verify_dataset
    from metro_assets.manifest import load_catalog
    from metro_assets.settings import resolve
    from metro_assets.store import Store

    work = args.work
    www = work / "www" / "datasets"
    tar = www / "freihand.tar"
    if not tar.exists() or abs(tar.stat().st_size - (args.mb << 20)) > (args.mb << 20) // 10:
        shutil.rmtree(work, ignore_errors=True)
        src = fx.big_dataset(work / "src", "freihand", args.mb << 20)
        fx.make_tar(src, tar)
        shutil.rmtree(work / "src")
    size = tar.stat().st_size
    subprocess.run(["cat", str(tar)], stdout=subprocess.DEVNULL, check=True)  # page cache
    out = {"tar_bytes": size}
    with NginxServer(work / "www") as srv:
        url = f"{srv.url}/datasets/freihand.tar"
        dest = work / "curl"
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir()
        t = time.perf_counter()
        subprocess.run(f"curl -sS --fail {url} | tar x -C {dest}", shell=True, check=True)
        out["curl_tar_s"] = time.perf_counter() - t
        shutil.rmtree(dest)
        root = work / "root"
        shutil.rmtree(root, ignore_errors=True)
        asset = load_catalog().get("freihand")
        store, settings = Store(root), resolve(root=root, env={})
        peak = [0]
        stop = threading.Event()

        def watch():
            while not stop.wait(0.05):
                peak[0] = max(peak[0], du(root))

        th = threading.Thread(target=watch, daemon=True)
        th.start()
        t = time.perf_counter()
        fetch_dataset(asset, [url], store, settings)
        out["metro_s"] = time.perf_counter() - t
        stop.set()
        th.join()
        extracted = du(root / "datasets" / "freihand")
        out["ratio_vs_curl_tar"] = out["curl_tar_s"] / out["metro_s"]
        out["peak_extra_disk_mib"] = (peak[0] - extracted) / 2**20
    for label, kw in (("verify_deep_sample100_s", dict(deep=True, sample=100)), ("verify_full_deep_s", dict(deep=True, full=True))):
        t = time.perf_counter()
        v = verify_dataset(asset, store, **kw)
        out[label] = time.perf_counter() - t
        assert v.status == "ok", v.findings[:3]
    t = time.perf_counter()
    subprocess.run(["sha256sum", str(root / "datasets/freihand/train.img.tsv")], stdout=subprocess.DEVNULL, check=True)
    sha_rate = (root / "datasets/freihand/train.img.tsv").stat().st_size / (time.perf_counter() - t)
    out["full_deep_vs_sha256"] = (extracted / out["verify_full_deep_s"]) / sha_rate
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in out.items()}))


if __name__ == "__main__":
    main()
