"""fetch, verify, list: the asset engine's commands."""
from __future__ import annotations

from typing import List, Optional

import typer
from typing import Annotated

from metro_assets import console
from metro_assets.cli import app
from metro_assets.cli.common import EXIT_CODES_HELP, JsonOpt, ManifestOpt, QuietOpt, RootOpt, guarded, settings_from

SelectionArg = Annotated[Optional[List[str]], typer.Argument(
    help="What to act on: 'all' (every group except opt-in datasets), group names "
         "(checkpoints, hrnet, bodymodels, support, predictions, datasets), tags (body, hand) or asset ids. Default: all.",
    show_default=False)]


def _catalog(settings):
    from metro_assets.manifest import load_catalog

    return load_catalog(settings.manifests)


@app.command("fetch", help=(
    "Download, checksum and lay out assets under the root.\n\n"
    "Sources are tried in order: each --mirror BASE (the file at BASE/<tree path>; http(s)://, file:// or a folder), "
    "then the manifest's sources. Known-dead sources are skipped with the reason. Bytes go to a hidden temp file, "
    "are hashed while they arrive, structurally checked and fsynced before they reach the final path; an "
    "interrupted download resumes on the next run. Assets without a published sha256 are recorded in "
    "metro-assets.lock on first download (trust on first use). License-gated assets (SMPL/MANO) print the manual steps.\n\n"
    + EXIT_CODES_HELP))
