"""doctor: one report of everything that is wrong with a METRO tree, and how to fix it.

:func:`run_doctor` returns a :class:`DoctorReport` of :class:`Check` s, each
with a status (ok / warn / error), one detail line and the exact fix command.
It looks at four things:

* the environment (Python, torch and CUDA, numpy, scipy, smplx, chumpy...);
  torch is imported lazily and may be missing;
* the root: exists, writable, free space versus what ``fetch all`` still needs,
  hardlinks, and whether ``flock`` really excludes a second process;
* every asset (through :func:`metro_assets.verify.verify_assets`) plus the traps
  an old METRO checkout collects: 0-byte ``wget -nc`` leftovers, HTML/XML error
  pages saved as files, wrong-case names, a body checkpoint under the hand
  name, chumpy-pickled body models, stale partial/temp files, locks held or
  unusable, and lockfile entries that drifted from the file or the manifest;
* with ``online=True``: every non-manual source probed in parallel with a short
  timeout (alive / dead / unreachable; known-dead sources: still dead / came back).

The report never changes an asset: the filesystem self-tests use a hidden
temporary directory that is removed again, and the only write is the stamp
cache that ``verify`` keeps anyway.  Without ``online`` it never touches the
network (sizes of not-yet-downloaded assets stay "unknown").
"""
from __future__ import annotations

import mmap
import os
import platform
import shutil
import stat as statmod
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from metro_assets import __version__
from metro_assets.errors import EXIT_FAILED, EXIT_OK
from metro_assets.manifest import Asset, Catalog
from metro_assets.settings import STATE_DIR_NAME, Settings
from metro_assets.store import PART_SUFFIX, STATE_SUFFIX, Store

STATUSES = ("ok", "warn", "error")
CATEGORIES = ("environment", "root", "asset", "trap", "lockfile", "online")

STALE_PART_SECONDS = 24 * 3600      # a partial download untouched for a day is abandoned
STALE_TMP_SECONDS = 3600            # our own *.tmp files live for milliseconds
BODY_ONLY_KEY = b"upsampling2.weight"   # only METRO body checkpoints have this layer
METRO_KEY = b"trans_encoder"            # every METRO checkpoint has these
CHUMPY_MARKER = b"chumpy"
SCAN_HEAD_BYTES = 32 << 20          # legacy torch files keep every key name before the tensor data
WALK_FILE_LIMIT = 200_000
DEAD_STATUS = frozenset({401, 403, 404, 409, 410})
PROBE_TIMEOUT = 5.0
PROBE_WORKERS = 16


@dataclass(frozen=True)
class Check:
    id: str
    category: str          # one of CATEGORIES
    status: str            # ok | warn | error
    detail: str
    fix: str = ""          # the exact command (empty when nothing needs doing)

    def to_json(self) -> Dict[str, str]:
        return {"id": self.id, "category": self.category, "status": self.status, "detail": self.detail, "fix": self.fix}


@dataclass(frozen=True)
class DoctorReport:
    root: str
    checks: Tuple[Check, ...]
    seconds: float = 0.0

    @property
    def exit_code(self) -> int:
        return EXIT_FAILED if any(c.status == "error" for c in self.checks) else EXIT_OK

    @property
    def ok(self) -> bool:
        return self.exit_code == EXIT_OK

    def counts(self) -> Dict[str, int]:
        out = {s: 0 for s in STATUSES}
        for c in self.checks:
            out[c.status] += 1
        return out

    def get(self, check_id: str) -> Optional[Check]:
        return next((c for c in self.checks if c.id == check_id), None)

    def to_json(self) -> Dict[str, Any]:
        return {"ok": self.ok, "exit_code": self.exit_code, "root": self.root, "counts": self.counts(),
                "seconds": round(self.seconds, 3), "checks": [c.to_json() for c in self.checks]}


def run_doctor(settings: Settings, catalog: Catalog, *, online: bool = False,
               probe_timeout: float = PROBE_TIMEOUT) -> DoctorReport:
    t0 = time.monotonic()
    store = Store(settings.root)
    checks: List[Check] = []
    checks += environment_checks()
    checks += root_checks(settings, catalog, store)
    checks += asset_checks(catalog, store)
    checks += trap_checks(catalog, store)
    checks += lockfile_checks(catalog, store)
    if online:
        checks += online_checks(catalog, settings, timeout=probe_timeout)
    return DoctorReport(str(settings.root), tuple(checks), time.monotonic() - t0)


