"""HTTP policy: which answers are worth retrying, how long to wait, and the errors we raise.

Kept apart from the transfer engine so other sources (hf, s3 mirrors) share one policy.
"""
from __future__ import annotations

import email.utils
import random
import time
from typing import Optional

from metro_assets.errors import SourceDeadError, SourceError
from metro_assets.settings import Settings

RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504}) | frozenset(range(505, 600))
NEVER_RETRY_STATUS = frozenset({401, 403, 404, 409, 410})

AZURE_DEAD_SINCE = "2025-02"


def retry_after_seconds(value: Optional[str], *, now: Optional[float] = None) -> Optional[float]:
    """Parse Retry-After in either form: delta-seconds or an HTTP-date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        ts = email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return max(0.0, ts - (time.time() if now is None else now))


def backoff_delay(failures: int, settings: Settings, retry_after: Optional[float] = None) -> float:
    """Exponential backoff with full jitter; a server's Retry-After wins when longer."""
    cap = min(settings.backoff_max, settings.backoff_base * (2 ** max(0, failures - 1)))
    delay = random.uniform(cap / 2, cap)
    if retry_after is not None:
        # Honour the server, but never wait past our own ceiling.
        delay = max(delay, min(retry_after, settings.backoff_max))
    return delay


def is_azure_public_access_refusal(status: int, body: bytes) -> bool:
    return status == 409 and b"PublicAccessNotPermitted" in body


def status_error(url: str, status: int, body: bytes = b"", reason: str = "") -> SourceError:
    """The error for an HTTP status we will not (or no longer) retry."""
    if is_azure_public_access_refusal(status, body):
        return SourceDeadError(
            f"The Azure blob at {url} refuses anonymous access (HTTP 409 PublicAccessNotPermitted): "
            f"Microsoft's storage account has refused public access since {AZURE_DEAD_SINCE}, so this URL will not come back",
            url=url, status=status, retryable=False,
            did="Did not retry",
            next_command="fetch from a mirror with `metro-assets fetch --mirror BASE ...`, use another source for "
                         "this asset, or bring a local copy with `metro-assets import <local copy>`",
        )
    if status == 410:
        return SourceDeadError(f"{url} is gone (HTTP 410)", url=url, status=status, retryable=False,
                               did="Did not retry",
                               next_command="use `--mirror BASE`, another source, or `metro-assets import <local copy>`")
    what = {
        401: "needs authentication (HTTP 401)",
        403: "refused access (HTTP 403)",
        404: "does not exist (HTTP 404)",
        409: "refused the request (HTTP 409)",
        416: "cannot serve the requested range (HTTP 416)",
    }.get(status, f"answered HTTP {status}" + (f" {reason}" if reason else ""))
    retryable = status in RETRYABLE_STATUS
    return SourceError(f"{url} {what}", url=url, status=status, retryable=retryable,
                       did="Gave up after retries" if retryable else "Did not retry",
                       next_command="check the URL, or use `--mirror BASE` or `metro-assets import <local copy>`")


# --------------------------------------------------------------------------- the lean client
#
# ``requests`` costs ~85 ms to import and ~1 ms of CPU per request (prepare_request,
# adapters, urllib3's pool); for 300 small files that is most of the run.  The engine
# therefore talks ``http.client`` directly: keep-alive connections pooled per host and
# shared by all threads, redirects followed by hand.  Anything unusual (a proxy from the
# environment, credentials in the URL, a non-ASCII URL, a caller's own requests.Session)
# goes through ``requests`` instead, which is imported only then.

import http.client as _hc  # noqa: E402
import os  # noqa: E402
import socket  # noqa: E402
import threading  # noqa: E402
from typing import Dict, List, Mapping, Tuple  # noqa: E402
from urllib.parse import urljoin, urlsplit  # noqa: E402

USER_AGENT = "metro-assets"
MAX_REDIRECTS = 5
REDIRECT_STATUS = frozenset({301, 302, 303, 307, 308})
IDLE_PER_HOST = 32


# Set by Ctrl-C handling (transfer.cancel_all): every reader stops at its next chunk.
SHUTDOWN = threading.Event()


