"""Dataset fetch / verify / reindex: the functions ``fetch``, ``verify`` and the CLI call."""
from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Dict, List, Optional, Sequence, Tuple

from metro_assets.datasets import record as records
from metro_assets.datasets.stream import (CHUNK, Checkpoint, Extractor, Staging, dataset_names, fsync_tree,
                                          open_source, rebuild)
from metro_assets.datasets.tarsafe import MemberPolicy
from metro_assets.errors import (DiskSpaceError, MetroAssetsError, SourceDeadError, SourceError, UsageError,
                                 VerificationError)
from metro_assets.store import file_lock, fsync_dir, now_iso

DISK_MARGIN = 64 << 20


@dataclass(frozen=True)
class Finding:
    file: str                       # path relative to the dataset folder (or the root for composites)
    row: Optional[int]              # 0-based row (entry of the lineidx / linelist); None = whole file
    message: str
    severity: str = "error"         # error | warning | info

    def to_json(self) -> Dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        where = self.file if self.row is None else f"{self.file} row {self.row}"
        return f"{where}: {self.message}"


@dataclass(frozen=True)
class DatasetFetchResult:
    """Failures raise (errors.py); a result always means the dataset is in place (or planned)."""

    id: str
    action: str                     # downloaded | resumed | present | planned
    path: str
    url: Optional[str] = None
    archive_size: Optional[int] = None
    archive_sha256: Optional[str] = None
    how: str = ""                   # manifest | lockfile | tofu
    files: int = 0
    extracted_bytes: int = 0
    downloaded_bytes: int = 0
    resumed_from: int = 0
    disk_needed: Optional[int] = None
    layout: str = ""
    kept_archive: Optional[str] = None
    seconds: float = 0.0
    notes: Tuple[str, ...] = ()

    @property
    def status(self) -> str:
        return "ok"

    @property
    def message(self) -> str:
        from metro_assets.console import human_bytes

        if self.action == "planned":
            return f"would download {human_bytes(self.downloaded_bytes)}; needs {human_bytes(self.disk_needed)} free"
        text = f"{self.files} files, {human_bytes(self.extracted_bytes)} in {self.path}"
        if self.resumed_from:
            text += f" (resumed at byte {self.resumed_from})"
        return "; ".join([text, *self.notes])

    def to_json(self) -> Dict[str, Any]:
        d = asdict(self)
        d["notes"] = list(self.notes)
        d.update(status=self.status, source=self.url, size=self.archive_size, sha256=self.archive_sha256,
                 bytes_downloaded=self.downloaded_bytes, recorded=self.how == "tofu", message=self.message)
        return d


@dataclass(frozen=True)
class DatasetVerifyResult:
    id: str
    status: str                     # ok | missing | corrupt | unverified
    path: str
    files: int = 0
    bytes: int = 0
    hashed_bytes: int = 0
    findings: Tuple[Finding, ...] = ()
    deep: bool = False
    rows_checked: int = 0
    seconds: float = 0.0

    @property
    def errors(self) -> Tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.severity == "error")

    @property
    def detail(self) -> str:
        from metro_assets.console import human_bytes

        if self.status == "missing":
            return "not present"
        text = f"{self.files} files, {human_bytes(self.bytes)}"
        if self.deep:
            text += f", {self.rows_checked} rows checked"
        errs = self.errors
        if errs:
            text += f"; {len(errs)} problem(s), first: {errs[0].describe()}"
        elif self.status == "unverified":
            text += "; no extraction record"
        return text

    @property
    def fix(self) -> str:
        if self.status == "ok":
            return ""
        if self.status == "missing":
            return f"metro-assets fetch {self.id}"
        errs = self.errors
        if errs and all("datasets reindex" in f.message for f in errs):
            return f"metro-assets datasets reindex {self.id}"
        return f"metro-assets fetch {self.id} --force"

    def to_json(self) -> Dict[str, Any]:
        d = asdict(self)
        d["findings"] = [f.to_json() for f in self.findings]
        d.update(detail=self.detail, fix=self.fix)
        return d


@dataclass(frozen=True)
class ReindexResult:
    id: str
    path: str
    regenerated: Tuple[Tuple[str, int], ...] = ()   # (lineidx rel path, rows)
    already_ok: Tuple[str, ...] = ()

    def to_json(self) -> Dict[str, Any]:
        return {"id": self.id, "path": self.path, "regenerated": [{"file": f, "rows": n} for f, n in self.regenerated],
                "already_ok": list(self.already_ok)}