def _q(path: Any) -> str:
    """A path as it should appear in a shell command."""
    import shlex

    return shlex.quote(str(path))


# ============================================================================ environment

def _version_of(module: str) -> Tuple[Optional[str], Optional[str]]:
    """(version, error) of an importable module, without crashing on broken installs."""
    import importlib

    try:
        mod = importlib.import_module(module)
    except ImportError as exc:
        return None, f"not installed ({exc.name or exc})"
    except Exception as exc:  # a broken install raises anything at import
        return None, f"import failed: {type(exc).__name__}: {exc}"
    return str(getattr(mod, "__version__", "") or "?"), None


def _dist_version(name: str) -> Optional[str]:
    try:
        from importlib.metadata import PackageNotFoundError, version
    except ImportError:  # pragma: no cover
        return None
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def environment_checks() -> List[Check]:
    env = "environment"
    out: List[Check] = []
    py = platform.python_version()
    out.append(Check("env.python", env, "ok" if sys.version_info >= (3, 9) else "error",
                     f"Python {py} ({sys.executable})", "" if sys.version_info >= (3, 9) else "install Python 3.9 or newer"))
    out.append(Check("env.platform", env, "ok", f"{platform.platform()} ({platform.machine()}), {os.cpu_count()} CPUs"))
    out.append(Check("env.metro-assets", env, "ok", f"metro-assets {__version__} ({Path(__file__).resolve().parent})"))

    torch_version, torch_err = _version_of("torch")
    if torch_err:
        out.append(Check("env.torch", env, "warn", f"torch {torch_err}: fetch/verify/doctor work, run-check and --deep do not",
                         "pip install 'metro-assets[model]'"))
    else:
        out.append(Check("env.torch", env, "ok", f"torch {torch_version}"))
        out.append(_cuda_check(torch_version))

    for mod, pip_name, needed_for in (("numpy", "numpy", "everything"), ("scipy", "scipy", "body models and support data")):
        v, e = _version_of(mod)
        out.append(Check(f"env.{mod}", env, "error" if e else "ok", f"{mod} {e or v}" + (f" (needed for {needed_for})" if e else ""),
                         f"pip install {pip_name}" if e else ""))
    v, e = _version_of("smplx")
    if v == "?":
        v = _dist_version("smplx") or "?"
    out.append(Check("env.smplx", env, "warn" if e else "ok",
                     f"smplx {e}: `metro-assets export smplx` needs it" if e else f"smplx {v}",
                     "pip install 'metro-assets[smplx]'" if e else ""))
    v, e = _version_of("chumpy")
    if e:
        out.append(Check("env.chumpy", env, "ok",
                         "chumpy not importable: fine for metro-assets (it reads chumpy pickles without it), but upstream "
                         "METRO and smplx cannot load chumpy-pickled body models; `metro-assets import --clean` makes clean copies"))
    else:
        out.append(Check("env.chumpy", env, "ok", f"chumpy {v} importable"))
    ui = ", ".join(f"{n} {_dist_version(n) or '?'}" for n in ("typer", "rich", "requests", "pyyaml"))
    out.append(Check("env.cli", env, "ok", ui))
    return out


def _cuda_check(torch_version: Optional[str]) -> Check:
    try:
        import torch

        if torch.cuda.is_available():
            names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
            return Check("env.cuda", "environment", "ok",
                         f"CUDA {torch.version.cuda} available: {', '.join(names)}")
        build = getattr(torch.version, "cuda", None)
        why = "this torch is a CPU-only build" if not build else f"torch is built for CUDA {build} but no GPU/driver is usable"
        return Check("env.cuda", "environment", "warn",
                     f"no CUDA: {why}; run-check and inference run on the CPU (slow, but correct)",
                     "pip install torch --index-url https://download.pytorch.org/whl/cu124   # on a machine with an NVIDIA GPU")
    except Exception as exc:
        return Check("env.cuda", "environment", "warn", f"could not query CUDA: {type(exc).__name__}: {exc}")


# ============================================================================ root

