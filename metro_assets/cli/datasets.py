"""``metro-assets datasets ...``: dataset-only tools (reindex, verify)."""
from __future__ import annotations

from pathlib import PurePosixPath
from typing import List, Optional

import typer
from typing import Annotated

from metro_assets import console
from metro_assets.cli import app
from metro_assets.cli.common import EXIT_CODES_HELP, JsonOpt, ManifestOpt, QuietOpt, RootOpt, guarded, settings_from
from metro_assets.errors import EXIT_FAILED, EXIT_OK

datasets_app = typer.Typer(
    name="datasets", no_args_is_help=True, rich_markup_mode=None,
    help="Dataset tools: regenerate missing .lineidx files, verify TSV content row by row.\n\n"
         "Fetch datasets with `metro-assets fetch datasets` (all eight) or `metro-assets fetch <dataset-id>`.")
app.add_typer(datasets_app, name="datasets")

NameArg = Annotated[str, typer.Argument(help="Dataset id (e.g. freihand, tax-h36m-coco40k-muco-up-mpii) or its folder name under datasets/.",
                                        show_default=False)]


def _dataset(settings, name: str):
    from metro_assets.errors import SelectionError
    from metro_assets.manifest import load_catalog

    catalog = load_catalog(settings.manifests)
    ds = [a for a in catalog.assets if a.kind == "dataset"]
    for a in ds:
        if name in (a.id, PurePosixPath(a.path).name) or name.lower() == a.id:
            return a
    raise SelectionError(f"No dataset named {name!r}", expected=f"one of {', '.join(a.id for a in ds)}",
                         next_command="metro-assets list datasets")


@datasets_app.command("reindex", help=(
    "Regenerate missing .lineidx files of a dataset from its TSVs (one row offset per line), and say which.\n\n"
    "METRO cannot read a TSV without its .lineidx; this writes it atomically next to the TSV and updates the "
    "extraction record. --all rewrites every .lineidx, also present ones.\n\n" + EXIT_CODES_HELP))
@guarded
def reindex_cmd(name: NameArg, root: RootOpt = None, manifest: ManifestOpt = None,
                all_files: Annotated[bool, typer.Option("--all", help="Rewrite every .lineidx, not only missing ones.")] = False,
                json_out: JsonOpt = False) -> None:
    from metro_assets.datasets import reindex_dataset
    from metro_assets.store import Store

    settings = settings_from(root, manifest)
    asset = _dataset(settings, name)
    r = reindex_dataset(asset, Store(settings.root), all_files=all_files)
    if json_out:
        console.print_json({"ok": True, **r.to_json()})
        return
    for rel, rows in r.regenerated:
        console.out(f"regenerated {asset.path}/{rel} ({rows} rows)")
    if not r.regenerated:
        console.out(f"{asset.id}: every .lineidx is present ({len(r.already_ok)} files); nothing regenerated")


@datasets_app.command("verify", help=(
    "Verify datasets: every extracted file against the extraction record (fast: stamps), then their TSV content.\n\n"
    "Content checks: yaml references, .lineidx offsets are row starts, img/hw/label row counts and keys agree, "
    "linelists in range, labels are strict JSON with body/hand shapes, images are base64 JPEG matching the hw size. "
    "Findings name the file and the 0-based row.\n\n" + EXIT_CODES_HELP))
@guarded
def verify_cmd(names: Annotated[Optional[List[str]], typer.Argument(help="Dataset ids or folder names. Default: every dataset present.", show_default=False)] = None,
               root: RootOpt = None, manifest: ManifestOpt = None,
               sample: Annotated[Optional[int], typer.Option("--sample", min=1, help="Check N sampled rows per file group instead of every row.", show_default=False)] = None,
               shallow: Annotated[bool, typer.Option("--shallow", help="Only sizes and hashes, no TSV content checks.")] = False,
               full: Annotated[bool, typer.Option("--full", help="Re-hash every file even when its stamp is fresh.")] = False,
               json_out: JsonOpt = False, quiet: QuietOpt = False) -> None:
    from metro_assets.datasets import verify_dataset
    from metro_assets.manifest import load_catalog
    from metro_assets.store import Store

    settings = settings_from(root, manifest)
    store = Store(settings.root)
    if names:
        assets = [_dataset(settings, n) for n in names]
    else:
        assets = [a for a in load_catalog(settings.manifests).assets
                  if a.kind == "dataset" and a.dest(settings.root).is_dir()]
    results = [verify_dataset(a, store, full=full, deep=not shallow, sample=sample) for a in assets]
    bad = any(r.status != "ok" for r in results)
    if json_out:
        console.print_json({"ok": not bad, "datasets": [r.to_json() for r in results]})
    else:
        if not results:
            console.out("no dataset present under " + str(settings.root))
        for r in results:
            console.out(f"{r.id}: {r.status} ({r.detail})")
            if not quiet:
                for f in r.findings:
                    console.out(f"  {f.severity}: {f.describe()}")
            if r.fix:
                console.out(f"  next: {r.fix}")
    raise typer.Exit(EXIT_FAILED if bad else EXIT_OK)
