"""Shared pytest fixtures.  Servers live in tests/servers.py (import it for helpers)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from servers import FaultServer, NginxServer, skip_without_nginx  # noqa: E402


@pytest.fixture
def nginx(tmp_path):
    """A private nginx over ``tmp_path/'www'``; ``nginx.put(name, data)`` returns a URL.

    Locations: ``/`` plain, ``/throttled/`` (2m per connection), ``/norange/`` (Range ignored).
    """
    skip_without_nginx()
    with NginxServer(tmp_path / "www", throttle="2m") as srv:
        yield srv


@pytest.fixture
def fault_server():
    """An in-process fault server; ``fault_server.add(path, body, **Route knobs)`` returns a URL."""
    with FaultServer() as srv:
        yield srv