def root_checks(settings: Settings, catalog: Catalog, store: Store) -> List[Check]:
    cat = "root"
    root = settings.root
    out: List[Check] = []
    if not root.exists():
        out.append(Check("root.exists", cat, "warn", f"{root} does not exist yet (fetch creates it)",
                         f"metro-assets fetch all --root {_q(root)}"))
        probe = root
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        writable = os.access(probe, os.W_OK)
        out.append(Check("root.writable", cat, "ok" if writable else "error",
                         f"{probe} (nearest existing parent) is " + ("writable" if writable else "not writable"),
                         "" if writable else f"choose a root you can write to: --root DIR (or sudo chown -R $USER {_q(probe)})"))
        out.append(_space_check(settings, catalog, store))
        return out
    if not root.is_dir():
        out.append(Check("root.exists", cat, "error", f"{root} exists but is not a directory",
                         "choose another root: --root DIR"))
        return out
    out.append(Check("root.exists", cat, "ok", f"{root}"))
    scratch: Optional[Path] = None
    try:
        scratch = Path(tempfile.mkdtemp(prefix=".metro-assets-doctor-", dir=root))
        (scratch / "probe").write_bytes(b"x")
        out.append(Check("root.writable", cat, "ok", f"{root} is writable"))
    except OSError as exc:
        out.append(Check("root.writable", cat, "error", f"cannot create files in {root}: {exc.strerror or exc}",
                         f"sudo chown -R $USER {_q(root)}   # or choose another --root"))
    out.append(_space_check(settings, catalog, store))
    if scratch is not None:
        try:
            out.append(_hardlink_check(scratch))
            out.append(_flock_check(scratch))
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return out


def _space_check(settings: Settings, catalog: Catalog, store: Store) -> Check:
    from metro_assets.console import human_bytes
    from metro_assets.fetch import plan

    try:
        p = plan(catalog.select(["all"]), store, settings)
    except Exception as exc:  # a plan failure must not hide the rest of the report
        return Check("root.free-space", "root", "warn", f"could not plan `fetch all`: {type(exc).__name__}: {exc}")
    need, unknown, free = p.bytes_needed, p.unknown_sizes, p.free_bytes
    todo = sum(1 for i in p.items if i.action in ("download", "resume"))
    need_s = human_bytes(need) + (f" + {unknown} file(s) of unknown size" if unknown else "")
    if free is None:
        return Check("root.free-space", "root", "warn", f"`fetch all` still needs {need_s}; free space unknown")
    detail = f"{human_bytes(free)} free; `fetch all` still needs {need_s} ({todo} file(s) to download)"
    if need > free:
        return Check("root.free-space", "root", "error", detail + ": NOT ENOUGH SPACE",
                     f"free at least {human_bytes(need - free)} on the disk of {_q(settings.root)}, or choose another --root")
    return Check("root.free-space", "root", "ok", detail)


def _hardlink_check(scratch: Path) -> Check:
    src, dst = scratch / "probe", scratch / "probe-link"
    try:
        os.link(src, dst)
        ok = os.stat(dst).st_ino == os.stat(src).st_ino
    except OSError as exc:
        return Check("root.hardlinks", "root", "warn",
                     f"the filesystem does not support hardlinks ({exc.strerror or exc}): imports copy instead of linking")
    return Check("root.hardlinks", "root", "ok" if ok else "warn",
                 "hardlinks work" if ok else "a hardlink did not share the inode: imports copy instead of linking")


_FLOCK_CHILD = r"""
import errno, fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    print("acquired")
except OSError as exc:
    print("blocked" if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK) else "error %s" % exc.errno)
"""


def _flock_check(scratch: Path) -> Check:
    """Two-process self-test: we hold an flock, a child tries to take it without blocking."""
    try:
        import fcntl
    except ImportError:
        return Check("root.locks", "root", "warn", "no fcntl on this platform: duplicate downloads are not prevented "
                     "(correctness does not depend on locks)")
    path = scratch / "lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            return Check("root.locks", "root", "warn", f"flock is not supported here ({exc.strerror}): two fetches may "
                         "download the same file twice (correctness does not depend on locks)",
                         "use a local disk for the root if you run fetches in parallel")
        try:
            r = subprocess.run([sys.executable, "-c", _FLOCK_CHILD, str(path)], capture_output=True, text=True, timeout=30)
            answer = r.stdout.strip() or r.stderr.strip()[-200:]
        except (OSError, subprocess.TimeoutExpired) as exc:
            return Check("root.locks", "root", "warn", f"lock self-test could not run: {exc}")
    finally:
        os.close(fd)
    if answer == "blocked":
        return Check("root.locks", "root", "ok", "file locks work across processes (flock self-test)")
    return Check("root.locks", "root", "warn",
                 f"file locks do not exclude a second process here (child said {answer!r}; NFS without lockd?): "
                 "parallel fetches may duplicate work (correctness does not depend on locks)",
                 "use a local disk for the root if you run fetches in parallel")