# --------------------------------------------------------------------------- planning

def dataset_disk_needed(asset, store, *, keep_archive: bool = False, size: Optional[int] = None) -> Optional[int]:
    """Bytes of free space a fetch still needs (None when the archive size is unknown).

    A plain tar's extracted size is its size minus headers, so the archive size
    bounds it; what a killed fetch already staged is subtracted.
    """
    size = size if size is not None else store.identity(asset).size
    if size is None:
        return None
    cp = Staging(store.state_dir, asset.id).load()
    staged = cp.offset if cp else 0
    return max(0, size - staged) + (size if keep_archive else 0) + DISK_MARGIN


def dataset_download_bytes(asset, store, *, size: Optional[int] = None) -> Optional[int]:
    size = size if size is not None else store.identity(asset).size
    if size is None:
        return None
    cp = Staging(store.state_dir, asset.id).load()
    return max(0, size - (cp.offset if cp else 0))


def _check_space(root: Path, needed: int, asset_id: str, force: bool) -> None:
    probe = root
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if needed > free and not force:
        from metro_assets.console import human_bytes

        raise DiskSpaceError(
            f"Not enough free space under {root} for dataset {asset_id}",
            expected=f"at least {human_bytes(needed)} free", got=f"{human_bytes(free)} free",
            did="Nothing was downloaded",
            next_command=f"free some space, or retry with --force: metro-assets fetch {asset_id} --force",
            needed=needed, free=free)


# --------------------------------------------------------------------------- fetch

def fetch_dataset(asset, candidates: Sequence[Any], store, settings, *, progress=None, keep_archive: bool = False,
                  force: bool = False, dry_run: bool = False) -> DatasetFetchResult:
    """Download, check and unpack one dataset tar into ``datasets/<name>/``.

    ``candidates``: URLs (str, or objects with ``.url``) in the order to try;
    http(s):// and file:// both work.  ``force`` re-fetches a present dataset,
    discards a staged partial fetch and skips the free-space check.
    """
    t0 = time.monotonic()
    urls = [getattr(c, "url", c) for c in candidates]
    final = store.root.joinpath(*PurePosixPath(asset.path).parts)
    ident = store.identity(asset)
    staging = Staging(store.state_dir, asset.id)
    if not force and final.is_dir() and records.load(store.state_dir, asset.id) is not None:
        v = verify_dataset(asset, store)
        if v.status == "ok":
            return DatasetFetchResult(asset.id, "present", asset.path, archive_size=ident.size,
                                      archive_sha256=ident.sha256, how=ident.origin, files=v.files,
                                      extracted_bytes=v.bytes, seconds=time.monotonic() - t0)
    if dry_run:
        return DatasetFetchResult(asset.id, "planned", asset.path, url=urls[0] if urls else None,
                                  archive_size=ident.size, archive_sha256=ident.sha256, how=ident.origin,
                                  downloaded_bytes=dataset_download_bytes(asset, store) or 0,
                                  disk_needed=dataset_disk_needed(asset, store, keep_archive=keep_archive),
                                  seconds=time.monotonic() - t0)
    if not urls:
        raise SourceError(f"No usable source for dataset {asset.id}", did="Nothing was downloaded",
                          next_command=f"metro-assets fetch {asset.id} --mirror <base URL or folder holding {asset.mirror_path}>")
    try:
        lock = file_lock(store.state_dir / "locks" / f"{asset.id}.extract.lock", timeout=0)
        lock.__enter__()
    except BlockingIOError:
        raise MetroAssetsError(f"Another metro-assets process is fetching {asset.id}",
                               did="Nothing was changed", next_command="wait for it to finish, then run the command again") from None
    try:
        if force:
            staging.remove()
        kept = None
        if keep_archive:
            kept, url_used, info = _download_archive(asset, urls, store, settings, progress=progress, force=force)
            out = _extract(asset, [kept.as_uri()], store, settings, staging, progress=progress, force=force,
                           ident=(info["size"], info["sha256"]), keep_archive=False)
            out["url"], out["how"], out["downloaded"] = url_used, info["how"], info["downloaded"]
        else:
            out = _extract(asset, urls, store, settings, staging, progress=progress, force=force,
                           ident=(ident.size, ident.sha256), keep_archive=False)
        if not keep_archive and ident.sha256 is None:
            store.record(asset.id, path=asset.path, size=out["size"], sha256=out["sha256"], source=out["url"],
                         how="tofu", etag=out.get("etag"), last_modified=out.get("last_modified"))
            out["how"] = "tofu"
        notes = _install(asset, store, staging, out, final)
    finally:
        lock.__exit__(None, None, None)
    cp: Checkpoint = out["cp"]
    return DatasetFetchResult(
        asset.id, "resumed" if out["resumed_from"] else "downloaded", asset.path, url=out["url"],
        archive_size=out["size"], archive_sha256=out["sha256"], how=out.get("how") or ident.origin,
        files=len(cp.members), extracted_bytes=sum(m.size for m in cp.members), downloaded_bytes=out["downloaded"],
        resumed_from=out["resumed_from"], layout=cp.layout or "", kept_archive=str(kept) if kept else None,
        seconds=time.monotonic() - t0, notes=tuple(notes))


