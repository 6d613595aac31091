"""A small static file server for 127.0.0.1 with what a download mirror needs:
``Range`` (one range per request), ``If-Range``, ``ETag``, ``Last-Modified``,
HEAD, keep-alive, and ``sendfile`` for speed.  Used by ``metro-assets demo``;
it is not meant to face a network (it binds loopback only).
"""
from __future__ import annotations

import email.utils
import os
import posixpath
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Optional, Tuple
from urllib.parse import unquote, urlsplit

HOST = "127.0.0.1"


def parse_range(value: str, total: int) -> Optional[Tuple[int, int]]:
    """``bytes=a-b`` / ``bytes=a-`` / ``bytes=-n`` -> [start, end) or None when unsatisfiable.
    Several ranges are not supported: callers answer with the whole file instead."""
    a, _, b = value[len("bytes="):].strip().partition("-")
    try:
        if a == "":
            n = int(b)
            if n <= 0:
                return None
            return max(0, total - n), total
        start = int(a)
        end = min(total, int(b) + 1) if b else total
    except ValueError:
        return None
    if start >= total or start >= end:
        return None
    return start, end


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "_Server"
    server_version = "metro-assets-demo"

    def log_message(self, fmt, *args) -> None:
        if self.server.log is not None:
            self.server.log("%s %s" % (self.address_string(), fmt % args))

    def do_HEAD(self) -> None:
        self._serve(head=True)

    def do_GET(self) -> None:
        self._serve(head=False)

    def _error(self, status: int, text: str, head: bool, extra: Optional[dict] = None) -> None:
        body = (text + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _path(self) -> Optional[Path]:
        rel = posixpath.normpath(unquote(urlsplit(self.path).path))
        parts = [p for p in rel.split("/") if p not in ("", ".")]
        if any(p == ".." for p in parts):
            return None
        p = self.server.docroot.joinpath(*parts)
        return p if p.is_file() else None

    def _serve(self, head: bool) -> None:
        path = self._path()
        if path is None:
            self._error(404, "not found", head)
            return
        try:
            f = open(path, "rb")
        except OSError:
            self._error(404, "not found", head)
            return
        with f:
            st = os.fstat(f.fileno())
            total = st.st_size
            etag = '"%x-%x"' % (st.st_mtime_ns, total)
            last_modified = email.utils.formatdate(st.st_mtime, usegmt=True)
            start, end, status = 0, total, 200
            rng = self.headers.get("Range")
            if rng and rng.startswith("bytes=") and "," not in rng:
                if_range = self.headers.get("If-Range")
                if if_range is None or if_range in (etag, last_modified):
                    parsed = parse_range(rng, total)
                    if parsed is None:
                        self._error(416, "range not satisfiable", head, {"Content-Range": f"bytes */{total}"})
                        return
                    start, end = parsed
                    status = 206
            self.send_response(status)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(end - start))
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("ETag", etag)
            self.send_header("Last-Modified", last_modified)
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{end - 1}/{total}")
            self.end_headers()
            if head or end == start:
                return
            self.wfile.flush()
            try:
                self.connection.sendfile(f, offset=start, count=end - start)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    docroot: Path
    log = None

    def handle_error(self, request, client_address) -> None:
        # A client that hangs up mid-body (a cancelled or resumed download) is normal for a mirror.
        import sys

        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError)):
            return
        super().handle_error(request, client_address)


class DemoServer:
    """``with DemoServer(folder) as srv: srv.url`` -> ``http://127.0.0.1:<port>``."""

    def __init__(self, docroot: Path, *, log=None) -> None:
        self.docroot = Path(docroot).resolve()
        self.log = log
        self.url = ""
        self._srv: Optional[_Server] = None
        self._thread: Optional[threading.Thread] = None

    def start(self) -> "DemoServer":
        srv = _Server((HOST, 0), _Handler)
        srv.docroot = self.docroot
        srv.log = self.log
        self._srv = srv
        self.url = f"http://{HOST}:{srv.server_address[1]}"
        self._thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="metro-demo-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._srv is not None:
            self._srv.shutdown()
            self._srv.server_close()
            self._srv = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> "DemoServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
