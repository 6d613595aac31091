"""Local test servers: a private real nginx and an in-process fault server.

Both listen on 127.0.0.1 only and expose ``.url`` (base URL, no trailing slash).

* :class:`NginxServer` serves a docroot at ``/``, at ``/throttled/`` (``limit_rate``
  per connection) and at ``/norange/`` (``max_ranges 0``: Range is ignored, 200 full
  body).  Range, If-Range, ETag and Last-Modified are nginx's own.
* :class:`FaultServer` serves per-path :class:`Route` s and makes the faults nginx
  cannot: cuts, 429 + Retry-After, Azure's 409, HTML pages, changing ETags, stalls.
  It records every request so tests can assert resume behaviour.

Others import this module: keep its public names stable.
"""
from __future__ import annotations

import email.utils
import hashlib
import os
import random
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

from metro_assets.demo.server import parse_range

HOST = "127.0.0.1"

AZURE_409_BODY = (
    b'<?xml version="1.0" encoding="utf-8"?><Error><Code>PublicAccessNotPermitted</Code>'
    b"<Message>Public access is not permitted on this storage account.\n"
    b"RequestId:00000000-0000-0000-0000-000000000000\nTime:2025-03-01T00:00:00.0000000Z</Message></Error>"
)

HTML_PAGE = (
    b"<!DOCTYPE html>\n<html><head><title>Sign in</title></head><body>"
    + b"<p>Please sign in to download this file.</p>" * 200
    + b"</body></html>\n"
)


def payload(size: int, seed: int = 0) -> bytes:
    """Deterministic pseudo-random bytes (fast: one C call)."""
    return random.Random(seed).randbytes(size)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def nginx_binary() -> Optional[str]:
    return shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.path.exists(p)), None)


def skip_without_nginx() -> None:
    """Skip the calling test with a clear message when nginx is not installed."""
    if nginx_binary() is None:
        import pytest

        pytest.skip("nginx binary not found (install nginx; CI installs it via .ci/run)")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------- nginx


class NginxServer:
    """A private nginx over ``docroot`` on 127.0.0.1:<free port>.

    ``with NginxServer(docroot, throttle="2m") as srv: srv.url + "/file.bin"``
    """

    def __init__(self, docroot: Path, *, throttle: str = "2m", workers: int = 1, tls: bool = False) -> None:
        self.tls = tls
        self.ca_file: Optional[Path] = None    # with tls=True: the self-signed certificate to trust
        self.docroot = Path(docroot).absolute()
        self.throttle = throttle
        self.workers = workers
        self.port = 0
        self.url = ""
        self.proc: Optional[subprocess.Popen] = None
        self._prefix: Optional[Path] = None

    # -- helpers for tests
    def put(self, name: str, data: bytes) -> str:
        """Write ``data`` under the docroot and return its URL."""
        p = self.docroot / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        os.chmod(p, 0o644)
        return f"{self.url}/{name}"

    @property
    def throttled_url(self) -> str:
        return f"{self.url}/throttled"

    @property
    def norange_url(self) -> str:
        return f"{self.url}/norange"

    def access_log(self) -> List[str]:
        assert self._prefix is not None
        try:
            return (self._prefix / "access.log").read_text().splitlines()
        except FileNotFoundError:
            return []

    # -- lifecycle
    def _conf(self) -> str:
        assert self._prefix is not None
        pre = self._prefix
        user = "user root;" if os.geteuid() == 0 else ""
        root = str(self.docroot)
        return f"""
{user}
worker_processes {self.workers};
pid {pre}/nginx.pid;
error_log {pre}/error.log warn;
events {{ worker_connections 256; }}
http {{
    types {{ }}
    default_type application/octet-stream;
    sendfile on;
    keepalive_requests 100000;
    keepalive_timeout 30s;
    log_format t '$request $status $body_bytes_sent "$http_range" "$http_if_range"';
    access_log {pre}/access.log t;
    client_body_temp_path {pre}/tmp/body;
    proxy_temp_path {pre}/tmp/proxy;
    fastcgi_temp_path {pre}/tmp/fastcgi;
    uwsgi_temp_path {pre}/tmp/uwsgi;
    scgi_temp_path {pre}/tmp/scgi;
    server {{
        listen {HOST}:{self.port}{" ssl" if self.tls else ""};
        server_name localhost;
        {f"ssl_certificate {pre}/cert.pem; ssl_certificate_key {pre}/key.pem;" if self.tls else ""}
        location / {{ root {root}; }}
        location /throttled/ {{ alias {root}/; limit_rate {self.throttle}; sendfile_max_chunk 128k; }}
        location /norange/ {{ alias {root}/; max_ranges 0; }}
    }}
}}
"""

    def start(self) -> "NginxServer":
        binary = nginx_binary()
        if binary is None:
            raise RuntimeError("nginx binary not found")
        self.docroot.mkdir(parents=True, exist_ok=True)
        if os.geteuid() != 0:
            os.chmod(self.docroot, 0o755)
        self._prefix = Path(tempfile.mkdtemp(prefix="metro-nginx-"))
        (self._prefix / "tmp").mkdir()
        if self.tls:
            subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                            "-keyout", str(self._prefix / "key.pem"), "-out", str(self._prefix / "cert.pem"),
                            "-subj", f"/CN={HOST}", "-addext", f"subjectAltName=IP:{HOST}"],
                           check=True, capture_output=True)
            self.ca_file = self._prefix / "cert.pem"
        last_err = ""
        for _ in range(5):  # a free port can be taken between probe and bind: retry
            self.port = free_port()
            conf = self._prefix / "nginx.conf"
            conf.write_text(self._conf())
            errlog = open(self._prefix / "stderr.log", "wb")
            self.proc = subprocess.Popen(
                [binary, "-p", str(self._prefix), "-c", str(conf), "-e", str(self._prefix / "error.log"),
                 "-g", "daemon off;"],
                stdout=subprocess.DEVNULL, stderr=errlog, stdin=subprocess.DEVNULL,
            )
            errlog.close()
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    break
                try:
                    with socket.create_connection((HOST, self.port), timeout=0.2):
                        self.url = f"{'https' if self.tls else 'http'}://{HOST}:{self.port}"
                        return self
                except OSError:
                    time.sleep(0.02)
            last_err = (self._prefix / "stderr.log").read_text(errors="replace")
            try:
                last_err += (self._prefix / "error.log").read_text(errors="replace")
            except FileNotFoundError:
                pass
            self._kill()
        raise RuntimeError(f"nginx did not start: {last_err[-2000:]}")

    def _kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # TERM to the master ends its workers too
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.proc = None

    def stop(self) -> None:
        self._kill()
        if self._prefix is not None:
            shutil.rmtree(self._prefix, ignore_errors=True)
            self._prefix = None

    def __enter__(self) -> "NginxServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


