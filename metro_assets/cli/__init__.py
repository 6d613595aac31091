"""The ``metro-assets`` command line: a thin layer over the library API.

Each command lives in its own module under metro_assets/cli/ and registers
itself on ``app``.  No command module imports torch at import time.
"""
from __future__ import annotations

import typer

from metro_assets import __version__
from metro_assets.cli.common import EXIT_CODES_HELP

app = typer.Typer(
    name="metro-assets",
    help=(
        "Fetch, checksum, lay out, verify and load-check every asset METRO needs "
        "(checkpoints, HRNet weights, SMPL/MANO, support data, datasets).\n\n"
        "Environment: METRO_ASSETS_ROOT (default --root), METRO_ASSETS_MIRROR (mirror bases, "
        "space or comma separated), METRO_ASSETS_OFFLINE=1, METRO_ASSETS_JOBS, METRO_ASSETS_CONNECTIONS, NO_COLOR.\n\n"
        + EXIT_CODES_HELP
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"metro-assets {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                        help="Print the version and exit.")) -> None:
    """metro-assets"""


# Command modules register themselves on import (order = order in --help).
from metro_assets.cli import assets as _assets  # noqa: E402,F401  fetch, verify, list
from metro_assets.cli import importing as _importing  # noqa: E402,F401  import, export
from metro_assets.cli import run_check as _run_check  # noqa: E402,F401  run-check
from metro_assets.cli import doctor as _doctor  # noqa: E402,F401  doctor
from metro_assets.cli import demo as _demo  # noqa: E402,F401  demo
from metro_assets.cli import datasets as _datasets  # noqa: E402,F401  datasets reindex/verify

def main() -> None:
    app()
