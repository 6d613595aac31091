"""The one place for terminal output.

Results go to stdout, diagnostics to stderr.  ``--json`` prints exactly one
JSON document on stdout.  ``NO_COLOR`` is honoured (by rich).  User data is
never interpreted as rich markup: pass it through :func:`esc` or as plain
text.  Progress is drawn only on a terminal; elsewhere it becomes periodic
plain lines; ``--quiet`` silences it.
"""
from __future__ import annotations

import json
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, Optional, Sequence

_out = None
_err = None


def _console(stderr: bool):
    global _out, _err
    from rich.console import Console  # imported lazily: keeps --help fast

    if stderr:
        if _err is None:
            _err = Console(stderr=True, highlight=False, soft_wrap=True)
        return _err
    if _out is None:
        _out = Console(highlight=False, soft_wrap=True)
        if not _out.is_terminal and "COLUMNS" not in os.environ:
            _out.width = 160  # files and pipes: wide tables instead of 80-column wrapping
    return _out


def reset() -> None:
    """Forget cached consoles (tests swap sys.stdout/sys.stderr)."""
    global _out, _err
    _out = _err = None


def esc(text: Any) -> str:
    from rich.markup import escape

    return escape(str(text))


def out(text: str = "", *, markup: bool = False) -> None:
    """A line of result on stdout."""
    _console(False).print(text, markup=markup)


def err(text: str = "", *, markup: bool = False) -> None:
    """A diagnostic line on stderr."""
    _console(True).print(text, markup=markup)


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")
    sys.stdout.flush()


def table(title: Optional[str], columns: Sequence[str], rows: Iterable[Sequence[Any]], *, styles: Optional[Dict[int, str]] = None) -> None:
    """A table of results on stdout; cells are plain text, never markup."""
    from rich.table import Table
    from rich.text import Text

    t = Table(title=title, show_lines=False, header_style="bold")
    for c in columns:
        t.add_column(c, overflow="fold")
    for row in rows:
        t.add_row(*[c if isinstance(c, Text) else Text(str(c)) for c in row])
    _console(False).print(t)


def styled(text: Any, style: str):
    from rich.text import Text

    return Text(str(text), style=style)


STATUS_STYLE = {
    "ok": "green", "present": "green", "downloaded": "green", "imported": "green",
    "missing": "yellow", "unverified": "yellow", "warn": "yellow", "resume": "cyan", "download": "cyan",
    "corrupt": "red", "failed": "red", "error": "red", "blocked": "red",
    "action-required": "magenta", "manual": "magenta",
}


def status_text(status: str):
    return styled(status, STATUS_STYLE.get(status, ""))


def human_bytes(n: Optional[int]) -> str:
    if n is None:
        return "?"
    f = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if f < 1024 or unit == "TiB":
            return f"{f:.0f} {unit}" if unit == "B" else f"{f:.1f} {unit}"
        f /= 1024
    return f"{n} B"


def _fmt_eta(seconds: float) -> str:
    s = int(seconds + 0.5)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


@dataclass
class _Item:
    name: str
    total: Optional[int]
    done: int = 0
    finished: bool = False
    started: float = field(default_factory=time.monotonic)


class Progress:
    """Thread-safe progress counters, drawn by a background thread.

    ``advance`` is a dict lookup and an integer add under no lock (the GIL
    makes the add safe enough for a display), so it never slows the I/O path.
    """

    def __init__(self, *, mode: str = "auto", interval: Optional[float] = None) -> None:
        if mode == "auto":
            mode = "rich" if sys.stderr.isatty() else "plain"
        self.mode = mode  # rich | plain | quiet
        self.interval = interval if interval is not None else (0.2 if mode == "rich" else 5.0)
        self.items: Dict[str, _Item] = {}
        self.total_expected: int = 0
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._live = None
        self._t0 = time.monotonic()

    # -- counters (called from workers)
    def add_expected(self, n: Optional[int]) -> None:
        if n:
            self.total_expected += n

    def start(self, key: str, name: str, total: Optional[int]) -> None:
        self.items[key] = _Item(name, total)

    def set_done(self, key: str, done: int) -> None:
        it = self.items.get(key)
        if it is not None:
            it.done = done

    def advance(self, key: str, n: int) -> None:
        it = self.items.get(key)
        if it is not None:
            it.done += n

    def set_name(self, key: str, name: str) -> None:
        """Rename an item (e.g. the member being extracted right now)."""
        it = self.items.get(key)
        if it is not None:
            it.name = name

    def eta(self) -> Optional[float]:
        done, total = self._totals()
        el = time.monotonic() - self._t0
        if not total or done <= 0 or done >= total or el <= 0:
            return None
        return (total - done) / (done / el)

    def finish(self, key: str) -> None:
        it = self.items.get(key)
        if it is not None:
            it.finished = True

    # -- drawing
    def __enter__(self) -> "Progress":
        if self.mode != "quiet":
            self._thread = threading.Thread(target=self._run, name="metro-assets-progress", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        if self.mode == "plain" and self.items and self._totals()[0]:
            self._plain_line()

    def _totals(self):
        done = sum(i.done for i in self.items.values())
        total = max(self.total_expected, sum(i.total or 0 for i in self.items.values()))
        return done, total

    def _plain_line(self) -> None:
        done, total = self._totals()
        el = max(time.monotonic() - self._t0, 1e-6)
        active = [i.name for i in self.items.values() if not i.finished]
        pct = f"{100.0 * done / total:5.1f}%" if total else "  ?  "
        msg = f"progress {pct} {human_bytes(done)}/{human_bytes(total)} at {human_bytes(int(done / el))}/s"
        eta = self.eta()
        if eta is not None:
            msg += f", ETA {_fmt_eta(eta)}"
        if active:
            msg += f"; active: {', '.join(active[:4])}" + (" ..." if len(active) > 4 else "")
        err(msg)

    def _run(self) -> None:
        if self.mode == "plain":
            while not self._stop.wait(self.interval):
                self._plain_line()
            return
        from rich.live import Live
        from rich.table import Table
        from rich.text import Text

        def render():
            g = Table.grid(padding=(0, 1))
            done, total = self._totals()
            el = max(time.monotonic() - self._t0, 1e-6)
            for it in list(self.items.values()):
                if it.finished:
                    continue
                frac = it.done / it.total if it.total else 0.0
                bar = "━" * int(24 * frac) + " " * (24 - int(24 * frac))
                g.add_row(Text(it.name[:48]), Text(bar, style="cyan"), Text(f"{human_bytes(it.done)}/{human_bytes(it.total)}"))
            frac = done / total if total else 0.0
            g.add_row(Text("total", style="bold"), Text("━" * int(24 * frac) + " " * (24 - int(24 * frac)), style="green"),
                      Text(f"{human_bytes(done)}/{human_bytes(total)}  {human_bytes(int(done / el))}/s"
                           + (f"  ETA {_fmt_eta(self.eta())}" if self.eta() is not None else "")))
            return g

        with Live(render(), console=_console(True), refresh_per_second=5, transient=True) as live:
            while not self._stop.wait(self.interval):
                live.update(render())
