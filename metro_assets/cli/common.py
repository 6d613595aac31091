"""Options and error handling shared by every command module."""
from __future__ import annotations

import functools
from pathlib import Path
from typing import List, Optional

import typer
from typing import Annotated

from metro_assets import console
from metro_assets.errors import EXIT_USAGE, MetroAssetsError

RootOpt = Annotated[Optional[Path], typer.Option(
    "--root", help="Root of the METRO tree. Default: $METRO_ASSETS_ROOT, else the current directory.",
    show_default=False)]
ManifestOpt = Annotated[Optional[List[Path]], typer.Option(
    "--manifest", help="Extra manifest YAML that adds or overrides assets (repeatable).", show_default=False)]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one machine-readable JSON result on stdout.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress and no per-asset lines; errors still go to stderr.")]

EXIT_CODES_HELP = (
    "Exit codes: 0 all requested assets ok; 1 something missing, corrupt or failed; "
    "2 usage or manifest error; 3 only manual (license-gated) actions remain."
)


def guarded(fn):
    """Turn our errors into one paragraph (or one JSON object) and the right exit code."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except MetroAssetsError as exc:
            if kwargs.get("json_out"):
                console.print_json({"ok": False, "exit_code": exc.exit_code, **exc.to_json()})
            else:
                console.err(f"error: {exc.paragraph()}")
            raise typer.Exit(exc.exit_code)
        except KeyboardInterrupt:
            console.err("interrupted: partial downloads are kept and resume on the next run")
            raise typer.Exit(130)

    return wrapper


def settings_from(root: Optional[Path], manifest: Optional[List[Path]] = None, **kw):
    from metro_assets.settings import resolve

    return resolve(root=root, manifests=manifest or (), **kw)


def usage_exit(message: str) -> None:
    console.err(f"error: {message}")
    raise typer.Exit(EXIT_USAGE)