# ============================================================================ assets

def _fetch_fix(asset: Asset, root: Path) -> str:
    mirror = " --mirror BASE" if all(s.dead or s.manual for s in asset.sources) else ""
    return f"metro-assets fetch {asset.id} --root {_q(root)}{mirror}"


def _manual_fix(asset: Asset, root: Path) -> str:
    src = next((s for s in asset.sources if s.manual), None)
    archive = src.archive if src and src.archive else Path(asset.path).name
    return f"metro-assets import ~/Downloads/{archive} --root {_q(root)}"


def asset_checks(catalog: Catalog, store: Store) -> List[Check]:
    from metro_assets.verify import verify_assets

    assets = [a for a in catalog.assets if not _opt_in(catalog, a) or store.dest(a).exists()]
    result = verify_assets(assets, store)
    out: List[Check] = []
    by_id = catalog.by_id()
    for st in result.statuses:
        a = by_id[st.id]
        cid = f"asset.{a.id}"
        path = store.dest(a)
        if st.status == "ok":
            out.append(Check(cid, "asset", "ok", f"present and verified ({st.identity} sha256): {a.path}"))
        elif st.status == "unverified":
            out.append(Check(cid, "asset", "warn", f"present but unverified: {a.path} has no known sha256 "
                             "(not in the manifest or metro-assets.lock)",
                             f"metro-assets import {_q(path)} --root {_q(store.root)}"))
        elif st.status in ("missing", "action-required"):
            sev = "warn" if a.optional else "error"
            if a.manual:
                src = next((s for s in a.sources if s.manual), None)
                where = f" (license-gated: download {src.archive} from {src.site})" if src else " (license-gated)"
                out.append(Check(cid, "asset", sev, f"missing: {a.path}{where}" + (" [optional]" if a.optional else ""),
                                 _manual_fix(a, store.root)))
            else:
                out.append(Check(cid, "asset", sev, f"missing: {a.path}" + (" [optional]" if a.optional else ""),
                                 _fetch_fix(a, store.root)))
        else:  # corrupt
            trap = _classify_bad_file(path)
            detail = f"corrupt: {a.path}: {trap or st.detail}"
            out.append(Check(cid, "asset", "error", detail, f"rm {_q(path)} && " + (
                _manual_fix(a, store.root) if a.manual else _fetch_fix(a, store.root))))
    return out


def _opt_in(catalog: Catalog, a: Asset) -> bool:
    g = catalog.groups.get(a.group)
    return bool(g and g.opt_in)


def _classify_bad_file(path: Path) -> str:
    """Name the trap behind a corrupt file, or '' when it is none of the known ones."""
    try:
        st = path.stat()
        if not statmod.S_ISREG(st.st_mode):
            return ""
        if st.st_size == 0:
            return "0-byte leftover (typical of `wget -nc` against the dead Azure URLs)"
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return ""
    from metro_assets.checks import looks_like_markup

    if looks_like_markup(head[:512]):
        text = head.decode("utf-8", "replace")
        hint = ""
        if "PublicAccessNotPermitted" in text:
            hint = " (Azure 409 PublicAccessNotPermitted)"
        elif "<title>" in text.lower():
            i = text.lower().index("<title>")
            hint = f" (title {text[i + 7:i + 67].split('<')[0].strip()!r})"
        return f"an HTML/XML error page saved as the file{hint}, {st.st_size} bytes"
    return ""


# ============================================================================ traps

@dataclass(frozen=True)
class _TreeFile:
    path: Path
    rel: str
    size: int
    mtime: float


def _walk(store: Store, skip: Sequence[Path]) -> List[_TreeFile]:
    """Every regular file below the root, except datasets' unpacked trees and .git."""
    root = store.root
    skip_set = {str(p) for p in skip}
    out: List[_TreeFile] = []
    if not root.is_dir():
        return out
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d != ".git" and not d.startswith(".metro-assets-doctor-")
                       and os.path.join(dirpath, d) not in skip_set]
        for name in filenames:
            p = Path(dirpath, name)
            try:
                st = os.lstat(p)
            except OSError:
                continue
            if not statmod.S_ISREG(st.st_mode):
                continue
            out.append(_TreeFile(p, store.rel(p), st.st_size, st.st_mtime))
            if len(out) >= WALK_FILE_LIMIT:
                return out
    return out


