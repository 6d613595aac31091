#!/usr/bin/env python3
"""Loopback benchmark of the metro-assets transfer engine against its peers, in one run.

    python bench/bench.py                      # full: 1 GiB, 256 MiB, 300 small files, 3 runs
    python bench/bench.py --quick              # 256 MiB / 64 MiB / 100 files, 1 run
    python bench/bench.py --cases fast,small --runs 5 --big-mib 512

Starts a private nginx on 127.0.0.1 (``/`` unlimited, ``/throttled/`` at 25 MB/s per
connection) and bench/flaky.py (drops every response after 64 MiB), generates
deterministic data under bench/data, times every tool as a whole process (start-up
included; each verifies SHA-256), and writes bench/out/results.md (+ .json).
See bench/README.md.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(1, str(REPO))  # tests/servers.py imports metro_assets
from servers import NginxServer  # noqa: E402  (the same private nginx the tests use)

PY = sys.executable
ENV = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))


# ------------------------------------------------------------------ data

def make_data(data: Path, big_mib: int, mid_mib: int, small_n: int, seed: int) -> dict:
    import numpy as np

    data.mkdir(parents=True, exist_ok=True)
    sums_path = data / "SHA256SUMS.json"
    want = {"big": big_mib, "mid": mid_mib, "small": small_n, "seed": seed}
    if sums_path.exists():
        sums = json.loads(sums_path.read_text())
        if sums.get("params") == want:
            return sums
    rng = np.random.Generator(np.random.PCG64(seed))
    sums = {"params": want, "files": {}}

    def write(rel: str, size: int) -> None:
        p = data / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        h = hashlib.sha256()
        with open(p, "wb") as f:
            left = size
            while left:
                chunk = rng.bytes(min(left, 64 << 20))
                f.write(chunk)
                h.update(chunk)
                left -= len(chunk)
        sums["files"][rel] = [size, h.hexdigest()]

    write("big.bin", big_mib << 20)
    write("mid.bin", mid_mib << 20)
    for i in range(small_n):
        write(f"small/{i:04d}.bin", int(rng.integers(1024, 64 * 1024 + 1)))
    sums_path.write_text(json.dumps(sums))
    return sums


def warm(data: Path) -> None:
    for p in data.rglob("*"):
        if p.is_file():
            with open(p, "rb") as f:
                while f.read(8 << 20):
                    pass


# ------------------------------------------------------------------ running

def timed(cmd, *, shell=False, timeout=300) -> dict:
    """Run one process tree; wall, CPU (user+sys incl. reaped children) and peak RSS from wait4."""
    import threading

    # Peak RSS comes from GNU time: a child forked from this (big) process inherits our
    # maxrss in wait4's rusage, so wait4 alone would report the parent's size.
    rss_file = tempfile.NamedTemporaryFile(delete=False)
    rss_file.close()
    argv = ["sh", "-c", cmd] if shell else list(cmd)
    if os.path.exists("/usr/bin/time"):
        argv = ["/usr/bin/time", "-f", "%M", "-o", rss_file.name] + argv
    with tempfile.TemporaryFile() as fo, tempfile.TemporaryFile() as fe:
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, env=ENV, stdout=fo, stderr=fe, start_new_session=True)
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        _, status, ru = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        timer.cancel()
        proc.returncode = os.waitstatus_to_exitcode(status)
        fo.seek(0)
        fe.seek(0)
        try:
            rss = int(Path(rss_file.name).read_text().split()[-1]) / 1024
        except (ValueError, IndexError, OSError):
            rss = None
        os.unlink(rss_file.name)
        return {"wall": wall, "rc": proc.returncode, "out": fo.read()[-2000:].decode(errors="replace"),
                "err": fe.read()[-2000:].decode(errors="replace"), "cpu": ru.ru_utime + ru.ru_stime,
                "rss_mib": rss}


class Meter:
    def run(self, cmd, **kw) -> dict:
        return timed(cmd, **kw)


def fresh(dest: Path) -> None:
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    os.sync()


def check(dest: Path, names, sums) -> bool:
    for rel in names:
        p = dest / Path(rel).name if "/" not in rel else dest / rel.split("/")[-1]
        size, _ = sums["files"][rel]
        if not p.exists() or p.stat().st_size != size:
            return False
    return True


# ------------------------------------------------------------------ tools

def write_manifest(dest: Path, entries) -> Path:
    """A manifest for `metro-assets fetch`: entries are (asset path, size, sha256).

    The only declared source is unreachable on purpose: the bytes must come from --mirror."""
    m = dest.parent / f"bench-manifest-{abs(hash(tuple(e[0] for e in entries))) % 10**8}.yaml"
    lines = ["version: 1", "groups:", "  bench: {description: benchmark files}", "assets:"]
    for i, (path, size, sha) in enumerate(entries):
        lines += [f"  - id: b{i:04d}", "    group: bench", f"    path: {path}", "    kind: binary", f"    size: {size if size is not None else 'null'}",
                  f"    sha256: {sha}", "    sources: [https://unreachable.invalid/bench]"]
    m.write_text("\n".join(lines) + "\n")
    return m


def metro_fetch(mirror: str, dest: Path, manifest: Path, *extra: str) -> list:
    """The real command a user runs (start-up, manifests, lockfile, stamps and all)."""
    return [PY, "-m", "metro_assets", "fetch", "bench", "--root", str(dest), "--manifest", str(manifest),
            "--mirror", mirror, "--quiet", *extra]


def single_tools(url: str, dest: Path, sha: str, name: str):
    f = dest / name
    manifest = write_manifest(dest, [(name, None, sha)])
    py_requests = (
        "import hashlib,requests,sys;h=hashlib.sha256();s=requests.Session();"
        f"r=s.get({url!r},stream=True);r.raise_for_status();o=open({str(f)!r},'wb')\n"
        "for c in r.iter_content(1<<20): o.write(c); h.update(c)\n"
        f"o.flush();__import__('os').fsync(o.fileno());sys.exit(h.hexdigest()!={sha!r})"
    )
    py_pooch = (f"import pooch;pooch.retrieve({url!r},known_hash='sha256:{sha}',fname={name!r},"
                f"path={str(dest)!r},progressbar=False)")
    return {
        "metro-assets fetch (auto connections)": metro_fetch(url.rsplit("/", 1)[0], dest, manifest),
        "curl + openssl": f"curl -sS --fail --retry 5 --retry-all-errors --retry-delay 1 -C - -o {f} {url} && "
                          f"openssl dgst -sha256 {f} | grep -q {sha}",
        "aria2c -x1 --checksum": ["aria2c", "--no-conf", "-q", "-x1", "-s1", "--allow-overwrite=true",
                                  f"--checksum=sha-256={sha}", "-d", str(dest), "-o", name, url],
        "aria2c -x8 -s8 -k1M --checksum": ["aria2c", "--no-conf", "-q", "-x8", "-s8", "-k1M", "--allow-overwrite=true",
                                           f"--checksum=sha-256={sha}", "-d", str(dest), "-o", name, url],
        "pooch.retrieve(known_hash)": [PY, "-c", py_pooch],
        "requests stream + hashlib + fsync (baseline)": [PY, "-c", py_requests],
    }


def small_tools(base: str, dest: Path, sums) -> dict:
    names = sorted(k for k in sums["files"] if k.startswith("small/"))
    lst = dest.parent / "small-aria2.txt"
    lst.write_text("".join(f"{base}/{n}\n  out={Path(n).name}\n  checksum=sha-256={sums['files'][n][1]}\n" for n in names))
    manifest = write_manifest(dest, [(Path(n).name, sums["files"][n][0], sums["files"][n][1]) for n in names])
    metro = metro_fetch(f"{base}/small", dest, manifest, "--jobs", "8")
    pairs = [(f"{base}/{n}", Path(n).name, sums["files"][n][1]) for n in names]
    py_pooch = (f"import pooch\nfor u,n,h in {pairs!r}:\n"
                f" pooch.retrieve(u,known_hash='sha256:'+h,fname=n,path={str(dest)!r},progressbar=False)")
    py_requests = (f"import hashlib,requests\ns=requests.Session()\nfor u,n,h in {pairs!r}:\n"
                   " r=s.get(u);r.raise_for_status();d=r.content\n"
                   " assert hashlib.sha256(d).hexdigest()==h\n"
                   f" open({str(dest)!r}+'/'+n,'wb').write(d)")
    return names, {
        "metro-assets fetch --jobs 8": metro,
        "aria2c -i -j8 --checksum": ["aria2c", "--no-conf", "-q", "-j8", "--allow-overwrite=true", "-d", str(dest),
                                     "-i", str(lst)],
        "pooch.retrieve loop": [PY, "-c", py_pooch],
        "requests loop + hashlib (baseline)": [PY, "-c", py_requests],
    }


def limits(dest: Path, big: Path) -> dict:
    m = Meter()
    out = {}
    fresh(dest)
    r = m.run([PY, "-c", f"import hashlib\nh=hashlib.sha256()\nf=open({str(big)!r},'rb',buffering=0)\n"
                         "b=bytearray(1<<20)\nwhile (n:=f.readinto(b)): h.update(memoryview(b)[:n])"])
    out["hashlib sha256 (1 MiB chunks)"] = r
    mib = big.stat().st_size >> 20
    r = m.run(f"dd if=/dev/zero of={dest}/dd.bin bs=1M count={mib} conv=fdatasync status=none", shell=True)
    out["dd write + fdatasync (durable)"] = r
    fresh(dest)
    return out


# ------------------------------------------------------------------ report

def med(rs, key="wall"):
    vals = [r[key] for r in rs if r.get(key) is not None]
    return statistics.median(vals) if vals else None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default="limits,fast,throttled,small,flaky")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--big-mib", type=int, default=1024)
    ap.add_argument("--mid-mib", type=int, default=256)
    ap.add_argument("--small-n", type=int, default=300)
    ap.add_argument("--throttle", default="25m")
    ap.add_argument("--cut-mib", type=float, default=64)
    ap.add_argument("--seed", type=int, default=20250201)
    ap.add_argument("--quick", action="store_true", help="256/64 MiB, 100 small files, 1 run")
    ap.add_argument("--data", default=str(REPO / "bench" / "data"))
    ap.add_argument("--out", default=str(REPO / "bench" / "out"))
    args = ap.parse_args()
    if args.quick:
        args.big_mib, args.mid_mib, args.small_n, args.runs, args.cut_mib = 256, 64, 100, 1, 16
    cases = args.cases.split(",")
    data, out = Path(args.data), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    dest = out / "dest"
    t_start = time.time()
    print(f"data: {data} (big {args.big_mib} MiB, mid {args.mid_mib} MiB, {args.small_n} small)", flush=True)
    sums = make_data(data, args.big_mib, args.mid_mib, args.small_n, args.seed)
    warm(data)
    meter = Meter()
    results: dict = {}
    flaky_dir = Path(tempfile.mkdtemp(prefix="metro-flaky-"))
    flaky = subprocess.Popen([PY, str(REPO / "bench" / "flaky.py"), "--root", str(data), "--cut-mib", str(args.cut_mib),
                              "--port-file", str(flaky_dir / "port")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with NginxServer(data, throttle=args.throttle) as ng:
            for _ in range(100):
                if (flaky_dir / "port").exists() and (flaky_dir / "port").read_text():
                    break
                time.sleep(0.05)
            flaky_url = f"http://127.0.0.1:{(flaky_dir / 'port').read_text()}"
            if "limits" in cases:
                for name, r in limits(dest, data / "big.bin").items():
                    results.setdefault(("limits", name), []).append(r)
            plan = []
            size_big, sha_big = sums["files"]["big.bin"]
            size_mid, sha_mid = sums["files"]["mid.bin"]
            if "fast" in cases:
                plan.append(("fast", args.runs, single_tools(f"{ng.url}/big.bin", dest, sha_big, "big.bin"), ["big.bin"]))
            if "throttled" in cases:
                plan.append(("throttled", args.runs,
                             single_tools(f"{ng.throttled_url}/mid.bin", dest, sha_mid, "mid.bin"), ["mid.bin"]))
            if "small" in cases:
                names, tools = small_tools(f"{ng.url}", dest, sums)
                plan.append(("small", args.runs, tools, names))
            if "flaky" in cases:
                plan.append(("flaky", 1, single_tools(f"{flaky_url}/mid.bin", dest, sha_mid, "mid.bin"), ["mid.bin"]))
            for case, runs, tools, names in plan:
                for i in range(runs):  # interleaved: run i of every tool, then run i+1
                    for tool, cmd in tools.items():
                        if case == "throttled" and tool.startswith(("pooch", "curl", "aria2c -x1")) and i > 0:
                            continue  # single-connection peers: ~11 s each; one run is enough
                        fresh(dest)
                        r = meter.run(cmd, shell=isinstance(cmd, str))
                        r["ok"] = r["rc"] == 0 and check(dest, names, sums)
                        results.setdefault((case, tool), []).append(r)
                        print(f"{case:9s} {tool:52s} {r['wall']:7.2f}s cpu {r['cpu']:6.2f}s "
                              f"rss {r['rss_mib'] or 0:5.0f} MiB {'ok' if r['ok'] else 'FAIL ' + r['err'][-200:]}",
                              flush=True)
    finally:
        flaky.terminate()
        flaky.wait(5)
        shutil.rmtree(flaky_dir, ignore_errors=True)
        shutil.rmtree(dest, ignore_errors=True)
    report = render(results, sums, args, time.time() - t_start)
    (out / "results.md").write_text(report)
    (out / "results.json").write_text(json.dumps({f"{c}|{t}": rs for (c, t), rs in results.items()}, default=str))
    print("\n" + report)
    print(f"written: {out / 'results.md'}")
    return 0


def render(results, sums, args, elapsed) -> str:
    big_mib = sums["files"]["big.bin"][0] / 2**20
    mid_mib = sums["files"]["mid.bin"][0] / 2**20
    n_small = sum(1 for k in sums["files"] if k.startswith("small/"))
    small_mib = sum(v[0] for k, v in sums["files"].items() if k.startswith("small/")) / 2**20
    lines = []
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        cpu = platform.processor()
    lines += ["## Machine", "", "```",
              f"date (UTC): {time.strftime('%Y-%m-%d %H:%M', time.gmtime())}; run took {elapsed:.0f} s",
              f"nproc: {os.cpu_count()}; CPU: {cpu}; kernel {platform.release()}; load avg at end {os.getloadavg()[0]:.2f}",
              f"python {platform.python_version()}; runs per tool: {args.runs} (median); flaky: 1 run",
              f"data: big {big_mib:.0f} MiB, mid {mid_mib:.0f} MiB, {n_small} small files ({small_mib:.1f} MiB); "
              f"throttle {args.throttle}/connection; flaky cut {args.cut_mib:g} MiB",
              "```", ""]
    size_of = {"limits": big_mib, "fast": big_mib, "throttled": mid_mib, "flaky": mid_mib, "small": small_mib}
    rate = {}
    for case in ("limits", "fast", "throttled", "small", "flaky"):
        rows = [(t, rs) for (c, t), rs in results.items() if c == case]
        if not rows:
            continue
        title = {"limits": f"limits ({big_mib:.0f} MiB)", "fast": f"fast ({big_mib:.0f} MiB, unthrottled)",
                 "throttled": f"throttled ({mid_mib:.0f} MiB, {args.throttle}/connection)",
                 "small": f"small ({n_small} files)", "flaky": f"flaky ({mid_mib:.0f} MiB, cut every {args.cut_mib:g} MiB)"}[case]
        unit = "files/s" if case == "small" else "MiB/s"
        lines += [f"### {title}", "", f"| tool | ok | wall median s | min-max s | {unit} | CPU s | peak RSS MiB |",
                  "|---|--:|--:|--:|--:|--:|--:|"]
        for tool, rs in rows:
            okrs = [r for r in rs if r.get("ok", r["rc"] == 0)]
            w = med(okrs) if okrs else None
            walls = [r["wall"] for r in rs]
            r_ = (n_small / w if case == "small" else size_of[case] / w) if w else None
            rate[(case, tool)] = r_
            rss = max((r["rss_mib"] or 0) for r in rs)
            lines.append(f"| {tool} | {len(okrs)}/{len(rs)} | {w if w is None else f'{w:.2f}'} | "
                         f"{min(walls):.2f}-{max(walls):.2f} | {'-' if r_ is None else f'{r_:.0f}'} | "
                         f"{med(rs, 'cpu'):.2f} | {rss:.0f} |")
        lines.append("")

    def g(case, prefix):
        return next((v for (c, t), v in rate.items() if c == case and t.startswith(prefix)), None)

    def ratio(a, b):
        return None if not a or not b else a / b

    lines += ["### Targets", "", "| target | measured | ratio | met |", "|---|--:|--:|:-:|"]
    m_fast, hl, dd = g("fast", "metro"), g("limits", "hashlib"), g("limits", "dd")
    if m_fast and hl and dd:
        lim = 0.85 * min(hl, dd)
        lines.append(f"| fast: ≥ 0.85 × min(hashlib {hl:.0f}, durable write {dd:.0f}) = {lim:.0f} MiB/s | "
                     f"{m_fast:.0f} MiB/s | {m_fast / lim:.2f} | {'yes' if m_fast >= lim else 'no'} |")
    m_thr, one, a8 = g("throttled", "metro"), g("throttled", "requests"), g("throttled", "aria2c -x8")
    for name, base, want in (("throttled: ≥ 6 × one connection (requests)", one, 6.0),
                             ("throttled: ≥ 1.5 × aria2c -x8", a8, 1.5)):
        r_ = ratio(m_thr, base)
        if r_ is not None:
            lines.append(f"| {name} | {m_thr:.0f} vs {base:.0f} MiB/s | {r_:.2f} | {'yes' if r_ >= want else 'no'} |")
    m_s, a_s, p_s = g("small", "metro"), g("small", "aria2c"), g("small", "pooch")
    for name, base, want in (("small: ≥ aria2c -j8 (files/s)", a_s, 1.0), ("small: ≥ 2 × pooch loop", p_s, 2.0)):
        r_ = ratio(m_s, base)
        if r_ is not None:
            lines.append(f"| {name} | {m_s:.0f} vs {base:.0f} files/s | {r_:.2f} | {'yes' if r_ >= want else 'no'} |")
    m_f, a_f = g("flaky", "metro"), g("flaky", "aria2c -x1")
    if m_f is not None or ("flaky", "metro-assets fetch (auto connections)") in results:
        r_ = ratio(m_f, a_f)
        lines.append(f"| flaky: completes with right hash, ≥ aria2c -x1 throughput | "
                     f"{'-' if m_f is None else f'{m_f:.0f}'} vs {'-' if a_f is None else f'{a_f:.0f}'} MiB/s | "
                     f"{'-' if r_ is None else f'{r_:.2f}'} | {'yes' if r_ and r_ >= 1 else 'no'} |")
    rss = max((r["rss_mib"] or 0) for (c, t), rs in results.items() if t.startswith("metro") for r in rs) \
        if any(t.startswith("metro") for (_, t) in results) else None
    if rss is not None:
        lines.append(f"| peak RSS ≤ 150 MiB (metro, any case) | {rss:.0f} MiB | | {'yes' if rss <= 150 else 'no'} |")
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
