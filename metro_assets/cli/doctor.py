"""doctor: what is wrong with this METRO tree and environment, and the exact fix for each."""
from __future__ import annotations


import typer
from typing import Annotated

from metro_assets import console
from metro_assets.cli import app
from metro_assets.cli.common import JsonOpt, ManifestOpt, RootOpt, guarded, settings_from


@app.command("doctor", help=(
    "Diagnose the environment, the root and every asset, and print the exact fix command for each problem.\n\n"
    "Checks: Python/torch/CUDA/numpy/scipy/smplx/chumpy; the root (exists, writable, free space versus what "
    "`fetch all` still needs, hardlinks, file locks across processes); every asset (missing, verified, corrupt, "
    "unverified) and the known traps: 0-byte wget leftovers, HTML/XML error pages saved as files, wrong-case "
    "names, a body checkpoint under the hand name, chumpy-pickled body models, stale partial/temp files and "
    "locks, lockfile drift. --online also probes every download source (5 s timeout, in parallel).\n\n"
    "--json prints {ok, exit_code, root, counts, checks: [{id, category, status, detail, fix}]}.\n\n"
    "Exit codes: 0 no errors (warnings allowed); 1 at least one error; 2 usage or manifest error."))
@guarded
def doctor_cmd(
    root: RootOpt = None,
    manifest: ManifestOpt = None,
    online: Annotated[bool, typer.Option("--online", help="Also probe every non-manual source (alive, dead, unreachable).")] = False,
    timeout: Annotated[float, typer.Option("--timeout", min=0.1, help="Seconds per source probe with --online.")] = 5.0,
    json_out: JsonOpt = False,
) -> None:
    from metro_assets.doctor import run_doctor
    from metro_assets.manifest import load_catalog

    settings = settings_from(root, manifest)
    report = run_doctor(settings, load_catalog(settings.manifests), online=online, probe_timeout=timeout)
    if json_out:
        console.print_json(report.to_json())
    else:
        render(report)
    raise typer.Exit(report.exit_code)


def render(report) -> None:
    from metro_assets.console import status_text

    order = {"error": 0, "warn": 1, "ok": 2}
    rows = [[status_text(c.status), c.category, c.id, c.detail] for c in report.checks]
    console.table(f"metro-assets doctor: {report.root}", ["status", "category", "check", "detail"], rows)
    problems = sorted((c for c in report.checks if c.status != "ok" and c.fix), key=lambda c: order[c.status])
    if problems:
        console.out("")
        console.out("How to fix:")
        for c in problems:
            console.out(f"  [{c.status}] {c.id}")
            console.out(f"    {c.fix}")
    n = report.counts()
    console.err(f"{len(report.checks)} checks: {n['ok']} ok, {n['warn']} warn, {n['error']} error "
                f"({report.seconds:.1f}s); exit code {report.exit_code}")