def trap_checks(catalog: Catalog, store: Store, *, now: Optional[float] = None) -> List[Check]:
    now = time.time() if now is None else now
    root = store.root
    if not root.is_dir():
        return []
    out: List[Check] = []
    dataset_dirs = [store.dest(a) for a in catalog.assets if a.kind == "dataset"]
    files = _walk(store, dataset_dirs)
    expected = {a.path: a for a in catalog.assets if a.kind != "dataset"}
    by_lower: Dict[str, List[_TreeFile]] = {}
    for f in files:
        by_lower.setdefault(f.path.name.lower(), []).append(f)

    # wrong-case or misplaced copies of expected files
    for a in expected.values():
        dest = store.dest(a)
        if dest.exists():
            continue
        for f in by_lower.get(dest.name.lower(), []):
            if f.rel == a.path:
                continue
            how = "wrong-case name" if f.path.parent == dest.parent else (
                "wrong-case name in another folder" if f.path.name != dest.name else "in another folder")
            fix = (f"metro-assets import {_q(f.path)} --root {_q(root)}" if a.kind == "body-model"
                   else f"mv {_q(f.path)} {_q(dest)} && metro-assets verify {a.id} --root {_q(root)}")
            sev = "warn" if a.optional else "error"
            out.append(Check(f"trap.misplaced.{a.id}", "trap", sev,
                             f"{f.rel} looks like {a.id} ({how}); METRO expects {a.path}", fix))

    # 0-byte files and HTML/XML pages anywhere else in the tree (expected paths are reported per asset)
    for f in files:
        if f.rel in expected or f.rel.startswith(STATE_DIR_NAME + "/") or f.path.name.startswith("."):
            continue
        if not _looks_like_asset_file(f.path.name):
            continue
        trap = "" if f.size > (1 << 20) else _classify_bad_file(f.path)
        if trap:
            out.append(Check(f"trap.bad-file.{f.rel}", "trap", "warn", f"{f.rel}: {trap}", f"rm {_q(f.path)}"))

    # body checkpoint under the hand name (and the reverse)
    for a in catalog.assets:
        if a.check not in ("metro-hand", "metro-body"):
            continue
        dest = store.dest(a)
        if not dest.is_file() or dest.stat().st_size == 0:
            continue
        kind = checkpoint_kind(dest)
        if kind is None:
            continue
        if a.check == "metro-hand" and kind == "body":
            out.append(Check(f"trap.swapped.{a.id}", "trap", "error",
                             f"{a.path} is a METRO body checkpoint (it has {BODY_ONLY_KEY.decode()}), saved under the hand name",
                             f"rm {_q(dest)} && {_fetch_fix(a, root)}"))
        elif a.check == "metro-body" and kind == "hand":
            out.append(Check(f"trap.swapped.{a.id}", "trap", "error",
                             f"{a.path} is a METRO hand checkpoint (no {BODY_ONLY_KEY.decode()}), saved under a body name",
                             f"rm {_q(dest)} && {_fetch_fix(a, root)}"))

    # body models pickled with chumpy
    for a in catalog.assets:
        if a.kind != "body-model":
            continue
        dest = store.dest(a)
        if dest.is_file() and dest.stat().st_size and file_contains(dest, CHUMPY_MARKER):
            out.append(Check(f"trap.chumpy.{a.id}", "trap", "warn",
                             f"{a.path} is pickled with chumpy objects: upstream METRO and smplx need chumpy "
                             "(unmaintained, breaks on numpy >= 1.24) to load it",
                             f"metro-assets import --clean {_q(dest)} --root {_q(root)}"))

    # stale partial downloads and temp files
    out += _stale_checks(files, now)
    out += _lock_checks(store, now)
    return out


_ASSET_SUFFIXES = (".bin", ".pth", ".pt", ".pkl", ".npy", ".npz", ".zip", ".tar", ".yaml", ".yml", ".tsv", ".ckpt")


def _looks_like_asset_file(name: str) -> bool:
    return name.lower().endswith(_ASSET_SUFFIXES)