def _label(asset_id: str, members: int, current: str) -> str:
    return f"{asset_id}: {members} files, {current}" if current else asset_id


def _set_label(progress, key: str, text: str) -> None:
    if progress is not None:
        progress.set_name(key, text)


def _extract(asset, urls: List[str], store, settings, staging: Staging, *, progress, force: bool,
             ident: Tuple[Optional[int], Optional[str]], keep_archive: bool) -> Dict[str, Any]:
    """Stream the first candidate that works into ``staging``; returns what it learnt."""
    size_expected, sha_expected = ident
    names = dataset_names(asset)
    cp = None if force else staging.load()
    h = None
    resumed_from = 0
    if cp is not None and cp.complete and cp.archive_sha256:
        if sha_expected is None or cp.archive_sha256 == sha_expected:
            return {"cp": cp, "size": cp.offset, "sha256": cp.archive_sha256, "url": cp.url, "etag": cp.etag,
                    "last_modified": cp.last_modified, "resumed_from": cp.offset, "downloaded": 0}
        cp = None
    if cp is not None and cp.offset:
        h = rebuild(staging, cp)
        if h is None:
            cp = None
    if cp is None:
        staging.reset()
        cp, h = Checkpoint(), hashlib.sha256()
        staging.save(cp)
    elif not cp.offset:
        h = hashlib.sha256()
    snapshot = (h.copy(), Checkpoint.from_json(cp.to_json()))
    last_error: Optional[MetroAssetsError] = None
    downloaded = 0
    space_checked = False
    for url in urls:
        attempt = 0
        while True:
            cp = snapshot[1] if snapshot[1] is not None else Checkpoint()
            h = rebuild(staging, cp, snapshot=snapshot[0])
            same = cp.url == url and cp.validator
            validator = cp.validator if same else None
            if cp.offset and not same and sha_expected:
                validator = "*"  # another mirror of a known archive: the final sha256 guards it
            try:
                opened = _open(url, cp.offset if validator else 0, validator, settings)
            except SourceError as exc:
                last_error = exc
                if _may_retry(exc, attempt, settings):
                    attempt += 1
                    continue
                break
            try:
                if opened.start == 0 and cp.offset:
                    staging.reset()
                    cp, h = Checkpoint(), hashlib.sha256()
                    staging.save(cp)
                if opened.total is not None and size_expected is not None and opened.total != size_expected:
                    raise SourceError(f"{url} serves {opened.total} bytes, expected {size_expected}", url=url,
                                      expected=f"{size_expected} bytes", got=f"{opened.total} bytes")
                if not space_checked and opened.total is not None:
                    _check_space(store.root, opened.total - opened.start + DISK_MARGIN, asset.id, force)
                    space_checked = True
                if opened.start:
                    resumed_from = resumed_from or opened.start
                cp.url, cp.etag, cp.last_modified, cp.total = url, opened.etag, opened.last_modified, opened.total
                cp.validator = opened.validator
                policy = MemberPolicy(names, archive=asset.archive or url)
                policy.restore(cp.layout, [m.rel for m in cp.members], cp.dirs)
                key = asset.id
                if progress is not None:
                    progress.start(key, asset.id, opened.total)
                    progress.set_done(key, opened.start)

                def on_member(rel: str, n: int, _k=key) -> None:
                    _set_label(progress, _k, _label(asset.id, n, rel))

                ex = Extractor(staging, cp, policy, h, archive=asset.archive or url, on_member=on_member)
                try:
                    while True:
                        data = opened.read(CHUNK)
                        if not data:
                            break
                        ex.feed(data)
                        downloaded += len(data)
                        if progress is not None:
                            progress.advance(key, len(data))
                    if not ex.ended:
                        if opened.total is not None and ex.offset < opened.total:
                            raise SourceError(f"the transfer from {url} stopped at byte {ex.offset} of {opened.total}",
                                              url=url, retryable=True)
                        raise VerificationError(f"{asset.archive or url} ends inside a member (truncated archive)",
                                                expected="a complete tar archive", got=f"{ex.offset} bytes",
                                                did="The partial dataset was removed")
                    if opened.total is not None and ex.offset != opened.total:
                        raise SourceError(f"{url} sent {ex.offset} bytes, announced {opened.total}", url=url, retryable=True)
                    ex.sync()
                    cp.layout = policy.layout
                finally:
                    snapshot = ex.snapshot
                    ex.close()
                    if progress is not None:
                        progress.finish(key)
            except SourceError as exc:
                last_error = exc
                if _may_retry(exc, attempt, settings):
                    attempt += 1
                    continue
                break
            except VerificationError:
                staging.remove()
                raise
            finally:
                opened.close()
            sha = h.hexdigest()
            if sha_expected is not None and sha != sha_expected:
                staging.remove()
                last_error = VerificationError(f"wrong sha256 for {asset.archive} from {url}", expected=sha_expected,
                                               got=sha, did="The extracted files were discarded")
                snapshot = (hashlib.sha256(), Checkpoint())
                staging.reset()
                break
            cp.complete, cp.archive_sha256, cp.offset = True, sha, ex.offset
            staging.save(cp, durable=True)
            return {"cp": cp, "size": ex.offset, "sha256": sha, "url": url, "etag": cp.etag,
                    "last_modified": cp.last_modified, "resumed_from": resumed_from, "downloaded": downloaded}
        if isinstance(last_error, DiskSpaceError):
            raise last_error
    assert last_error is not None
    if isinstance(last_error, SourceError) and not isinstance(last_error, SourceDeadError):
        last_error.did = last_error.did or "What was extracted so far is kept and resumes on the next run"
    raise last_error