# --------------------------------------------------------------------------- fault server


@dataclass
class Route:
    """How the fault server answers one path.  Every knob is independent.

    body            bytes served (with Range/If-Range/ETag unless ``ignore_range``)
    status          fixed status for every request (e.g. 404, 403, 410, 409); body is ``error_body``
    fail_first      answer the first K requests with ``fail_status`` (+ ``retry_after`` header)
    cut_after       drop the connection after N body bytes of each response...
    cut_times       ...for the first M responses only (None = every response)
    etags           per-request ETag sequence (the last one sticks): "ETag changed between attempts"
    ignore_range    always 200 with the full body
    stall_after     send this many body bytes, then stall for ``stall_seconds`` (first ``stall_times`` responses)
    rate            bytes/s cap per response (None = unlimited)
    content_type    Content-Type header
    send_length     send Content-Length (else close-delimited body)
    """

    body: bytes = b""
    status: Optional[int] = None
    error_body: bytes = b""
    fail_first: int = 0
    fail_status: int = 429
    retry_after: Optional[str] = None
    cut_after: Optional[int] = None
    cut_times: Optional[int] = None
    etags: Optional[Sequence[str]] = None
    ignore_range: bool = False
    stall_after: Optional[int] = None
    stall_seconds: float = 30.0
    stall_times: Optional[int] = None
    rate: Optional[int] = None
    content_type: str = "application/octet-stream"
    send_length: bool = True
    last_modified: str = "Sat, 01 Mar 2025 00:00:00 GMT"
    # counters (maintained by the server)
    hits: int = 0
    cuts: int = 0
    stalls: int = 0