def _stale_checks(files: Iterable[_TreeFile], now: float) -> List[Check]:
    out: List[Check] = []
    present = {f.rel for f in files}
    for f in files:
        name = f.path.name
        age = now - f.mtime
        if name.startswith(".") and name.endswith(PART_SUFFIX):
            state_rel = f.rel + ".json"
            if state_rel not in present:
                out.append(Check(f"trap.stale-part.{f.rel}", "trap", "warn",
                                 f"{f.rel}: partial download without its resume state ({_age(age)} old); it cannot resume",
                                 f"rm {_q(f.path)}"))
            elif age > STALE_PART_SECONDS:
                out.append(Check(f"trap.stale-part.{f.rel}", "trap", "warn",
                                 f"{f.rel}: partial download untouched for {_age(age)} ({f.size} bytes); "
                                 "the next fetch resumes it, or delete it",
                                 f"rm {_q(f.path)} {_q(f.path.with_name(name + '.json'))}"))
        elif name.startswith(".") and name.endswith(STATE_SUFFIX):
            part_rel = f.rel[: -len(".json")]
            if part_rel not in present:
                out.append(Check(f"trap.stale-part.{f.rel}", "trap", "warn",
                                 f"{f.rel}: resume state without its partial file", f"rm {_q(f.path)}"))
        elif name.endswith(".tmp") and age > STALE_TMP_SECONDS:
            out.append(Check(f"trap.stale-tmp.{f.rel}", "trap", "warn",
                             f"{f.rel}: temporary file left by an interrupted write ({_age(age)} old)", f"rm {_q(f.path)}"))
    return out


def _age(seconds: float) -> str:
    if seconds >= 86400:
        return f"{seconds / 86400:.1f} days"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} hours"
    return f"{max(seconds, 0) / 60:.0f} minutes"


def _lock_checks(store: Store, now: float) -> List[Check]:
    """Locks are flock()s: a lock file left behind is harmless.  A lock held now
    means another process is working; one we cannot open blocks every fetch."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover
        return []
    lock_files = sorted(store.state_dir.glob("*.lock")) + sorted((store.state_dir / "locks").glob("*.lock"))
    out: List[Check] = []
    free = 0
    for p in lock_files:
        rel = store.rel(p)
        try:
            if not p.is_file():
                out.append(Check(f"trap.lock.{rel}", "trap", "error", f"{rel} is not a regular file: every fetch of it fails",
                                 f"rm -r {_q(p)}"))
                continue
            fd = os.open(p, os.O_RDWR)
        except OSError as exc:
            out.append(Check(f"trap.lock.{rel}", "trap", "error",
                             f"{rel} cannot be opened for locking ({exc.strerror}; left by another user or sudo?)",
                             f"sudo rm -f {_q(p)}"))
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(fd, fcntl.LOCK_UN)
            free += 1
        except OSError:
            age = now - p.stat().st_mtime
            out.append(Check(f"trap.lock.{rel}", "trap", "warn",
                             f"{rel} is held by a running process (lock file {_age(age)} old): another metro-assets is "
                             "working on it; a second fetch waits for it",
                             "ps aux | grep '[m]etro-assets'   # wait for it, or stop it; a killed fetch releases its locks"))
        finally:
            os.close(fd)
    if lock_files and free == len(lock_files):
        out.append(Check("trap.locks", "trap", "ok", f"{free} lock file(s), none held (leftover lock files are harmless)"))
    return out


def file_contains(path: Path, needle: bytes, *, limit: Optional[int] = None) -> bool:
    """Whether ``needle`` occurs in the file's first ``limit`` bytes (all of it by default); mmap, no copy."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size == 0:
                return False
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
                end = size if limit is None else min(size, limit)
                return m.find(needle, 0, end) != -1
    except (OSError, ValueError):
        return False


def checkpoint_kind(path: Path) -> Optional[str]:
    """'body' / 'hand' for a METRO checkpoint from its key names alone (no torch), else None.

    Legacy torch files pickle every key name before the tensor data; zip files
    keep them in ``data.pkl``, stored uncompressed.
    """
    names: Optional[bytes] = None
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                member = next((n for n in z.namelist() if n.endswith("data.pkl")), None)
                if member is None:
                    return None
                names = z.read(member)
    except (OSError, zipfile.BadZipFile):
        return None
    if names is None:
        if not file_contains(path, METRO_KEY, limit=SCAN_HEAD_BYTES):
            return None
        return "body" if file_contains(path, BODY_ONLY_KEY, limit=SCAN_HEAD_BYTES) else "hand"
    if METRO_KEY not in names:
        return None
    return "body" if BODY_ONLY_KEY in names else "hand"