def _may_retry(exc: SourceError, attempt: int, settings, *, wait: bool = True) -> bool:
    """Whether to try again after ``exc`` (retryable, tries left); first waits the backoff of try ``attempt + 1``."""
    if not (exc.retryable and attempt < settings.retries):
        return False
    if wait:
        time.sleep(min(settings.backoff_max, settings.backoff_base * 2 ** (attempt + 1)))
    return True


def _open(url: str, offset: int, validator: Optional[str], settings):
    timeout = (settings.connect_timeout, settings.stall_seconds)
    if validator == "*":  # another mirror of an archive whose sha256 is known
        return open_source(url, offset=offset, any_version=True, timeout=timeout)
    return open_source(url, offset=offset, validator=validator, timeout=timeout)


def _download_archive(asset, urls: List[str], store, settings, *, progress, force: bool):
    """--keep-archive: fetch the tar itself to ``datasets/<archive>`` (resumable .part), verify, place it."""
    from metro_assets.hashing import sha256_file
    from metro_assets.store import atomic_write_json, read_json

    dest = store.root.joinpath(*PurePosixPath(asset.mirror_path).parts)
    ident = store.identity(asset)
    if dest.is_file() and not force and ident.sha256:
        st = dest.stat()
        if store.stamped_sha(dest, st) == ident.sha256 or sha256_file(dest) == ident.sha256:
            return dest, dest.as_uri(), {"size": st.st_size, "sha256": ident.sha256, "how": ident.origin, "downloaded": 0}
    part, state_p = store.part_path(dest), store.state_path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    last: Optional[MetroAssetsError] = None
    for url in urls:
        attempt = 0
        while True:
            state = read_json(state_p, {}) if part.exists() and not force else {}
            have = part.stat().st_size if state.get("url") == url and part.exists() else 0
            try:
                opened = open_source(url, offset=have, validator=state.get("validator") if have else None,
                                     timeout=(settings.connect_timeout, settings.stall_seconds))
            except SourceError as exc:
                last = exc
                if _may_retry(exc, attempt, settings):
                    attempt += 1
                    continue
                break
            try:
                if opened.total is not None and ident.size is not None and opened.total != ident.size:
                    last = SourceError(f"{url} serves {opened.total} bytes, expected {ident.size}", url=url)
                    break
                if opened.total is not None:
                    _check_space(store.root, 2 * (opened.total - opened.start) + DISK_MARGIN, asset.id, force)
                atomic_write_json(state_p, {"url": url, "validator": opened.validator}, durable=False)
                mode = "r+b" if opened.start else "wb"
                if not part.exists():
                    mode = "wb"
                if progress is not None:
                    progress.start(asset.id, f"{asset.id}: {asset.archive}", opened.total)
                    progress.set_done(asset.id, opened.start)
                with open(part, mode) as f:
                    f.seek(opened.start)
                    f.truncate()
                    while True:
                        data = opened.read(CHUNK)
                        if not data:
                            break
                        f.write(data)
                        if progress is not None:
                            progress.advance(asset.id, len(data))
                    f.flush()
                    os.fsync(f.fileno())
                    got = f.tell()
                if opened.total is not None and got != opened.total:
                    raise SourceError(f"the transfer from {url} stopped at byte {got} of {opened.total}", url=url, retryable=True)
            except SourceError as exc:
                last = exc
                if _may_retry(exc, attempt, settings, wait=False):   # cut mid-transfer: resume at once
                    attempt += 1
                    continue
                break
            finally:
                opened.close()
                if progress is not None:
                    progress.finish(asset.id)
            sha = sha256_file(part)
            if ident.sha256 and sha != ident.sha256:
                part.unlink(missing_ok=True)
                last = VerificationError(f"wrong sha256 for {asset.archive} from {url}", expected=ident.sha256, got=sha,
                                         did="The download was discarded")
                break
            how = ident.origin
            if not ident.sha256:
                store.record(asset.id, path=asset.path, size=got, sha256=sha, source=url, how="tofu",
                             etag=opened.etag, last_modified=opened.last_modified)
                how = "tofu"
            store.place(part, dest, sha)
            with contextlib.suppress(FileNotFoundError):
                state_p.unlink()
            return dest, url, {"size": got, "sha256": sha, "how": how, "downloaded": got - opened.start}
    assert last is not None
    raise last


