"""Public CLI contract: command names, flags, exit codes in --help; light start-up."""
from __future__ import annotations

import subprocess
import sys

import pytest
from typer.testing import CliRunner

from metro_assets.cli import app

runner = CliRunner()

CONTRACT = {
    "fetch": ["--root", "--mirror", "--manifest", "--dry-run", "--offline", "--jobs", "--connections", "--json",
              "--quiet", "--keep-archive", "--force"],
    "verify": ["--root", "--manifest", "--full", "--deep", "--sample", "--json", "--quiet"],
    "list": ["--root", "--manifest", "--json"],
    "doctor": ["--root", "--manifest", "--online", "--json"],
    "demo": ["--root", "--keep"],
    "run-check": ["--root", "--device", "--checkpoint", "--image", "--save-outputs", "--save-mesh", "--render", "--json"],
    "import": ["--root", "--manifest", "--clean", "--json"],
    "export": ["--root", "--manifest", "--json"],
}
EXIT_CODE_HELP = {"fetch", "verify", "list", "doctor", "run-check", "import"}


def test_top_level_help_lists_commands_and_exit_codes():
    r = runner.invoke(app, ["--help"], env={"COLUMNS": "200"})
    assert r.exit_code == 0
    for cmd in ("fetch", "verify", "list", "doctor", "demo", "run-check", "import", "export", "datasets"):
        assert cmd in r.stdout
    for text in ("0 all requested assets ok", "1 something missing", "2 usage or manifest error", "3 only manual",
                 "METRO_ASSETS_ROOT", "METRO_ASSETS_MIRROR"):
        assert text in r.stdout, text


@pytest.mark.parametrize("cmd", sorted(CONTRACT))
def test_command_help_documents_flags(cmd):
    r = runner.invoke(app, [cmd, "--help"], env={"COLUMNS": "200"})
    assert r.exit_code == 0
    for flag in CONTRACT[cmd]:
        assert flag in r.stdout, f"{cmd} {flag}"
    if cmd in EXIT_CODE_HELP:
        assert "xit code" in r.stdout, cmd


@pytest.mark.parametrize("argv", [["--help"], ["fetch", "--help"], ["verify", "--help"], ["list", "--help"],
                                  ["run-check", "--help"], ["import", "--help"], ["doctor", "--help"], ["datasets", "--help"]])
def test_cli_never_imports_torch(argv):
    code = ("import sys, runpy; sys.argv=['metro-assets', *%r]\n"
            "try:\n    runpy.run_module('metro_assets', run_name='__main__')\n"
            "except SystemExit:\n    pass\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n" % (argv,))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_verify_on_empty_root_does_not_import_torch(tmp_path):
    code = ("import sys, runpy; sys.argv=['metro-assets','verify','--root',%r,'--json']\n"
            "try:\n    runpy.run_module('metro_assets', run_name='__main__')\n"
            "except SystemExit:\n    pass\n"
            "assert 'torch' not in sys.modules\n" % str(tmp_path))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