# ============================================================================ lockfile

def _forget_cmd(root: Path, asset_id: str) -> str:
    import json

    code = f"from metro_assets.store import Store; Store({json.dumps(str(root))}).forget({json.dumps(asset_id)})"
    return f"python -c {_q(code)}"


def lockfile_checks(catalog: Catalog, store: Store) -> List[Check]:
    from metro_assets.hashing import sha256_file

    entries = store.lock_entries()
    if not entries:
        if store.lockfile.exists():
            return [Check("lockfile", "lockfile", "ok", f"{store.lockfile.name} has no entries")]
        return []
    by_id = catalog.by_id()
    stamps = store.load_stamps()
    out: List[Check] = []
    drift = 0
    for aid, e in sorted(entries.items()):
        cid = f"lockfile.{aid}"
        a = by_id.get(aid)
        if a is None:
            out.append(Check(cid, "lockfile", "warn", f"{aid} is recorded in {store.lockfile.name} but no manifest defines it",
                             _forget_cmd(store.root, aid)))
            drift += 1
            continue
        if e.get("path") != a.path:
            out.append(Check(cid, "lockfile", "warn",
                             f"{aid}: recorded path {e.get('path')!r}, the manifest now says {a.path!r}; the record is ignored",
                             f"{_forget_cmd(store.root, aid)} && metro-assets verify {aid} --root {_q(store.root)}"))
            drift += 1
            continue
        if a.sha256 and e.get("sha256") and e["sha256"] != a.sha256:
            out.append(Check(cid, "lockfile", "warn",
                             f"{aid}: recorded sha256 {e['sha256'][:16]}... differs from the manifest's {a.sha256[:16]}... "
                             "(the manifest wins)", _forget_cmd(store.root, aid)))
            drift += 1
            continue
        if a.kind == "dataset":
            continue
        dest = store.dest(a)
        try:
            st = dest.stat()
        except OSError:
            continue  # missing: reported with the asset
        rec_size, rec_sha = e.get("size"), e.get("sha256")
        if rec_size is not None and st.st_size != rec_size:
            out.append(Check(cid, "lockfile", "error",
                             f"{aid}: {a.path} is {st.st_size} bytes, recorded as {rec_size} bytes: the file changed after it was recorded",
                             f"rm {_q(dest)} && {_fetch_fix(a, store.root)}   # or, if you replaced it on purpose: "
                             f"{_forget_cmd(store.root, aid)} && metro-assets import {_q(dest)} --root {_q(store.root)}"))
            drift += 1
            continue
        if rec_sha and not a.sha256:
            got = store.stamped_sha(dest, st, stamps) or sha256_file(dest)
            if got != rec_sha:
                out.append(Check(cid, "lockfile", "error",
                                 f"{aid}: {a.path} has sha256 {got[:16]}..., recorded {rec_sha[:16]}...: the file changed after it was recorded",
                                 f"rm {_q(dest)} && {_fetch_fix(a, store.root)}   # or, if you replaced it on purpose: "
                                 f"{_forget_cmd(store.root, aid)} && metro-assets import {_q(dest)} --root {_q(store.root)}"))
                drift += 1
    if not drift:
        out.append(Check("lockfile", "lockfile", "ok", f"{len(entries)} recorded identit{'y' if len(entries) == 1 else 'ies'}, "
                         "all consistent with the files and manifests"))
    return out


# ============================================================================ online

@dataclass(frozen=True)
class ProbeResult:
    url: str
    verdict: str              # alive | dead | error | unreachable
    status: Optional[int] = None
    detail: str = ""