def _install(asset, store, staging: Staging, out: Dict[str, Any], final: Path) -> List[str]:
    """Write the record, move the staged tree into place, stamp every file, drop staging."""
    cp: Checkpoint = out["cp"]
    notes = _lineidx_notes(staging.tree, cp)
    rec = records.DatasetRecord(
        id=asset.id, path=asset.path,
        archive={"name": asset.archive, "size": out["size"], "sha256": out["sha256"], "source": out["url"],
                 "how": out.get("how") or "", "etag": out.get("etag"), "last_modified": out.get("last_modified")},
        layout=cp.layout or "", files={m.rel: [m.size, m.sha256] for m in cp.members}, tsv=dict(cp.tsv),
        notes=notes, created_at=now_iso())
    fsync_tree(staging.tree)
    records.save(store.state_dir, rec)
    final.parent.mkdir(parents=True, exist_ok=True)
    old = None
    if final.exists() or final.is_symlink():
        old = staging.dir / f"old-{int(time.time())}"
        os.replace(final, old)
    os.replace(staging.tree, final)
    fsync_dir(final.parent)
    store.put_stamps({final.joinpath(*m.rel.split("/")): m.sha256 for m in cp.members})
    staging.remove()
    return notes


def _lineidx_notes(tree: Path, cp: Checkpoint) -> List[str]:
    """Compare each TSV's true row starts (seen while streaming) with its shipped lineidx."""
    from metro_assets.datasets.tsv import canonical_digest, lineidx_path, read_lineidx

    notes = []
    for rel, info in sorted(cp.tsv.items()):
        li = lineidx_path(tree / rel)
        if not li.exists():
            continue
        parsed = read_lineidx(li)
        info["lineidx_exact"] = not parsed.bad_lines and canonical_digest(parsed.offsets) == info["starts_sha256"]
        if not info["lineidx_exact"]:
            notes.append(f"{li.relative_to(tree).as_posix()} does not match the rows of {rel}")
    return notes


# --------------------------------------------------------------------------- verify

