"""The HTTP transfer engine against a real nginx (Range/ETag) and the fault server."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from metro_assets.errors import SourceDeadError, SourceError, StalledError, StructuralError, VerificationError
from metro_assets.settings import resolve
from metro_assets.transfer import ConnectionBudget, TransferResult, download
from servers import AZURE_409_BODY, HTML_PAGE, NginxServer, http_date, payload, sha256_hex, skip_without_nginx

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def settings(tmp_path):
    return resolve(root=tmp_path, env={}, retries=3, backoff_base=0.01, backoff_max=5.0,
                   stall_seconds=0.5, connect_timeout=5.0)


@pytest.fixture
def paths(tmp_path):
    dest = tmp_path / "out" / "model.bin"
    return dest.parent / ".model.bin.metro-part", dest.parent / ".model.bin.metro-part.json"


def fetch(url, paths, settings, **kw) -> TransferResult:
    part, state = paths
    return download(url, part, state, settings=settings, **kw)


def no_html(head: bytes) -> None:
    if head.lstrip()[:1] == b"<":
        raise StructuralError("got an HTML page instead of a binary file")


# ------------------------------------------------------------------ nginx


def test_plain_download_hashes_and_leaves_only_the_part(nginx, paths, settings):
    data = payload(3_000_000, seed=1)
    url = nginx.put("model.bin", data)
    res = fetch(url, paths, settings, expected_sha256=sha256_hex(data), expected_size=len(data))
    part, state = paths
    assert res.sha256 == sha256_hex(data) and res.size == len(data)
    assert res.etag and res.last_modified and res.resumed_bytes == 0 and res.connections == 1
    assert part.read_bytes() == data
    assert not state.exists()


def test_empty_and_tiny_files(nginx, paths, settings):
    for data in (b"", b"x", payload(5000, seed=9)):
        url = nginx.put("f.bin", data)
        res = fetch(url, paths, settings, sniff=lambda head: None)
        assert res.size == len(data) and res.sha256 == sha256_hex(data)
        assert paths[0].read_bytes() == data


def test_resume_after_interruption_uses_range_and_if_range(nginx, paths, settings):
    data = payload(3 << 20, seed=2)
    url = nginx.put("model.bin", data).replace(nginx.url, nginx.throttled_url)
    seen = [0]

    def boom(n):
        seen[0] += n
        if seen[0] >= 1 << 20:
            raise KeyboardInterrupt  # the user pressed Ctrl-C

    with pytest.raises(KeyboardInterrupt):
        fetch(url, paths, settings, progress=boom)
    part, state = paths
    saved = json.loads(state.read_text())
    assert saved["url"] == url and saved["etag"] and saved["segments"][0][2] >= 1 << 20

    res = fetch(url, paths, settings, expected_sha256=sha256_hex(data))
    assert res.resumed_bytes >= 1 << 20
    assert part.read_bytes() == data and not state.exists()
    tag = saved["etag"].strip('"')  # nginx logs the quotes as \x22
    resumed = [line for line in nginx.access_log() if "throttled" in line and tag in line]
    assert resumed and " 206 " in resumed[-1] and f'"bytes={saved["segments"][0][2]}-' in resumed[-1]


def test_segmented_download_is_byte_identical(nginx, paths, settings):
    data = payload(6 << 20, seed=3)
    url = nginx.put("big.bin", data)
    res = fetch(url, paths, settings, connections=4, expected_sha256=sha256_hex(data))
    assert res.connections == 4 and paths[0].read_bytes() == data
    ranges = [line for line in nginx.access_log() if "big.bin" in line and " 206 " in line]
    assert len(ranges) >= 4


def test_segmented_download_beats_a_per_connection_cap(nginx, paths, settings):
    data = payload(8 << 20, seed=4)  # 2 MiB/s per connection (after nginx's 1 s burst): ~3 s on one
    url = nginx.put("big.bin", data).replace(nginx.url, nginx.throttled_url)
    t0 = time.monotonic()
    res = fetch(url, paths, settings, connections=4, expected_sha256=sha256_hex(data))
    assert res.connections == 4 and paths[0].read_bytes() == data
    # one connection needs >= 3 s (6 MiB beyond the burst at 2 MiB/s); a generous bound, not a benchmark
    assert time.monotonic() - t0 < 2.6


def test_server_ignoring_range_restarts_cleanly_from_zero(nginx, paths, settings):
    data = payload(3 << 20, seed=5)
    nginx.put("model.bin", data)
    part, state = paths
    # A previous run left 1 MiB and its state; the URL now ignores Range (nginx max_ranges 0).
    url = nginx.norange_url + "/model.bin"
    part.parent.mkdir(parents=True)
    part.write_bytes(data[: 1 << 20])
    state.write_text(json.dumps({"version": 1, "url": url, "etag": '"old"', "last_modified": None,
                                 "total": len(data), "segments": [[0, len(data), 1 << 20]]}))
    res = fetch(url, paths, settings, expected_sha256=sha256_hex(data))
    assert res.resumed_bytes == 0 and part.read_bytes() == data


def test_budget_is_shared_by_parallel_downloads(nginx, tmp_path, settings):
    budget = ConnectionBudget(3)
    blobs = {f"f{i}.bin": payload(2 << 20, seed=10 + i) for i in range(4)}
    urls = {name: nginx.put(name, data) for name, data in blobs.items()}
    results, errors = {}, []

    def one(name):
        try:
            d = tmp_path / "dl" / name
            results[name] = download(urls[name], d.with_name("." + name + ".part"), d.with_name("." + name + ".json"),
                                     settings=settings, connections=4, budget=budget)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(n,)) for n in blobs]
    [t.start() for t in threads]
    [t.join(30) for t in threads]
    assert not errors and budget.free == 3
    for name, data in blobs.items():
        assert results[name].sha256 == sha256_hex(data)
        assert results[name].connections <= 3


def test_sigkill_mid_download_then_rerun_resumes(tmp_path, paths, settings):
    skip_without_nginx()
    data = payload(4 << 20, seed=6)
    part, state = paths
    with NginxServer(tmp_path / "www", throttle="512k") as srv:
        url = srv.put("model.bin", data).replace(srv.url, srv.throttled_url)
        code = (
            "import sys; from pathlib import Path; from metro_assets.settings import resolve;"
            "from metro_assets.transfer import download;"
            f"download({url!r}, Path({str(part)!r}), Path({str(state)!r}), settings=resolve(root=Path('.'), env={{}}),"
            " connections=2)"
        )
        env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        proc = subprocess.Popen([sys.executable, "-c", code], env=env, cwd=tmp_path)
        try:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                try:
                    st = json.loads(state.read_text())
                    if sum(s[2] for s in st["segments"]) >= 1 << 20:
                        break
                except (FileNotFoundError, ValueError, KeyError):
                    pass
                time.sleep(0.05)
            else:
                pytest.fail("the child never recorded progress")
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        assert proc.returncode == -signal.SIGKILL
        patient = resolve(root=tmp_path, env={}, backoff_base=0.01, stall_seconds=10)
        res = fetch(url, paths, patient, connections=4, expected_sha256=sha256_hex(data))
        assert res.resumed_bytes >= 1 << 20
        assert part.read_bytes() == data and not state.exists()


# ------------------------------------------------------------------ fault server


def test_connection_cut_repeatedly_still_completes(fault_server, paths, settings):
    data = payload(2 << 20, seed=7)
    url = fault_server.add("/m.bin", data, cut_after=300_000)  # every response dies after 300 kB
    res = fetch(url, paths, settings, expected_sha256=sha256_hex(data))
    assert paths[0].read_bytes() == data and res.sha256 == sha256_hex(data)
    reqs = fault_server.requests_for("/m.bin")
    assert len(reqs) >= 7 > settings.retries  # more cuts than retries: progress resets the count
    assert all(r.range and r.range.startswith("bytes=") for r in reqs)
    assert all(r.if_range for r in reqs[1:])


def test_resume_from_state_file_after_failed_run(fault_server, paths, tmp_path):
    data = payload(3 << 20, seed=8)
    url = fault_server.add("/m.bin", data, cut_after=1 << 20, cut_times=1)
    no_retry = resolve(root=tmp_path, env={}, retries=0, backoff_base=0.01)
    with pytest.raises(SourceError) as ei:
        fetch(url, paths, no_retry)
    assert ei.value.retryable
    assert paths[1].exists()
    res = fetch(url, paths, no_retry, expected_sha256=sha256_hex(data))
    assert res.resumed_bytes == 1 << 20 and paths[0].read_bytes() == data
    last = fault_server.requests_for("/m.bin")[-1]
    assert last.range == f"bytes={1 << 20}-{len(data) - 1}" and last.if_range and last.status == 206


def test_server_ignoring_range_after_a_cut_restarts(fault_server, paths, settings):
    data = payload(1 << 20, seed=11)
    url = fault_server.add("/m.bin", data, ignore_range=True, cut_after=200_000, cut_times=1)
    res = fetch(url, paths, settings, expected_sha256=sha256_hex(data))
    assert res.resumed_bytes == 0 and paths[0].read_bytes() == data
    assert [r.status for r in fault_server.requests_for("/m.bin")] == [200, 200]


def test_etag_change_between_attempts_restarts(fault_server, paths, settings):
    data = payload(1 << 20, seed=12)
    url = fault_server.add("/m.bin", data, etags=['"v1"', '"v2"'], cut_after=300_000, cut_times=1)
    res = fetch(url, paths, settings, expected_sha256=sha256_hex(data))
    assert res.etag == '"v2"' and paths[0].read_bytes() == data
    reqs = fault_server.requests_for("/m.bin")
    assert reqs[1].if_range == '"v1"' and reqs[1].status == 200  # validator changed: full body, not a mix
    assert reqs[2].range == "bytes=0-" and reqs[2].status == 206


@pytest.mark.parametrize("retry_after", ["1", "date"])
def test_429_honours_retry_after(fault_server, paths, settings, retry_after):
    data = payload(100_000, seed=13)
    value = http_date(2) if retry_after == "date" else "1"  # an HTTP-date has 1 s resolution
    url = fault_server.add("/m.bin", data, fail_first=1, fail_status=429, retry_after=value)
    t0 = time.monotonic()
    res = fetch(url, paths, settings)
    waited = time.monotonic() - t0
    assert res.sha256 == sha256_hex(data)
    assert 0.9 <= waited < 4
    assert [r.status for r in fault_server.requests_for("/m.bin")] == [429, 206]


def test_503_is_retried_then_reported(fault_server, paths, settings):
    url = fault_server.add("/m.bin", b"x", fail_first=100, fail_status=503)
    with pytest.raises(SourceError) as ei:
        fetch(url, paths, settings)
    assert ei.value.status == 503 and ei.value.retryable
    assert len(fault_server.requests_for("/m.bin")) == settings.retries + 1


def test_azure_409_is_dead_and_not_retried(fault_server, paths, settings):
    url = fault_server.add("/metro.bin", status=409, error_body=AZURE_409_BODY)
    with pytest.raises(SourceDeadError) as ei:
        fetch(url, paths, settings)
    msg = str(ei.value)
    assert "PublicAccessNotPermitted" in msg and "anonymous access" in msg and "2025-02" in msg
    assert "--mirror BASE" in msg and "metro-assets import" in msg
    assert ei.value.status == 409 and not ei.value.retryable
    assert len(fault_server.requests_for("/metro.bin")) == 1


@pytest.mark.parametrize("status, cls", [(404, SourceError), (403, SourceError), (401, SourceError),
                                         (410, SourceDeadError)])
def test_client_errors_are_not_retried(fault_server, paths, settings, status, cls):
    url = fault_server.add("/m.bin", status=status, error_body=b"nope")
    with pytest.raises(cls) as ei:
        fetch(url, paths, settings)
    assert ei.value.status == status and not ei.value.retryable and str(status) in str(ei.value)
    assert len(fault_server.requests_for("/m.bin")) == 1


def test_html_instead_of_binary_is_caught_by_sniff_before_writing(fault_server, paths, settings):
    url = fault_server.add("/m.bin", HTML_PAGE * 50, content_type="text/html")
    written = []
    with pytest.raises(StructuralError):
        fetch(url, paths, settings, sniff=no_html, progress=written.append)
    assert written == []  # nothing was written before the sniff
    assert not paths[0].exists() and not paths[1].exists()


def test_wrong_bytes_raise_verification_error_and_leave_nothing(fault_server, paths, settings):
    good, bad = payload(2 << 20, seed=14), payload(2 << 20, seed=15)
    url = fault_server.add("/m.bin", bad)
    with pytest.raises(VerificationError) as ei:
        fetch(url, paths, settings, expected_sha256=sha256_hex(good))
    assert sha256_hex(good) in str(ei.value) and sha256_hex(bad) in str(ei.value)
    assert not paths[0].exists() and not paths[1].exists()


def test_wrong_size_is_refused_before_downloading(fault_server, paths, settings):
    url = fault_server.add("/m.bin", payload(2 << 20, seed=16))
    with pytest.raises(VerificationError):
        fetch(url, paths, settings, expected_size=123)
    assert not paths[0].exists()


def test_stall_raises_stalled_error_quickly(fault_server, paths, settings):
    url = fault_server.add("/m.bin", payload(1 << 20, seed=17), stall_after=100_000, stall_seconds=30)
    t0 = time.monotonic()
    with pytest.raises(StalledError):
        fetch(url, paths, settings)
    assert time.monotonic() - t0 < 5
    assert len(fault_server.requests_for("/m.bin")) == 3  # retried twice, then gave up
    assert paths[1].exists()  # bytes so far are kept for a later resume


def test_body_without_content_length(fault_server, paths, settings):
    data = payload(500_000, seed=18)
    url = fault_server.add("/m.bin", data, send_length=False, ignore_range=True)
    res = fetch(url, paths, settings)
    assert res.size == len(data) and paths[0].read_bytes() == data


# ------------------------------------------------------------------ the lean http.client path


class _Tiny:
    """A small HTTP/1.1 server for what nginx is not set up to do here: redirects, chunked
    bodies, acting as a forward proxy.  Records (path, headers) of every request."""

    def __init__(self, routes):
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        seen = self.seen = []

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_GET(self):
                seen.append((self.path, dict(self.headers)))
                status, headers, body, chunked = routes(self.path)
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                if chunked:
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    for i in range(0, len(body), 7000):
                        part = body[i:i + 7000]
                        self.wfile.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
                    self.wfile.write(b"0\r\n\r\n")
                else:
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_lean_path_follows_redirects_relative_and_to_another_host(nginx, paths, settings):
    data = payload(3 << 20, seed=21)
    target = nginx.put("redir.bin", data)

    def routes(path):
        if path == "/a":
            return 302, {"Location": "/b"}, b"moved", False
        if path == "/b":
            return 301, {"Location": target}, b"", False
        return 404, {}, b"", False

    srv = _Tiny(routes)
    try:
        res = fetch(srv.url + "/a", paths, settings, expected_sha256=sha256_hex(data))
        assert res.size == len(data) and paths[0].read_bytes() == data
        assert [p for p, _ in srv.seen] == ["/a", "/b"]
        assert srv.seen[0][1].get("Range") == "bytes=0-" and srv.seen[1][1].get("Range") == "bytes=0-"
    finally:
        srv.close()


def test_lean_path_gives_up_on_a_redirect_loop(paths, settings):
    srv = _Tiny(lambda path: (302, {"Location": "/loop"}, b"", False))
    try:
        with pytest.raises(SourceError) as ei:
            fetch(srv.url + "/loop", paths, settings)
        assert "redirects" in str(ei.value) and not ei.value.retryable
        assert len(srv.seen) == 6  # the request and 5 redirects, once: not retried
    finally:
        srv.close()


def test_lean_path_reads_chunked_bodies_and_reuses_the_connection(paths, settings, tmp_path):
    from metro_assets import http as H

    blobs = {f"/c{i}": payload(50_000 + i * 3000, seed=30 + i) for i in range(5)}
    srv = _Tiny(lambda path: (200, {"ETag": '"x"'}, blobs[path], True))
    try:
        opened = H.POOL.opened
        for i, (path, data) in enumerate(blobs.items()):
            d = tmp_path / f"c{i}"
            res = download(srv.url + path, d.with_suffix(".part"), d.with_suffix(".json"), settings=settings,
                           expected_sha256=sha256_hex(data))
            assert res.size == len(data) and d.with_suffix(".part").read_bytes() == data
        assert H.POOL.opened - opened == 1  # one keep-alive connection for all five files
    finally:
        srv.close()


def test_keep_alive_is_reused_across_files_on_nginx(nginx, tmp_path, settings):
    from metro_assets import http as H

    blobs = {f"k{i}.bin": payload(20_000 + i, seed=40 + i) for i in range(6)}
    urls = {name: nginx.put(name, data) for name, data in blobs.items()}
    opened = H.POOL.opened
    for name, data in blobs.items():
        d = tmp_path / name
        res = download(urls[name], d.with_suffix(".part"), d.with_suffix(".json"), settings=settings,
                       expected_sha256=sha256_hex(data))
        assert res.sha256 == sha256_hex(data)
    assert H.POOL.opened - opened <= 1


def test_a_stale_keep_alive_connection_is_replaced_silently(nginx, tmp_path, settings):
    from metro_assets import http as H

    data = payload(30_000, seed=50)
    url = nginx.put("stale.bin", data)
    for i in range(2):
        if i:  # the server forgot our idle connection: the next request must not fail
            for idle in H.POOL._idle.values():
                for c in idle:
                    c.sock.shutdown(__import__("socket").SHUT_RDWR)
        d = tmp_path / f"s{i}"
        res = download(url, d.with_suffix(".part"), d.with_suffix(".json"), settings=settings)
        assert res.sha256 == sha256_hex(data)


def test_proxy_from_the_environment_goes_through_requests(paths, settings, monkeypatch):
    from metro_assets import http as H

    data = payload(40_000, seed=60)
    proxy = _Tiny(lambda path: (200, {"ETag": '"p"'}, data, False))
    try:
        origin = "http://origin.invalid:8080/f.bin"
        assert not H.needs_requests(origin)
        monkeypatch.setenv("http_proxy", proxy.url)
        monkeypatch.delenv("no_proxy", raising=False)
        monkeypatch.delenv("NO_PROXY", raising=False)
        assert H.needs_requests(origin)
        res = fetch(origin, paths, settings, expected_sha256=sha256_hex(data))
        assert res.size == len(data)
        assert proxy.seen and proxy.seen[0][0] == origin  # absolute-form: the proxy was asked
    finally:
        proxy.close()


def test_big_download_in_automatic_mode_uses_several_connections(nginx, paths, settings, monkeypatch):
    from metro_assets import transfer as T

    monkeypatch.setattr(T, "AUTO_SEGMENTED_MIN", 4 << 20)
    data = payload(12 << 20, seed=70)
    url = nginx.put("auto.bin", data).replace(nginx.url, nginx.throttled_url)
    res = fetch(url, paths, settings, expected_sha256=sha256_hex(data))
    assert res.connections > 1 and paths[0].read_bytes() == data
    ranges = [line for line in nginx.access_log() if "auto.bin" in line and " 206 " in line]
    assert len(ranges) >= res.connections