def probe_url(url: str, *, timeout: float = PROBE_TIMEOUT) -> ProbeResult:
    """One ``Range: bytes=0-0`` GET through the same HTTP client as fetch (same CA bundle,
    proxies and redirects); reads the status line, headers and at most a short error body."""
    from metro_assets.errors import SourceError
    from metro_assets.http import TransportError, is_azure_public_access_refusal, open_get

    try:
        resp = open_get(url, {"Range": "bytes=0-0", "User-Agent": f"metro-assets/{__version__} doctor"},
                        timeout=(timeout, timeout))
    except TransportError as exc:
        return ProbeResult(url, "unreachable", None, "timed out" if exc.connect_timeout or exc.read_timeout else exc.why)
    except SourceError as exc:  # DNS, TLS certificate, redirect loop
        return ProbeResult(url, "unreachable", None, exc.what)
    except Exception as exc:  # http.client oddities (bad status line...)
        return ProbeResult(url, "unreachable", None, f"{type(exc).__name__}: {exc}")
    try:
        code = resp.status
        if code < 400:
            return ProbeResult(url, "alive", code, f"HTTP {code}")
        try:
            body = resp.read(2048) or b""
        except Exception:
            body = b""
        hint = " PublicAccessNotPermitted" if is_azure_public_access_refusal(code, body) else ""
        if code in DEAD_STATUS:
            return ProbeResult(url, "dead", code, f"HTTP {code}{hint}")
        return ProbeResult(url, "error", code, f"HTTP {code}")
    finally:
        resp.close()


def probe_all(urls: Sequence[str], *, timeout: float = PROBE_TIMEOUT, workers: int = PROBE_WORKERS) -> Dict[str, ProbeResult]:
    """Probe in parallel daemon threads under one deadline: a server that never
    answers (or drips bytes) can not hold the report longer than ~timeout."""
    results: Dict[str, ProbeResult] = {}
    todo = list(dict.fromkeys(urls))
    lock = threading.Lock()

    def worker() -> None:
        while True:
            with lock:
                if not todo:
                    return
                url = todo.pop(0)
            r = probe_url(url, timeout=timeout)
            with lock:
                results[url] = r

    n = max(1, min(workers, len(todo)))
    threads = [threading.Thread(target=worker, name="metro-doctor-probe", daemon=True) for _ in range(n)]
    rounds = -(-len(todo) // n) if todo else 0
    deadline = time.monotonic() + timeout * max(rounds, 1) + 1.0
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    with lock:
        for url in dict.fromkeys(urls):
            results.setdefault(url, ProbeResult(url, "unreachable", None, f"no answer within {timeout:g}s"))
        return dict(results)


def online_checks(catalog: Catalog, settings: Settings, *, timeout: float = PROBE_TIMEOUT) -> List[Check]:
    from metro_assets.sources import candidates, file_path

    jobs: List[Tuple[Asset, Any]] = []
    for a in catalog.assets:
        for c in candidates(a, Settings(root=settings.root, mirrors=settings.mirrors)):
            if c.kind in ("http", "file"):
                jobs.append((a, c))
    results = probe_all([c.url for _, c in jobs if c.kind == "http"], timeout=timeout)
    out: List[Check] = []
    for a, c in jobs:
        shown = c.declared or c.url
        cid = f"online.{a.id}.{c.label}:{shown}"
        if c.kind == "file":
            ok = file_path(c.url).is_file()
            out.append(Check(cid, "online", "ok" if ok else "warn",
                             f"{a.id}: {shown}: " + ("present in the local mirror" if ok else "not in the local mirror")))
            continue
        r = results[c.url]
        fix = f"metro-assets fetch {a.id} --mirror BASE   # a server or folder that holds {a.mirror_path}"
        if c.dead_since:
            if r.verdict == "alive":
                out.append(Check(cid, "online", "ok", f"{a.id}: {shown}: came back ({r.detail}); the manifest says dead since "
                                 f"{c.dead_since}", f"metro-assets fetch {a.id}   # after removing dead_since from the manifest"))
            else:
                out.append(Check(cid, "online", "warn", f"{a.id}: {shown}: still dead ({r.detail}; known dead since {c.dead_since})", fix))
        elif r.verdict == "alive":
            out.append(Check(cid, "online", "ok", f"{a.id}: {shown}: alive ({r.detail})"))
        elif r.verdict == "dead":
            out.append(Check(cid, "online", "error", f"{a.id}: {shown}: dead ({r.detail})", fix))
        elif r.verdict == "error":
            out.append(Check(cid, "online", "warn", f"{a.id}: {shown}: server error ({r.detail}); may be temporary",
                             f"metro-assets doctor --online   # try again later"))
        else:
            out.append(Check(cid, "online", "warn", f"{a.id}: {shown}: unreachable ({r.detail})",
                             "check the network or proxy (HTTPS_PROXY), or use --mirror BASE"))
    return out