class TransportError(Exception):
    """No HTTP answer: the connection failed, timed out or broke (always worth a retry)."""

    def __init__(self, why: str, *, connect_timeout: bool = False, read_timeout: bool = False) -> None:
        super().__init__(why)
        self.why = why
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout


def net_errors() -> Tuple[type, ...]:
    """Exceptions a body read can raise on a broken connection (requests' only once it is loaded)."""
    errs: Tuple[type, ...] = (OSError, socket.timeout, _hc.HTTPException)
    import sys

    if "requests" in sys.modules:
        import requests
        import urllib3.exceptions

        errs = errs + (requests.exceptions.RequestException, urllib3.exceptions.HTTPError)
    return errs


_PROXY_VARS = {"http": ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"),
               "https": ("https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY")}


def needs_requests(url: str) -> bool:
    """True when the lean client should not handle ``url``: a proxy variable applies to its
    scheme (requests applies it, and NO_PROXY), credentials in the URL, non-ASCII, odd scheme."""
    try:
        url.encode("ascii")
    except UnicodeEncodeError:
        return True
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or "@" in parts.netloc or not parts.hostname:
        return True
    env = os.environ
    return any(env.get(k) for k in _PROXY_VARS[parts.scheme])


_ssl_ctx = None
_ssl_lock = threading.Lock()


def _ssl_context():
    """The CA bundle requests would use: REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE, else certifi."""
    global _ssl_ctx
    with _ssl_lock:
        if _ssl_ctx is None:
            import ssl

            bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
            if not bundle:
                try:
                    import certifi

                    bundle = certifi.where()
                except ImportError:
                    bundle = None
            if bundle and os.path.isdir(bundle):
                _ssl_ctx = ssl.create_default_context(capath=bundle)
            else:
                _ssl_ctx = ssl.create_default_context(cafile=bundle)
        return _ssl_ctx


class _Pool:
    """Idle keep-alive connections per (scheme, host, port), shared by all threads."""

    def __init__(self) -> None:
        self._idle: Dict[Tuple[str, str, int], List[_hc.HTTPConnection]] = {}
        self._lock = threading.Lock()
        self.opened = 0     # connections opened (tests check keep-alive reuse)

    def get(self, key) -> Tuple[_hc.HTTPConnection, bool]:
        with self._lock:
            idle = self._idle.get(key)
            if idle:
                return idle.pop(), True
            self.opened += 1
        scheme, host, port = key
        if scheme == "https":
            return _hc.HTTPSConnection(host, port, context=_ssl_context()), False
        return _hc.HTTPConnection(host, port), False

    def put(self, key, conn: _hc.HTTPConnection) -> None:
        if conn.sock is None:
            return
        with self._lock:
            idle = self._idle.setdefault(key, [])
            if len(idle) < IDLE_PER_HOST:
                idle.append(conn)
                return
        conn.close()

    def clear(self) -> None:
        with self._lock:
            conns = [c for idle in self._idle.values() for c in idle]
            self._idle.clear()
        for c in conns:
            c.close()


POOL = _Pool()


class Response:
    """One HTTP answer with its body unread.  ``fast_body()`` gives (file, length) for a
    plain Content-Length body that can be read with ``readinto1``; else use ``readinto``."""

    status: int
    reason: str
    headers: Mapping[str, str]
    url: str

    def fast_body(self):
        return None

    def readinto(self, view) -> int:
        raise NotImplementedError

    def read(self, n: int) -> bytes:
        raise NotImplementedError

    def release(self) -> None:
        """The body was read to its end: keep the connection for the next request."""
        self.close()

    def close(self) -> None:
        raise NotImplementedError

    def abort(self) -> None:
        """From another thread: wake a reader blocked in recv."""