@guarded
def fetch_cmd(
    selection: SelectionArg = None,
    root: RootOpt = None,
    mirror: Annotated[Optional[List[str]], typer.Option("--mirror", help="Mirror base tried before the manifest sources (repeatable). Env: METRO_ASSETS_MIRROR.", show_default=False)] = None,
    manifest: ManifestOpt = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan (action, source, bytes, disk space) and change nothing.")] = False,
    offline: Annotated[bool, typer.Option("--offline", help="Never touch the network: only file:// mirrors and files already present. Env: METRO_ASSETS_OFFLINE=1.")] = False,
    jobs: Annotated[Optional[int], typer.Option("--jobs", "-j", min=1, help="Files downloaded in parallel (default 4). Env: METRO_ASSETS_JOBS.", show_default=False)] = None,
    connections: Annotated[Optional[int], typer.Option("--connections", "-c", min=1, max=32, help="HTTP connections per file when the server supports Range (default: automatic). Env: METRO_ASSETS_CONNECTIONS.", show_default=False)] = None,
    keep_archive: Annotated[bool, typer.Option("--keep-archive", help="Datasets: keep the .tar instead of streaming it straight into datasets/.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Start even if the disk-space preflight says the disk is too small.")] = False,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    from metro_assets import fetch as fetchmod
    from metro_assets.store import Store

    settings = settings_from(root, manifest, mirrors=mirror or (), offline=True if offline else None,
                             jobs=jobs, connections=connections)
    catalog = _catalog(settings)
    names = selection or ["all"]
    if dry_run:
        assets = catalog.select(names)
        explicit = [n for n in names if n in catalog.by_id()]
        p = fetchmod.plan(assets, Store(settings.root), settings, explicit=explicit, probe=True)
        if json_out:
            console.print_json({"dry_run": True, "root": str(settings.root), **p.to_json()})
        else:
            _print_plan(p, settings)
        return
    mode = "quiet" if (quiet or json_out) else "auto"
    log = None if (quiet or json_out) else (lambda m: console.err(m))
    with console.Progress(mode=mode) as progress:
        result = fetchmod.fetch(catalog, names, settings, progress=progress, force=force,
                                keep_archive=keep_archive, connections=connections, log=log)
    if json_out:
        console.print_json({"root": str(settings.root), **result.to_json()})
    else:
        _print_fetch(result, quiet=quiet)
    raise typer.Exit(result.exit_code)


def _print_plan(p, settings) -> None:
    from metro_assets.console import human_bytes, status_text

    rows = []
    notes = []
    for it in p.items:
        src = it.source
        if it.action == "manual":
            m = next((s for s in it.asset.sources if s.manual), None)
            note = f"license-gated: get {m.archive} from {m.site}, then `metro-assets import`" if m else "license-gated"
        elif it.action == "blocked":
            dead = next((c for c in it.candidates if c.dead_since), None)
            note = f"all sources dead (since {dead.dead_since}); use --mirror" if dead else "no usable source; use --mirror"
            notes.append(f"{it.asset.id}: {it.reason}")
        elif it.action == "resume":
            note = f"resume from {human_bytes(it.resume_from)}"
        else:
            note = it.reason
        rows.append([it.asset.id, status_text(it.action), human_bytes(it.bytes) if it.action in ("download", "resume") else "",
                     (src.declared or src.url) if src else "", note])
    console.table(f"fetch plan for {settings.root}", ["asset", "action", "bytes", "source", "note"], rows)
    for n in notes[:1]:
        console.out(n)
    need = p.bytes_needed
    unknown = f" (+{p.unknown_sizes} of unknown size)" if p.unknown_sizes else ""
    free = human_bytes(p.free_bytes) if p.free_bytes is not None else "?"
    ok = p.free_bytes is None or need <= p.free_bytes
    console.out(f"to download: {human_bytes(need)}{unknown}; free on disk: {free}; "
                + ("disk space ok" if ok else "NOT ENOUGH DISK SPACE (use --force to start anyway)"))


def _print_fetch(result, *, quiet: bool) -> None:
    from metro_assets.console import human_bytes, status_text

    if not quiet:
        rows = [[o.id, status_text(o.action), status_text(o.status), human_bytes(o.size) if o.size else "", o.source or ""]
                for o in result.outcomes]
        console.table(None, ["asset", "action", "status", "size", "source"], rows)
    for o in result.outcomes:
        if o.status == "failed":
            console.err(f"{o.id}: {o.message}." + (f" Next: {o.next_command}" if o.next_command and o.next_command not in o.message else ""))
        elif o.status == "action-required" and not (o.optional and o.id not in result.explicit):
            console.err(f"action required: {o.message}")
    mb = result.bytes_downloaded / 2**20
    if not quiet:
        console.err(f"{len(result.outcomes)} assets, {human_bytes(result.bytes_downloaded)} downloaded in "
                    f"{result.seconds:.1f}s ({mb / max(result.seconds, 1e-9):.0f} MiB/s); exit code {result.exit_code}")


def _verify_like(selection, root, manifest, *, full=False, deep=False, sample=None):
    from metro_assets.store import Store
    from metro_assets.verify import verify

    settings = settings_from(root, manifest)
    catalog = _catalog(settings)
    return settings, verify(catalog, selection or ["all"], Store(settings.root), full=full, deep=deep, sample=sample)


@app.command("verify", help=(
    "Check the assets on disk against their identity (manifest sha256, else metro-assets.lock).\n\n"
    "Default is fast: size plus a stamp cache (size, mtime, inode -> sha256), so an unchanged tree verifies in "
    "well under a second. --full re-hashes every file on all cores. --deep also load-checks checkpoints against "
    "the METRO key/shape lists (needs torch), validates body models, and checks dataset TSVs row by row.\n\n"
    "Statuses: ok, missing, corrupt (expected vs got), unverified (present, no known hash), action-required "
    "(license-gated, import it).\n\n" + EXIT_CODES_HELP))
@guarded
def verify_cmd(
    selection: SelectionArg = None,
    root: RootOpt = None,
    manifest: ManifestOpt = None,
    full: Annotated[bool, typer.Option("--full", help="Re-hash every file (in parallel) instead of trusting stamps.")] = False,
    deep: Annotated[bool, typer.Option("--deep", help="Also run deep checks (checkpoint keys/shapes, body models, dataset TSVs).")] = False,
    sample: Annotated[Optional[int], typer.Option("--sample", min=1, help="With --deep on datasets: check N sampled rows per file instead of all.", show_default=False)] = None,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    from metro_assets.console import status_text

    settings, result = _verify_like(selection, root, manifest, full=full, deep=deep, sample=sample)
    if json_out:
        console.print_json({"root": str(settings.root), **result.to_json()})
        raise typer.Exit(result.exit_code)
    if not quiet:
        rows = [[s.id, status_text(s.status), s.path, s.detail] for s in result.statuses]
        console.table(f"verify {settings.root}", ["asset", "status", "path", "detail"], rows)
    for s in result.statuses:
        if s.status in ("missing", "corrupt", "action-required") and not (s.optional and s.id not in result.explicit):
            console.err(f"{s.id}: {s.status}: {s.detail}" + (f". Fix: {s.fix}" if s.fix else ""))
        for f in s.findings[:20]:
            console.err(f"  {s.id}: {f.get('file', '')}" + (f" row {f['row']}" if f.get("row") is not None else "") + f": {f.get('message', '')}")
    counts = ", ".join(f"{v} {k}" for k, v in sorted(result.counts().items()))
    console.err(f"{len(result.statuses)} assets: {counts}; exit code {result.exit_code}")
    raise typer.Exit(result.exit_code)


@app.command("list", help=(
    "List assets with their group, path, size and status.\n\n"
    "--json prints a JSON array (a stable contract) of objects with at least: id, group, path, size, sha256, "
    "manual (bool), status; plus kind, tags, optional, identity, sources, description.\n\n" + EXIT_CODES_HELP))
@guarded
def list_cmd(
    selection: SelectionArg = None,
    root: RootOpt = None,
    manifest: ManifestOpt = None,
    all_groups: Annotated[bool, typer.Option("--all-groups", help="Include opt-in groups (datasets) when no selection is given.")] = False,
    json_out: JsonOpt = False,
) -> None:
    from metro_assets.console import human_bytes, status_text
    from metro_assets.store import Store
    from metro_assets.verify import verify_assets

    settings = settings_from(root, manifest)
    catalog = _catalog(settings)
    if selection:
        assets = catalog.select(selection)
    else:
        assets = list(catalog.assets) if all_groups else catalog.select(["all"])
    result = verify_assets(assets, Store(settings.root))
    by_id = {a.id: a for a in assets}
    rows = []
    for s in result.statuses:
        a = by_id[s.id]
        rows.append({"id": s.id, "group": s.group, "path": s.path, "size": s.size, "sha256": s.sha256,
                     "manual": s.manual, "status": s.status, "kind": a.kind, "tags": list(a.tags),
                     "optional": a.optional, "identity": s.identity, "description": a.description,
                     "sources": [{"kind": x.kind, "url": x.url, "dead_since": x.dead_since, "site": x.site,
                                  "archive": x.archive, "member": x.member} for x in a.sources]})
    if json_out:
        console.print_json(rows)
        return
    console.table(None, ["id", "group", "status", "size", "path"],
                  [[r["id"], r["group"], status_text(r["status"]), human_bytes(r["size"]) if r["size"] is not None else "?", r["path"]]
                   for r in rows])
