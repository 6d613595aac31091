#!/usr/bin/env python3
"""A static file server that drops every response after --cut-mib MiB (loopback only).

Honours a single Range, If-Range, ETag and Last-Modified, so a client that
resumes makes progress while one that restarts from zero never finishes a file
bigger than the cut.  Body bytes go out with os.sendfile.  Stdlib only.
"""
from __future__ import annotations

import argparse
import email.utils
import os
import socket
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", required=True)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--cut-mib", type=float, default=64)
    ap.add_argument("--port-file", help="write the bound port here once listening")
    args = ap.parse_args()
    root = Path(args.root).resolve()
    cut = int(args.cut_mib * (1 << 20))

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a) -> None:
            pass

        def do_GET(self) -> None:
            rel = self.path.split("?", 1)[0].lstrip("/")
            path = (root / rel).resolve()
            if root not in path.parents or not path.is_file():
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            st = path.stat()
            total = st.st_size
            etag = '"%x-%x"' % (int(st.st_mtime), total)  # nginx's format
            lm = email.utils.formatdate(st.st_mtime, usegmt=True)
            start, end, status = 0, total, 200
            rng = self.headers.get("Range")
            if_range = self.headers.get("If-Range")
            if rng and rng.startswith("bytes=") and "," not in rng and (if_range in (None, etag, lm)):
                a, _, b = rng[6:].partition("-")
                if a:
                    start = int(a)
                    end = min(total, int(b) + 1) if b else total
                else:
                    start = max(0, total - int(b))
                if start >= end:
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{total}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                status = 206
            self.send_response(status)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(end - start))
            self.send_header("ETag", etag)
            self.send_header("Last-Modified", lm)
            self.send_header("Accept-Ranges", "bytes")
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{end - 1}/{total}")
            self.end_headers()
            self.wfile.flush()
            budget = min(end - start, cut)
            with open(path, "rb") as f:
                off = start
                try:
                    while budget > 0:
                        n = os.sendfile(self.connection.fileno(), f.fileno(), off, min(budget, 8 << 20))
                        if n <= 0:
                            break
                        off += n
                        budget -= n
                except OSError:
                    self.close_connection = True
                    return
            if end - start > cut:  # the drop
                self.close_connection = True
                try:
                    self.connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    class Server(ThreadingHTTPServer):
        daemon_threads = True

    srv = Server(("127.0.0.1", args.port), Handler)
    if args.port_file:
        Path(args.port_file).write_text(str(srv.server_address[1]))
    srv.serve_forever()


if __name__ == "__main__":
    main()