class LeanResponse(Response):
    def __init__(self, resp: _hc.HTTPResponse, conn: _hc.HTTPConnection, key, url: str) -> None:
        self._r, self._conn, self._key, self.url = resp, conn, key, url
        self.status, self.reason, self.headers = resp.status, resp.reason or "", resp.msg
        self._sock = conn.sock

    def fast_body(self):
        r = self._r
        if r.chunked or r.length is None or r.fp is None or not hasattr(r.fp, "readinto1"):
            return None
        return r.fp, r.length

    def readinto(self, view) -> int:
        return self._r.readinto(view)

    def read(self, n: int) -> bytes:
        return self._r.read(n)

    def release(self) -> None:
        r, conn = self._r, self._conn
        self._conn = None
        if conn is None:
            return
        try:
            if not r.chunked:
                r.length = 0
            if r.read() or not r.isclosed() or r.will_close:
                conn.close()
                return
        except Exception:
            conn.close()
            return
        POOL.put(self._key, conn)

    def close(self) -> None:
        conn, self._conn = self._conn, None
        with _suppress():
            self._r.close()
        if conn is not None:
            conn.close()

    def abort(self) -> None:
        with _suppress():
            self._sock.shutdown(socket.SHUT_RDWR)


class RequestsResponse(Response):
    """The same interface over a streamed ``requests.Response`` (proxies, caller sessions)."""

    def __init__(self, resp) -> None:
        self._r = resp
        self.status, self.reason, self.headers, self.url = resp.status_code, resp.reason or "", resp.headers, resp.url

    def fast_body(self):
        hr = getattr(self._r.raw, "_fp", None)
        if hr is None or getattr(hr, "chunked", True) or hr.length is None or not hasattr(getattr(hr, "fp", None), "readinto1"):
            return None
        return hr.fp, hr.length

    def readinto(self, view) -> int:
        return self._r.raw.readinto(view)

    def read(self, n: int) -> bytes:
        return self._r.raw.read(n, decode_content=True) or b""

    def release(self) -> None:
        try:
            hr = self._r.raw._fp
            if not hr.chunked:
                hr.length = 0
            hr.read()                   # marks the http.client response complete
            self._r.raw.release_conn()  # back to urllib3's pool
        except Exception:
            self._r.close()

    def close(self) -> None:
        self._r.close()

    def abort(self) -> None:
        with _suppress():
            self._r.raw._connection.sock.shutdown(socket.SHUT_RDWR)


class _suppress:
    def __enter__(self):
        return self

    def __exit__(self, *exc) -> bool:
        return exc[0] is not None and issubclass(exc[0], Exception)


_STALE = (_hc.RemoteDisconnected, _hc.BadStatusLine, ConnectionResetError, BrokenPipeError, ConnectionAbortedError)


def _is_cert_error(exc: BaseException) -> bool:
    import ssl

    return isinstance(exc, ssl.SSLCertVerificationError)


def _lean_once(url: str, headers: Mapping[str, str], timeout: Tuple[float, float], method: str = "GET") -> LeanResponse:
    parts = urlsplit(url)
    scheme = parts.scheme
    port = parts.port or (443 if scheme == "https" else 80)
    key = (scheme, parts.hostname, port)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    for attempt in (0, 1):
        conn, reused = POOL.get(key)
        try:
            if conn.sock is None:
                conn.timeout = timeout[0]
                try:
                    conn.connect()
                except (socket.timeout, TimeoutError) as exc:
                    conn.close()
                    raise TransportError(f"connect timeout: {exc}", connect_timeout=True) from None
            conn.sock.settimeout(timeout[1])
            conn.putrequest(method, target, skip_accept_encoding=True)
            conn.putheader("User-Agent", USER_AGENT)
            for k, v in headers.items():
                conn.putheader(k, v)
            conn.endheaders()
            resp = conn.getresponse()
        except TransportError:
            raise
        except _STALE as exc:
            conn.close()
            if reused and attempt == 0:
                continue  # the server closed an idle keep-alive connection: once more on a new one
            raise TransportError(f"connection error: {exc!r}") from None
        except (socket.timeout, TimeoutError) as exc:
            conn.close()
            raise TransportError(f"no answer for {timeout[1]:g} s: {exc}", read_timeout=True) from None
        except (OSError, _hc.HTTPException) as exc:
            conn.close()
            if isinstance(exc, socket.gaierror):
                # No DNS answer: offline, or a typo in the host.  Retrying for half a minute helps neither.
                raise SourceError(
                    f"cannot resolve the host {parts.hostname!r} ({exc.strerror or exc}): no network, or a wrong URL",
                    url=url, retryable=False, did="Did not retry",
                    next_command="use a reachable --mirror BASE (a folder works: --mirror /path/to/mirror), or --offline") from None
            if _is_cert_error(exc):
                raise SourceError(
                    f"the TLS certificate of {parts.hostname} could not be verified ({exc})", url=url,
                    retryable=False, did="Did not retry",
                    next_command="if the server uses a private CA: export REQUESTS_CA_BUNDLE=/path/to/ca.pem") from None
            raise TransportError(f"connection error: {exc!r}") from None
        return LeanResponse(resp, conn, key, url)
    raise AssertionError("unreachable")


