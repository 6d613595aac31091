"""Progress: plain periodic lines off a terminal, nothing when quiet, never markup from user data."""
import io
import sys
import time

from metro_assets import console


def test_plain_progress_lines_and_eta(capsys):
    console.reset()
    with console.Progress(mode="plain", interval=0.05) as p:
        p.add_expected(1000)
        p.start("a", "models/[bold]x[/bold].bin", 1000)
        p.advance("a", 400)
        time.sleep(0.2)
        p.set_name("a", "member 2/3: foo.tsv")
        p.advance("a", 100)
        p.finish("a")
    err = capsys.readouterr().err
    assert "40.0%" in err and "50.0%" in err and "ETA" in err
    assert "models/[bold]x[/bold].bin" in err      # user data is printed literally, never as markup
    console.reset()


def test_quiet_progress_prints_nothing(capsys):
    console.reset()
    with console.Progress(mode="quiet") as p:
        p.start("a", "x", 10)
        p.advance("a", 10)
    assert capsys.readouterr().err == ""
    console.reset()


def test_user_text_is_not_markup(capsys):
    console.reset()
    console.err("path [red]literal[/red]")
    assert "[red]literal[/red]" in capsys.readouterr().err
    console.reset()
