"""demo: see every command work offline against a synthetic sample mirror on 127.0.0.1."""
from __future__ import annotations

import typer
from typing import Annotated

from metro_assets import console
from metro_assets.cli import app
from metro_assets.cli.common import RootOpt, guarded


@app.command("demo", help=(
    "Run every command against a SYNTHETIC sample mirror served on 127.0.0.1: no network, no license needed.\n\n"
    "It builds random-weight checkpoints of the released architecture, HRNet weights and configs, support data and "
    "official-style SMPL/MANO archives (all clearly marked synthetic), serves them over HTTP on 127.0.0.1, then runs "
    "the real commands, printing each one: fetch all --mirror, import of the body-model archives, verify, doctor and "
    "run-check all with a rendered picture. Needs torch and about 10 GB of free disk; takes 1-3 minutes.\n\n"
    "--root DIR: work there (new or empty directory; default: a temporary directory). The directory is deleted "
    "afterwards unless --keep.\n\n"
    "Exit codes: 0 every step worked; 1 a step failed; 2 usage error (e.g. --root not empty)."))
@guarded
def demo_cmd(
    root: RootOpt = None,
    keep: Annotated[bool, typer.Option("--keep", help="Keep the mirror, the tree and the picture afterwards.")] = False,
) -> None:
    from metro_assets.demo.run import run_demo

    def log(line: str) -> None:
        console.out(line)

    def flush() -> None:
        import sys

        sys.stdout.flush()
        sys.stderr.flush()

    result = run_demo(root, keep=keep, log=log, flush=flush)
    rows = [[s.name, console.status_text("ok" if s.ok else "failed"), f"{s.seconds:.1f}", s.note] for s in result.steps]
    console.out("")
    console.table(f"metro-assets demo: {result.seconds:.1f}s in all", ["step", "status", "seconds", "note"], rows)
    for p in result.pictures:
        console.out(f"picture: {p}")
    console.err(f"demo {'passed' if result.ok else 'FAILED'}; exit code {result.exit_code}")
    raise typer.Exit(result.exit_code)