def _requests_get(url: str, headers: Mapping[str, str], timeout: Tuple[float, float], session,
                  method: str = "GET") -> RequestsResponse:
    import requests

    try:
        kw = {} if session is not None else _env_kwargs(url)
        resp = (session or _thread_session()).request(method, url, headers=dict(headers), stream=True, timeout=timeout,
                                                      allow_redirects=True, **kw)
    except requests.exceptions.ConnectTimeout as exc:
        raise TransportError(f"connect timeout: {exc}", connect_timeout=True) from None
    except requests.exceptions.Timeout as exc:
        raise TransportError(f"no answer for {timeout[1]:g} s: {exc}", read_timeout=True) from None
    except requests.exceptions.SSLError as exc:
        if "CERTIFICATE_VERIFY_FAILED" in str(exc) or "certificate verify failed" in str(exc):
            raise SourceError(f"the TLS certificate for {url} could not be verified ({exc})", url=url, retryable=False,
                              did="Did not retry",
                              next_command="if the server uses a private CA: export REQUESTS_CA_BUNDLE=/path/to/ca.pem") from None
        raise TransportError(f"TLS error: {exc}") from None
    except requests.exceptions.TooManyRedirects as exc:
        raise SourceError(f"{url} redirects too often: {exc}", url=url, retryable=False, did="Did not retry") from None
    except net_errors() as exc:
        raise TransportError(f"connection error: {exc}") from None
    return RequestsResponse(resp)


def open_get(url: str, headers: Mapping[str, str], *, timeout: Tuple[float, float], session=None,
             method: str = "GET") -> Response:
    """GET (or ``method``, e.g. HEAD) ``url`` with ``headers`` (body unread), following up to
    MAX_REDIRECTS redirects.

    Raises TransportError when no answer came; any HTTP status is returned."""
    if session is not None or needs_requests(url):
        return _requests_get(url, headers, timeout, session, method)
    here = url
    for _ in range(MAX_REDIRECTS + 1):
        resp = _lean_once(here, headers, timeout, method)
        loc = resp.headers.get("Location")
        if resp.status not in REDIRECT_STATUS or not loc:
            return resp
        # drain a small redirect body so the connection is reused; else drop it
        length = resp._r.length
        if length is not None and length <= 64 * 1024:
            try:
                resp._r.read()
                resp.release()
            except Exception:
                resp.close()
        else:
            resp.close()
        here = urljoin(here, loc)
        if needs_requests(here):
            return _requests_get(here, headers, timeout, None, method)
    raise SourceError(f"{url} redirects more than {MAX_REDIRECTS} times", url=url, retryable=False,
                      did="Did not retry", next_command="check the URL, or use `--mirror BASE`")


# requests' side: one pooled session per thread, environment applied once per host.

_local = threading.local()
_env_cache: dict = {}


def _thread_session():
    """``trust_env`` is off because requests would rescan the environment for proxies on
    every request; :func:`_env_kwargs` applies the same proxy and CA-bundle variables."""
    s = getattr(_local, "session", None)
    if s is None:
        import requests
        from requests.adapters import HTTPAdapter

        s = requests.Session()
        s.trust_env = False
        adapter = HTTPAdapter(pool_connections=8, pool_maxsize=16, max_retries=0)
        s.mount("http://", adapter)
        s.mount("https://", adapter)
        _local.session = s
    return s


def _env_kwargs(url: str) -> dict:
    import requests

    parts = urlsplit(url)
    key = (parts[:2], tuple(os.environ.get(k) for k in _PROXY_VARS.get(parts.scheme, ()) + ("no_proxy", "NO_PROXY")))
    kw = _env_cache.get(key)
    if kw is None:
        kw = {"proxies": requests.utils.get_environ_proxies(url)}
        bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
        if bundle:
            kw["verify"] = bundle
        _env_cache[key] = kw
    return kw
