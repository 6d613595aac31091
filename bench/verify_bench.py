"""verify / --help timings against the issue's targets, on the bench data (run bench.py once first).

    python3 bench/verify_bench.py            # 300 small files + 3 x 1 GiB (hard links of big.bin)

Targets: `verify` on an unchanged tree < 0.3 s beyond interpreter start; `verify --full`
>= 1.5 x a single-threaded hash of the same tree; `metro-assets --help` <= 0.5 s.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PY = sys.executable


def wall(cmd, runs=5, env=None) -> float:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False, env=env)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(REPO / "bench" / "data"))
    ap.add_argument("--big-copies", type=int, default=3, help="1 GiB files in the tree (hard links of big.bin)")
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    data = Path(args.data)
    big = data / "big.bin"
    small = sorted((data / "small").glob("*.bin"))
    if not big.exists() or not small:
        print("run `python3 bench/bench.py` once first (it generates bench/data)")
        return 2
    work = Path(tempfile.mkdtemp(prefix="metro-verify-bench-"))
    try:
        root = work / "root"
        files = []
        for i in range(args.big_copies):
            p = root / "models" / f"big{i}.bin"
            p.parent.mkdir(parents=True, exist_ok=True)
            os.link(big, p)
            files.append(p)
        for s in small:
            p = root / "small" / s.name
            p.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(s, p)
            files.append(p)
        sha_big = hashlib.sha256(big.read_bytes()).hexdigest()
        lines = ["version: 1", "groups:", "  bench: {description: verify benchmark}", "assets:"]
        for i, p in enumerate(files):
            sha = sha_big if p.name.startswith("big") else hashlib.sha256(p.read_bytes()).hexdigest()
            lines += [f"  - id: v{i:04d}", "    group: bench", f"    path: {p.relative_to(root).as_posix()}",
                      "    kind: binary", f"    size: {p.stat().st_size}", f"    sha256: {sha}",
                      "    sources: [https://unreachable.invalid/x]"]
        manifest = work / "m.yaml"
        manifest.write_text("\n".join(lines) + "\n")
        total = sum(p.stat().st_size for p in files)
        base = [PY, "-m", "metro_assets"]
        env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        v = base + ["verify", "bench", "--root", str(root), "--manifest", str(manifest), "--quiet"]
        subprocess.run(v + ["--full"], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)  # stamps
        t_py = wall([PY, "-c", "pass"], args.runs)
        t_fast = wall(v, args.runs, env)
        t_help = wall(base + ["--help"], args.runs, env)
        t_full = wall(v + ["--full"], 3, env)
        one = ("import hashlib,sys\nfor p in sys.argv[1:]:\n h=hashlib.sha256();f=open(p,'rb',buffering=0)\n"
               " b=bytearray(1<<20)\n while (n:=f.readinto(b)): h.update(memoryview(b)[:n])")
        t_single = wall([PY, "-c", one, *map(str, files)], 3)
        gib = total / 2**30
        rows = [
            ("`verify` (stamps), beyond interpreter start", f"{t_fast - t_py:.3f} s (total {t_fast:.3f}, `python -c pass` {t_py:.3f})", "< 0.3 s", t_fast - t_py < 0.3),
            ("`verify --full` vs single-threaded hash", f"{t_full:.2f} s vs {t_single:.2f} s ({t_single / t_full:.2f}x)", ">= 1.5x", t_single / t_full >= 1.5),
            ("`metro-assets --help`", f"{t_help:.3f} s", "<= 0.5 s", t_help <= 0.5),
        ]
        print(f"tree: {len(files)} files, {gib:.2f} GiB; load avg {os.getloadavg()[0]:.2f}; cpus {os.cpu_count()}\n")
        print("| target | measured | goal | met |\n|---|---|---|:-:|")
        for name, got, goal, ok in rows:
            print(f"| {name} | {got} | {goal} | {'yes' if ok else 'no'} |")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