def verify_dataset(asset, store, *, full: bool = False, deep: bool = False, sample: Optional[int] = None,
                   progress=None) -> DatasetVerifyResult:
    """Check a dataset against its record (fast path: stamps), and with ``deep`` its TSV content."""
    from metro_assets.hashing import sha256_file

    t0 = time.monotonic()
    final = store.root.joinpath(*PurePosixPath(asset.path).parts)
    rec = records.load(store.state_dir, asset.id)
    findings: List[Finding] = []
    if not final.is_dir():
        return DatasetVerifyResult(asset.id, "missing", asset.path, findings=(Finding(asset.path, None, "not present"),),
                                   seconds=time.monotonic() - t0)
    if rec is None:
        findings.append(Finding(asset.path, None, "no extraction record (not fetched by metro-assets); sizes and hashes "
                                f"cannot be checked. Re-fetch with `metro-assets fetch {asset.id} --force`", "warning"))
        status = "unverified"
        files, total, hashed = 0, 0, 0
    else:
        stamps = store.load_stamps()
        new_stamps: Dict[Path, str] = {}
        files, total, hashed = len(rec.files), 0, 0
        if progress is not None:
            progress.start(asset.id, f"{asset.id}: verify", rec.total_bytes if full else None)
        for rel, (size, sha) in sorted(rec.files.items()):
            p = final.joinpath(*rel.split("/"))
            total += size
            try:
                st = p.lstat()
            except FileNotFoundError:
                findings.append(Finding(rel, None, "missing (listed in the extraction record)"))
                continue
            if not p.is_file() or p.is_symlink():
                findings.append(Finding(rel, None, "not a regular file"))
                continue
            if st.st_size != size:
                findings.append(Finding(rel, None, f"size {st.st_size}, expected {size}"))
                continue
            if not full and store.stamped_sha(p, st, stamps) == sha:
                continue
            got = sha256_file(p, progress=(lambda n: progress.advance(asset.id, n)) if progress is not None else None)
            hashed += size
            if got != sha:
                findings.append(Finding(rel, None, f"sha256 {got[:16]}..., expected {sha[:16]}... (changed since extraction)"))
            else:
                new_stamps[p] = sha
        store.put_stamps(new_stamps)
        known = set(rec.files)
        for dirpath, _dirs, fns in os.walk(final):
            for fn in fns:
                rel = Path(dirpath, fn).relative_to(final).as_posix()
                if rel not in known:
                    findings.append(Finding(rel, None, "not in the extraction record (added after extraction)", "warning"))
        if progress is not None:
            progress.finish(asset.id)
        status = "corrupt" if any(f.severity == "error" for f in findings) else "ok"
    rows = 0
    if deep:
        from metro_assets.datasets.deep import deep_verify

        report = deep_verify(final, domain="hand" if "hand" in asset.tags or "freihand" in asset.path.lower() else "body",
                             sample=sample, record=rec, store=store, dataset_id=asset.id)
        findings.extend(report.findings)
        rows = report.rows_checked
        if any(f.severity == "error" for f in report.findings):
            status = "corrupt"
    return DatasetVerifyResult(asset.id, status, asset.path, files=files, bytes=total, hashed_bytes=hashed,
                               findings=tuple(findings), deep=deep, rows_checked=rows, seconds=time.monotonic() - t0)


# --------------------------------------------------------------------------- reindex

def reindex_dataset(asset, store, *, all_files: bool = False) -> ReindexResult:
    """Regenerate missing (or, with ``all_files``, every) ``.lineidx`` of a dataset from its TSVs."""
    from metro_assets.datasets.tsv import lineidx_path, regenerate
    from metro_assets.hashing import sha256_file

    final = store.root.joinpath(*PurePosixPath(asset.path).parts)
    if not final.is_dir():
        raise UsageError(f"Dataset {asset.id} is not present at {final}", did="Nothing was changed",
                         next_command=f"metro-assets fetch {asset.id}")
    regenerated, ok = [], []
    for tsv in sorted(final.rglob("*.tsv")):
        li = lineidx_path(tsv)
        rel = li.relative_to(final).as_posix()
        if li.exists() and not all_files:
            ok.append(rel)
            continue
        _, rows = regenerate(tsv)
        regenerated.append((rel, rows))
    rec = records.load(store.state_dir, asset.id)
    if rec is not None and regenerated:
        stamps = {}
        for rel, _rows in regenerated:
            p = final / rel
            sha = sha256_file(p)
            rec.files[rel] = [p.stat().st_size, sha]
            stamps[p] = sha
            rec.notes.append(f"regenerated {rel} by `metro-assets datasets reindex` at {now_iso()}")
        records.save(store.state_dir, rec)
        store.put_stamps(stamps)
    return ReindexResult(asset.id, asset.path, tuple(regenerated), tuple(ok))
