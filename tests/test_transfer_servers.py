"""Smoke tests of the test servers themselves (others rely on them)."""
from __future__ import annotations

import time

import requests

from servers import AZURE_409_BODY, payload, sha256_hex


def test_nginx_serves_range_etag_and_throttle(nginx):
    data = payload(300_000, seed=1)
    url = nginx.put("a/b.bin", data)
    r = requests.get(url)
    assert r.status_code == 200 and r.content == data and r.headers["ETag"]
    r2 = requests.get(url, headers={"Range": "bytes=100-", "If-Range": r.headers["ETag"]})
    assert r2.status_code == 206 and r2.content == data[100:]
    r3 = requests.get(nginx.norange_url + "/a/b.bin", headers={"Range": "bytes=100-"})
    assert r3.status_code == 200 and len(r3.content) == len(data)
    r4 = requests.get(nginx.throttled_url + "/a/b.bin")
    assert sha256_hex(r4.content) == sha256_hex(data)


def test_fault_server_faults(fault_server):
    fs = fault_server
    data = payload(10_000, seed=2)
    url = fs.add("/cut.bin", data, cut_after=1000, cut_times=1)
    try:
        requests.get(url).content
        raise AssertionError("expected a cut")
    except requests.exceptions.RequestException:
        pass
    r = requests.get(url, headers={"Range": "bytes=1000-"})
    assert r.status_code == 206 and r.content == data[1000:]
    assert [x.range for x in fs.requests_for("/cut.bin")] == [None, "bytes=1000-"]

    url = fs.add("/azure.bin", status=409, error_body=AZURE_409_BODY)
    r = requests.get(url)
    assert r.status_code == 409 and b"PublicAccessNotPermitted" in r.content

    url = fs.add("/busy.bin", data, fail_first=1, retry_after="1")
    r = requests.get(url)
    assert r.status_code == 429 and r.headers["Retry-After"] == "1"
    assert requests.get(url).content == data

    url = fs.add("/etag.bin", data, etags=['"a"', '"b"'])
    assert requests.get(url).headers["ETag"] == '"a"'
    r = requests.get(url, headers={"Range": "bytes=10-", "If-Range": '"a"'})
    assert r.status_code == 200 and r.headers["ETag"] == '"b"'

    url = fs.add("/stall.bin", data, stall_after=100, stall_seconds=0.3)
    t0 = time.monotonic()
    assert requests.get(url).content == data
    assert time.monotonic() - t0 >= 0.3
