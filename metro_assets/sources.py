"""Sources: where an asset's bytes may come from, chosen by URL scheme.

The order is: each ``--mirror`` base (``BASE/<tree path>``), then the
manifest's sources in order.  Known-dead sources are kept in the list (so
the plan can say "known dead since 2025-02") but are never tried.
"""
from __future__ import annotations

import base64
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional
from urllib.parse import quote, unquote, urlparse

from metro_assets.errors import SourceError, VerificationError
from metro_assets.hashing import copy_with_sha256
from metro_assets.manifest import Asset, Source
from metro_assets.settings import Settings


@dataclass(frozen=True)
class Candidate:
    url: str                  # what we actually request (http(s):// or file://)
    kind: str                 # http | file | manual
    label: str                # "mirror" or "manifest"
    declared: str = ""        # the URL as written in the manifest (onedrive/hf/s3 before rewriting)
    dead_since: Optional[str] = None
    reason: Optional[str] = None

    @property
    def usable(self) -> bool:
        return self.dead_since is None and self.kind in ("http", "file")

    def describe(self) -> str:
        s = self.declared or self.url
        if self.dead_since:
            s += f" (known dead since {self.dead_since}: {self.reason or 'no longer serves the file'})"
        return s


def onedrive_direct(url: str) -> str:
    """A OneDrive/SharePoint share link -> the anonymous direct-download URL.

    The shares API accepts the share URL encoded as ``u!`` + unpadded base64url.
    """
    token = base64.urlsafe_b64encode(url.encode()).decode().rstrip("=")
    return f"https://api.onedrive.com/v1.0/shares/u!{token}/root/content"


def hf_resolve(url: str) -> str:
    """``hf://owner/repo/path/in/repo[@revision]`` -> the Hub's resolve URL."""
    rest = url[len("hf://"):]
    revision = "main"
    if "@" in rest:
        rest, revision = rest.rsplit("@", 1)
    parts = rest.split("/")
    if len(parts) < 3:
        raise SourceError(f"bad hf:// URL {url!r}", url=url, expected="hf://owner/repo/path[@revision]")
    repo, path = "/".join(parts[:2]), "/".join(parts[2:])
    try:  # the Hub's own URL builder knows HF_ENDPOINT and its quoting rules
        from huggingface_hub import hf_hub_url

        return hf_hub_url(repo, path, revision=revision)
    except ImportError:
        pass
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    return f"{endpoint}/{repo}/resolve/{quote(revision, safe='')}/{quote(path)}"


def _from_source(src: Source) -> Candidate:
    if src.manual:
        return Candidate(url="", kind="manual", label="manifest", declared=src.describe())
    url = src.url or ""
    declared = url
    if src.kind == "onedrive":
        url = onedrive_direct(url)
    elif src.kind == "hf":
        url = hf_resolve(url)
    kind = "file" if url.startswith("file://") else "http"
    return Candidate(url=url, kind=kind, label="manifest", declared=declared if declared != url else "",
                     dead_since=src.dead_since, reason=src.reason)


def mirror_url(base: str, asset: Asset) -> str:
    rel = asset.mirror_path
    if base.startswith(("http://", "https://")):
        return f"{base.rstrip('/')}/{quote(rel)}"
    if base.startswith("file://"):
        return f"{base.rstrip('/')}/{quote(rel)}"
    return Path(base).expanduser().absolute().joinpath(rel).as_uri()


def candidates(asset: Asset, settings: Settings) -> List[Candidate]:
    out: List[Candidate] = []
    for base in settings.mirrors:
        url = mirror_url(base, asset)
        out.append(Candidate(url=url, kind="file" if url.startswith("file://") else "http", label="mirror"))
    out.extend(_from_source(s) for s in asset.sources)
    if settings.offline:
        out = [c if c.kind != "http" else Candidate(c.url, "offline", c.label, c.declared, c.dead_since, c.reason) for c in out]
    return out


def probe_size(c: Candidate, *, timeout: float = 5.0) -> Optional[int]:
    """The size a source would deliver (stat for file://, HEAD for http), or None.

    Never raises.  Uses the transfer engine's lean keep-alive client, so the
    connection is reused by the download that follows."""
    try:
        if c.kind == "file":
            return file_path(c.url).stat().st_size
        if c.kind != "http":
            return None
        from metro_assets.http import open_get

        r = open_get(c.url, {}, timeout=(timeout, timeout), method="HEAD")
        try:
            length = str(r.headers.get("Content-Length", ""))
            ok = r.status == 200 and length.isdigit()
            r.release()
            return int(length) if ok else None
        finally:
            r.close()
    except Exception:
        return None


def file_path(url: str) -> Path:
    return Path(unquote(urlparse(url).path))


@dataclass(frozen=True)
class CopyResult:
    url: str
    size: int
    sha256: str
    etag: Optional[str] = None
    last_modified: Optional[str] = None
    resumed_bytes: int = 0
    connections: int = 0
    seconds: float = 0.0


def copy_local(url: str, part: Path, *, expected_size: Optional[int], expected_sha256: Optional[str],
               sniff: Optional[Callable[[bytes], None]] = None,
               progress: Optional[Callable[[int], None]] = None) -> CopyResult:
    """Copy a file:// source into ``part`` while hashing; fsync; verify."""
    src = file_path(url)
    t0 = time.monotonic()
    try:
        fin = open(src, "rb")
    except FileNotFoundError:
        raise SourceError(f"not found in the local mirror: {src}", url=url, status=404) from None
    except OSError as exc:
        raise SourceError(f"cannot read {src}: {exc.strerror}", url=url) from None
    part.parent.mkdir(parents=True, exist_ok=True)
    try:
        with fin, open(part, "wb") as fout:
            sha, size = copy_with_sha256(fin, fout, first=sniff, progress=progress)
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    st = src.stat()
    _check_identity(part, url, size, sha, expected_size, expected_sha256)
    return CopyResult(url=url, size=size, sha256=sha, last_modified=time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(st.st_mtime)),
                      seconds=time.monotonic() - t0)


def _check_identity(part: Path, url: str, size: int, sha: str, expected_size: Optional[int], expected_sha256: Optional[str]) -> None:
    if expected_size is not None and size != expected_size:
        part.unlink(missing_ok=True)
        raise VerificationError(f"wrong size from {url}", expected=f"{expected_size} bytes", got=f"{size} bytes",
                                did="The download was discarded")
    if expected_sha256 is not None and sha != expected_sha256:
        part.unlink(missing_ok=True)
        raise VerificationError(f"wrong sha256 from {url}", expected=expected_sha256, got=sha,
                                did="The download was discarded")
