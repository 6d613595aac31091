"""import and export: license-gated body models in, smplx layout out."""
from __future__ import annotations

from pathlib import Path
from typing import List

import typer
from typing import Annotated

from metro_assets import console
from metro_assets.cli import app
from metro_assets.cli.common import EXIT_CODES_HELP, JsonOpt, ManifestOpt, QuietOpt, RootOpt, guarded, settings_from
from metro_assets.errors import EXIT_FAILED, EXIT_OK


@app.command("import", help=(
    "Import assets you already have: license-gated SMPL/MANO body models you downloaded yourself, "
    "and everything an old METRO or MeshGraphormer checkout holds.\n\n"
    "PATH may be an official archive (mpips_smplify_public_v2.zip, SMPL_python_v.1.0.0.zip, mano_v1_2.zip), "
    "a loose file, or a directory (an old checkout or its parent, a Downloads folder), searched recursively. "
    "Body models are loaded without chumpy and without running code, checked against the SMPL/MANO layout and "
    "identified by their contents (gender, hand side). Checkpoints, HRNet weights and configs, support data and "
    "prediction zips are identified by their METRO path, file name or sha256; files with a pinned sha256 must match "
    "it, the others must pass the structural check (0-byte leftovers and HTML error pages are skipped with a note) "
    "and, for checkpoints, the deep check when torch is installed (a body checkpoint saved under the hand name is "
    "skipped); they are then recorded in metro-assets.lock.\n\n"
    "Files are hard-linked into the root where the filesystem allows it, else copied (--copy always copies); "
    "body models are always written as new files. Your files are never moved or changed. Running it again is "
    "harmless.\n\n"
    "--clean puts a chumpy-free copy at the METRO path (the lockfile records its sha256 and the official "
    "file's original_sha256; the official bytes are kept in .metro-assets/originals/).\n\n"
    "Exit codes: 0 something was imported or is already present; 1 nothing usable was found; "
    "2 usage or manifest error."))
@guarded
def import_cmd(
    paths: Annotated[List[Path], typer.Argument(metavar="PATH", help="Archives, files or directories.", show_default=False)],
    root: RootOpt = None,
    manifest: ManifestOpt = None,
    clean: Annotated[bool, typer.Option("--clean", help="Place chumpy-free copies (keep the official bytes in the store).")] = False,
    copy: Annotated[bool, typer.Option("--copy", help="Copy checkpoints and other files instead of hard-linking them.")] = False,
    no_deep: Annotated[bool, typer.Option("--no-deep", help="Skip the checkpoint deep check (on by default when torch is installed).")] = False,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    from metro_assets.importer import import_paths
    from metro_assets.manifest import load_catalog
    from metro_assets.store import Store

    settings = settings_from(root, manifest)
    catalog = load_catalog(settings.manifests)
    result = import_paths(paths, Store(settings.root), catalog, clean=clean, deep=False if no_deep else None,
                          link=not copy)
    code = EXIT_OK if result.ok else EXIT_FAILED
    if json_out:
        console.print_json({**result.to_json(), "exit_code": code})
        raise typer.Exit(code)
    for i in result.imported:
        how = ", written clean" if i.clean else ("" if i.matched == "content" else f", {i.how}")
        console.out(f"imported  {i.asset_id}  {i.path}  <- {i.source}  [{i.model}{how}]"
                    + (f"  ({i.note})" if i.note else ""))
    for p in result.already_present:
        console.out(f"present   {p.asset_id}  {p.path}  <- {p.source}" + (f"  ({p.note})" if p.note else ""))
    if not quiet:
        for s in result.skipped:
            console.err(f"skipped   {s.source}: {s.reason}")
    console.out(f"{len(result.imported)} imported, {len(result.already_present)} already present, "
                f"{len(result.skipped)} skipped")
    if not result.ok:
        console.err("error: nothing METRO uses was found in " + ", ".join(str(p) for p in paths)
                    + ". Next: metro-assets fetch bodymodels   # prints where to download the body models")
    raise typer.Exit(code)


@app.command("export", help=(
    "Export the imported body models in another tool's layout. FORMAT: smplx.\n\n"
    "smplx: writes DIR/smpl/SMPL_{NEUTRAL,FEMALE,MALE}.pkl and DIR/mano/MANO_RIGHT.pkl, chumpy-free "
    "(clean files are hard-linked, or copied with --copy), so smplx.create(DIR, model_type='smpl'|'mano') works.\n\n"
    + EXIT_CODES_HELP))
@guarded
def export_cmd(
    fmt: Annotated[str, typer.Argument(metavar="FORMAT", help="Target layout: smplx.", show_default=False)],
    directory: Annotated[Path, typer.Argument(metavar="DIR", help="Output directory.", show_default=False)],
    root: RootOpt = None,
    manifest: ManifestOpt = None,
    copy: Annotated[bool, typer.Option("--copy", help="Copy clean files instead of hard-linking them.")] = False,
    json_out: JsonOpt = False,
) -> None:
    from metro_assets.errors import UsageError
    from metro_assets.export import export_smplx
    from metro_assets.manifest import load_catalog
    from metro_assets.store import Store

    if fmt != "smplx":
        raise UsageError(f"Unknown export format {fmt!r}", expected="smplx", got=fmt,
                         next_command=f"metro-assets export smplx {directory}")
    settings = settings_from(root, manifest)
    result = export_smplx(Store(settings.root), load_catalog(settings.manifests), directory, link=not copy)
    code = EXIT_OK if result.ok else EXIT_FAILED
    if json_out:
        console.print_json({**result.to_json(), "exit_code": code})
        raise typer.Exit(code)
    for e in result.exported:
        console.out(f"{e.how:8}  {e.asset_id}  {e.path}")
    for aid, reason in result.missing:
        console.err(f"missing   {aid}: {reason}")
    if not result.ok:
        console.err("error: nothing to export. Next: metro-assets import ~/Downloads")
    raise typer.Exit(code)
