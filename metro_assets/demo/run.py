"""The demo flow: build a synthetic sample mirror, serve it on 127.0.0.1, run the real commands against it.

Every command runs as a subprocess (``python -m metro_assets ...``) and is
printed before it runs, so what the user sees is exactly what they would type.
Nothing touches the network: the mirror holds every non-manual asset, so the
manifests' real hosts are never tried.
"""
from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

from metro_assets.errors import EXIT_ACTION_REQUIRED, EXIT_FAILED, EXIT_OK, MetroAssetsError, MissingDependency, UsageError
from metro_assets.settings import ENV_MIRROR, ENV_OFFLINE, ENV_ROOT

MARKER = ".metro-assets-demo"
Log = Callable[[str], None]


@dataclass(frozen=True)
class Step:
    name: str
    ok: bool
    seconds: float
    command: str = ""            # the command line as the user would type it ("" for in-process steps)
    exit_code: Optional[int] = None
    note: str = ""


@dataclass(frozen=True)
class DemoResult:
    dir: str
    steps: Tuple[Step, ...]
    seconds: float
    kept: bool
    pictures: Tuple[str, ...] = ()     # run-check's rendered pictures (only when kept)

    @property
    def ok(self) -> bool:
        return all(s.ok for s in self.steps)

    @property
    def exit_code(self) -> int:
        return EXIT_OK if self.ok else EXIT_FAILED


def _prepare_dir(root: Optional[Path]) -> Tuple[Path, bool]:
    """The demo directory, and whether we created it (only then do we delete it)."""
    if root is None:
        return Path(tempfile.mkdtemp(prefix="metro-assets-demo-")), True
    root = Path(root).expanduser().absolute()
    if root.exists():
        if not root.is_dir():
            raise UsageError(f"--root {root} is not a directory", next_command="metro-assets demo --root NEW_EMPTY_DIR")
        if any(root.iterdir()) and not (root / MARKER).exists():
            raise UsageError(f"--root {root} is not empty and was not made by `metro-assets demo`",
                             expected="a new or empty directory (the demo deletes it afterwards unless --keep)",
                             did="Nothing was written", next_command="metro-assets demo --root NEW_EMPTY_DIR")
        return root, False
    root.mkdir(parents=True)
    return root, True


def _child_env() -> dict:
    """The user's environment minus settings that would point the commands elsewhere."""
    env = {k: v for k, v in os.environ.items() if k not in (ENV_ROOT, ENV_MIRROR, ENV_OFFLINE)}
    pkg_parent = str(Path(__file__).resolve().parent.parent.parent)
    env["PYTHONPATH"] = pkg_parent + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("METRO_ASSETS_JOBS", "4")
    return env


def _display(args: Sequence[str]) -> str:
    return "metro-assets " + " ".join(shlex.quote(str(a)) for a in args)


def run_demo(root: Optional[Path] = None, *, keep: bool = False, log: Log = print,
             flush: Callable[[], None] = lambda: None) -> DemoResult:
    """Run the whole demo.  ``log`` prints one line; ``flush`` is called before each child starts
    (so our lines and the child's output appear in order)."""
    from metro_assets.demo.samples import build_samples, sample_manifest_text
    from metro_assets.demo.server import DemoServer
    from metro_assets.manifest import load_catalog

    t_all = time.monotonic()
    base, created = _prepare_dir(root)
    (base / MARKER).write_text("made by `metro-assets demo`; safe to delete\n")
    tree = base / "metro-root"
    manifest = base / "sample-manifest.yaml"
    picture = base / "run-check.png"
    steps: List[Step] = []
    env = _child_env()

    def command(name: str, args: Sequence[str], ok_codes: Sequence[int] = (EXIT_OK,), note: str = "") -> Step:
        line = _display(args)
        log("")
        log(f"== {name}")
        log(f"$ {line}")
        flush()
        t = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "metro_assets", *[str(a) for a in args]], env=env,
                              stdin=subprocess.DEVNULL)
        dt = time.monotonic() - t
        ok = proc.returncode in ok_codes
        extra = note if ok else f"exit code {proc.returncode}, expected {' or '.join(map(str, ok_codes))}"
        step = Step(name, ok, dt, line, proc.returncode, extra)
        log(f"-- {name}: {'ok' if ok else 'FAILED'} in {dt:.1f}s (exit code {proc.returncode}){'; ' + extra if extra else ''}")
        steps.append(step)
        return step

    try:
        log(f"metro-assets demo in {base}")
        log("Every file below is SYNTHETIC: random values with the structure of the real METRO assets. "
            "It shows every command working offline; its predictions mean nothing.")
        log("")
        log("== build the sample mirror (checkpoints of the released architecture, HRNet, support data, "
            "official-style SMPL/MANO archives)")
        t = time.monotonic()
        try:
            try:
                import torch  # noqa: F401  the checkpoints are real torch.save files
            except ImportError:
                raise MissingDependency("The demo needs torch to write checkpoints and run run-check",
                                        next_command="pip install 'metro-assets[model]'") from None
            catalog = load_catalog()
            samples = build_samples(base, catalog, log=log)
            manifest.write_text(sample_manifest_text(samples, catalog))
            total = sum(f.size for f in samples.files)
            steps.append(Step("build samples", True, time.monotonic() - t,
                              note=f"{len(samples.files)} files, {total / 2**30:.2f} GiB + 3 archives"))
            log(f"-- build samples: ok in {time.monotonic() - t:.1f}s; identities of the pinned synthetic files: {manifest}")
        except Exception as exc:  # show the failure as a step, then stop
            why = exc.paragraph() if isinstance(exc, MetroAssetsError) else f"{type(exc).__name__}: {exc}"
            steps.append(Step("build samples", False, time.monotonic() - t, note=why))
            log(f"-- build samples: FAILED: {why}")
            return _finish(base, steps, t_all, keep, created, log)

        with DemoServer(samples.mirror) as server:
            log("")
            log(f"== serving {samples.mirror} at {server.url} (127.0.0.1 only; Range, ETag)")
            common = ["--root", tree, "--manifest", manifest]
            fetch = command("fetch all", ["fetch", "all", *common, "--mirror", server.url],
                            ok_codes=(EXIT_OK, EXIT_ACTION_REQUIRED),
                            note="only the license-gated body models remain (imported next)")
        if fetch.ok:
            command("import body models", ["import", *samples.archives, *common])
            command("verify", ["verify", *common])
            command("doctor", ["doctor", *common])
            command("run-check all", ["run-check", "all", "--root", tree, "--render", picture])
        return _finish(base, steps, t_all, keep, created, log)
    except KeyboardInterrupt:
        steps.append(Step("interrupted", False, 0.0))
        return _finish(base, steps, t_all, keep, created, log)


def _finish(base: Path, steps: List[Step], t0: float, keep: bool, created: bool, log: Log) -> DemoResult:
    pictures = sorted(str(p) for p in base.glob("run-check*.png"))
    t = time.monotonic()
    if keep:
        log("")
        log(f"kept {base} (--keep): mirror/, downloads/, metro-root/, sample-manifest.yaml"
            + (f", {', '.join(Path(p).name for p in pictures)}" if pictures else ""))
    else:
        _remove(base, created)
        steps.append(Step("clean up", True, time.monotonic() - t, note=f"removed {base}"))
    return DemoResult(str(base), tuple(steps), time.monotonic() - t0, keep, tuple(pictures) if keep else ())


def _remove(base: Path, created: bool) -> None:
    if created:
        shutil.rmtree(base, ignore_errors=True)
        return
    # a --root the user gave us (empty or ours): empty it, keep the directory itself
    for p in base.iterdir():
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