@dataclass(frozen=True)
class RequestRecord:
    method: str
    path: str
    range: Optional[str]
    if_range: Optional[str]
    status: int
    time: float


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "_Server"

    def log_message(self, fmt, *args) -> None:  # keep test output clean
        pass

    def do_HEAD(self) -> None:
        self._serve(head=True)

    def do_GET(self) -> None:
        self._serve(head=False)

    def _record(self, status: int) -> None:
        self.server.owner._record(RequestRecord(
            self.command, self.path.split("?", 1)[0], self.headers.get("Range"),
            self.headers.get("If-Range"), status, time.monotonic()))

    def _simple(self, status: int, body: bytes, headers: Optional[Dict[str, str]] = None,
                content_type: str = "text/plain", head: bool = False) -> None:
        self._record(status)
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _serve(self, head: bool) -> None:
        owner = self.server.owner
        path = self.path.split("?", 1)[0]
        with owner._lock:
            route = owner.routes.get(path)
            if route is not None:
                route.hits += 1
                hit = route.hits
        if route is None:
            self._simple(404, b"not found\n", head=head)
            return
        if route.status is not None:
            ctype = "application/xml" if route.error_body.startswith(b"<?xml") else "text/plain"
            self._simple(route.status, route.error_body, content_type=ctype, head=head)
            return
        if hit <= route.fail_first:
            hdrs = {"Retry-After": route.retry_after} if route.retry_after is not None else {}
            self._simple(route.fail_status, b"slow down\n", hdrs, head=head)
            return

        body = route.body
        total = len(body)
        etag = None
        if route.etags:
            etag = route.etags[min(hit - 1 - route.fail_first, len(route.etags) - 1)]
        else:
            etag = '"%s"' % hashlib.md5(body).hexdigest()[:16]
        start, end = 0, total  # [start, end)
        status = 200
        rng = self.headers.get("Range")
        if rng and not route.ignore_range:
            if_range = self.headers.get("If-Range")
            if if_range is None or if_range == etag or if_range == route.last_modified:
                parsed = _parse_range(rng, total)
                if parsed is None:
                    self._simple(416, b"", {"Content-Range": f"bytes */{total}"}, head=head)
                    return
                start, end = parsed
                status = 206
        self._record(status)
        self.send_response(status)
        self.send_header("Content-Type", route.content_type)
        self.send_header("ETag", etag)
        self.send_header("Last-Modified", route.last_modified)
        if not route.ignore_range:
            self.send_header("Accept-Ranges", "bytes")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{total}")
        if route.send_length:
            self.send_header("Content-Length", str(end - start))
        else:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if head:
            return

        with owner._lock:
            cut = route.cut_after is not None and (route.cut_times is None or route.cuts < route.cut_times)
            if cut:
                route.cuts += 1
            stall = route.stall_after is not None and (route.stall_times is None or route.stalls < route.stall_times)
            if stall:
                route.stalls += 1
        limit = end - start
        if cut:
            limit = min(limit, route.cut_after)  # type: ignore[arg-type]
        view = memoryview(body)[start:start + limit]
        sent = 0
        chunk = 64 * 1024
        t0 = time.monotonic()
        try:
            while sent < len(view):
                if stall and sent >= route.stall_after:  # type: ignore[operator]
                    if owner._stop.wait(route.stall_seconds):
                        break
                    stall = False
                n = chunk
                if stall:
                    n = min(n, route.stall_after - sent)  # type: ignore[operator]
                self.wfile.write(view[sent:sent + n])
                sent += n
                if route.rate:
                    ahead = sent / route.rate - (time.monotonic() - t0)
                    if ahead > 0 and owner._stop.wait(ahead):
                        break
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
            return
        if cut and limit < end - start:
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def _parse_range(value: str, total: int):
    """The demo server's parser, but stricter: a header it cannot serve (not ``bytes=``, several ranges)
    is unsatisfiable here (416) where the demo server ignores it (200), and so is any range of an
    empty body (the demo server answers ``bytes=-n`` there with an empty 206)."""
    if not value.startswith("bytes=") or "," in value or total == 0:
        return None
    return parse_range(value, total)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    owner: "FaultServer"


class FaultServer:
    """In-process threaded HTTP/1.1 server for faults.

    ``with FaultServer() as fs: url = fs.add("/a.bin", data, cut_after=1000, cut_times=1)``
    """

    def __init__(self) -> None:
        self.routes: Dict[str, Route] = {}
        self.requests: List[RequestRecord] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._srv: Optional[_Server] = None
        self._thread: Optional[threading.Thread] = None
        self.url = ""

    def add(self, path: str, body: bytes = b"", **opts) -> str:
        """Add (or replace) a route; returns its full URL."""
        if not path.startswith("/"):
            path = "/" + path
        with self._lock:
            self.routes[path] = Route(body=body, **opts)
        return self.url + path

    def route(self, path: str) -> Route:
        return self.routes[path if path.startswith("/") else "/" + path]

    def _record(self, rec: RequestRecord) -> None:
        with self._lock:
            self.requests.append(rec)

    def requests_for(self, path: str) -> List[RequestRecord]:
        if not path.startswith("/"):
            path = "/" + path
        with self._lock:
            return [r for r in self.requests if r.path == path]

    def start(self) -> "FaultServer":
        self._srv = _Server((HOST, 0), _Handler)
        self._srv.owner = self
        self.url = f"http://{HOST}:{self._srv.server_address[1]}"
        self._thread = threading.Thread(target=self._srv.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fault-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._srv is not None:
            self._srv.shutdown()
            self._srv.server_close()
            self._srv = None
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> "FaultServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def http_date(seconds_from_now: float) -> str:
    """An HTTP-date (RFC 7231) for Retry-After tests."""
    return email.utils.formatdate(time.time() + seconds_from_now, usegmt=True)


PathLike = Union[str, Path]
