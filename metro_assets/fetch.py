"""fetch: plan, then download, check and place each selected asset.

``plan()`` is pure (it reads the disk, changes nothing) and decides per asset:
present / download / resume / manual / blocked.  ``--dry-run`` prints it.
``fetch()`` executes it: per asset, under a per-asset lock, it tries each
usable source in order; bytes go to a hidden temp file beside the
destination, are hashed while they arrive, structurally checked, fsynced and
only then ``os.replace``-d into place.  Correctness never depends on the lock:
a second process that loses the race finds a verified file and skips it.
"""
from __future__ import annotations

import os
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from metro_assets import checks
from metro_assets.errors import (EXIT_ACTION_REQUIRED, EXIT_FAILED, EXIT_OK, DiskSpaceError, MetroAssetsError,
                                 SourceError, VerificationError)
from metro_assets.manifest import Asset, Catalog
from metro_assets.settings import Settings
from metro_assets.sources import Candidate, candidates, copy_local
from metro_assets.store import Store
from metro_assets.verify import AssetStatus, inspect, verify_assets

ACTIONS = ("present", "download", "resume", "manual", "blocked")


@dataclass(frozen=True)
class PlanItem:
    asset: Asset
    action: str                         # one of ACTIONS
    candidates: Tuple[Candidate, ...]
    bytes: Optional[int]                # bytes to transfer (None = unknown)
    resume_from: int = 0
    reason: str = ""
    status: Optional[AssetStatus] = None

    @property
    def source(self) -> Optional[Candidate]:
        return next((c for c in self.candidates if c.usable), None)

    def to_json(self) -> Dict[str, Any]:
        src = self.source
        return {"id": self.asset.id, "group": self.asset.group, "path": self.asset.path, "action": self.action,
                "source": src.url if src else None, "bytes": self.bytes, "resume_from": self.resume_from,
                "reason": self.reason, "manual": self.asset.manual,
                "sources": [{"url": c.url, "declared": c.declared or None, "label": c.label, "kind": c.kind,
                             "dead_since": c.dead_since, "reason": c.reason} for c in self.candidates]}


@dataclass(frozen=True)
class Plan:
    items: Tuple[PlanItem, ...]
    free_bytes: Optional[int]
    explicit: Tuple[str, ...] = ()

    @property
    def bytes_needed(self) -> int:
        return sum((i.bytes or 0) for i in self.items if i.action in ("download", "resume"))

    @property
    def unknown_sizes(self) -> int:
        return sum(1 for i in self.items if i.action in ("download", "resume") and i.bytes is None)

    def to_json(self) -> Dict[str, Any]:
        return {"bytes_needed": self.bytes_needed, "unknown_sizes": self.unknown_sizes, "free_bytes": self.free_bytes,
                "disk_ok": self.free_bytes is None or self.bytes_needed <= self.free_bytes,
                "assets": [i.to_json() for i in self.items]}


@dataclass(frozen=True)
class Outcome:
    id: str
    path: str
    action: str          # present | downloaded | resumed | manual | blocked | failed | skipped
    status: str          # ok | unverified | action-required | failed
    source: Optional[str] = None
    size: Optional[int] = None
    sha256: Optional[str] = None
    recorded: bool = False           # identity newly recorded in the lockfile (trust on first use)
    seconds: float = 0.0
    message: str = ""
    next_command: str = ""
    attempts: Tuple[Dict[str, Any], ...] = ()
    optional: bool = False
    manual: bool = False

    def to_json(self) -> Dict[str, Any]:
        d = asdict(self)
        d["attempts"] = list(self.attempts)
        return d


@dataclass(frozen=True)
class FetchResult:
    outcomes: Tuple[Outcome, ...]
    seconds: float
    bytes_downloaded: int
    explicit: Tuple[str, ...] = ()

    @property
    def exit_code(self) -> int:
        failed = manual = False
        for o in self.outcomes:
            if o.optional and o.id not in self.explicit and o.status in ("action-required",):
                continue
            if o.status == "failed":
                failed = True
            elif o.status == "action-required":
                manual = True
        return EXIT_FAILED if failed else EXIT_ACTION_REQUIRED if manual else EXIT_OK

    def to_json(self) -> Dict[str, Any]:
        return {"ok": self.exit_code == EXIT_OK, "exit_code": self.exit_code, "seconds": round(self.seconds, 3),
                "bytes_downloaded": self.bytes_downloaded, "assets": [o.to_json() for o in self.outcomes]}


# ----------------------------------------------------------------------------- plan

def plan(assets: Sequence[Asset], store: Store, settings: Settings, *, explicit: Sequence[str] = (),
         probe: bool = False) -> Plan:
    """Decide per asset what fetch would do.  Changes nothing on disk.

    ``probe=True`` asks the first usable source for the size of assets whose
    size is unknown (HEAD, or stat for file://), for the disk-space preflight.
    """
    p = _plan(assets, store, settings, explicit=explicit)
    if not probe:
        return p
    unknown = [i for i, it in enumerate(p.items) if it.action in ("download", "resume") and it.bytes is None and it.source]
    if not unknown:
        return p
    from metro_assets.sources import probe_size

    with ThreadPoolExecutor(max_workers=min(8, len(unknown))) as ex:
        sizes = list(ex.map(lambda i: probe_size(p.items[i].source), unknown))
    items = list(p.items)
    for i, size in zip(unknown, sizes):
        if size is None:
            continue
        it = items[i]
        if it.asset.kind == "dataset":
            from metro_assets import datasets

            need = datasets.dataset_disk_needed(it.asset, store, size=size)
            size = need if need is not None else size
        elif it.action == "resume":
            size = max(size - it.resume_from, 0)
        items[i] = PlanItem(it.asset, it.action, it.candidates, size, it.resume_from, it.reason, it.status)
    return Plan(tuple(items), p.free_bytes, p.explicit)


def _plan(assets: Sequence[Asset], store: Store, settings: Settings, *, explicit: Sequence[str] = ()) -> Plan:
    # What is on disk: verify's fast path (stamps), hashing un-stamped files on all cores.
    files = [a for a in assets if a.kind != "dataset"]
    status = {s.id: s for s in verify_assets(files, store).statuses}
    entries = store.lock_entries()
    items: List[PlanItem] = []
    for asset in assets:
        cands = tuple(candidates(asset, settings))
        ident = store.identity(asset, entries)
        if asset.kind == "dataset":
            items.append(_plan_dataset(asset, store, settings, cands, ident.size))
            continue
        st = status[asset.id]
        if st.status in ("ok", "unverified"):
            items.append(PlanItem(asset, "present", cands, 0, reason=st.detail, status=st))
            continue
        if asset.manual:
            items.append(PlanItem(asset, "manual", cands, None, reason=st.fix, status=st))
            continue
        reason = st.detail if st.status == "corrupt" else ""
        usable = [c for c in cands if c.usable]
        if not usable:
            why = _blocked_reason(asset, cands, settings)
            items.append(PlanItem(asset, "blocked", cands, ident.size, reason=why, status=st))
            continue
        dest = store.dest(asset)
        part, state = store.part_path(dest), store.state_path(dest)
        done = part.stat().st_size if part.exists() and state.exists() else 0
        if done:
            total = ident.size
            items.append(PlanItem(asset, "resume", cands, (total - done) if total else None, resume_from=done,
                                  reason=reason, status=st))
        else:
            items.append(PlanItem(asset, "download", cands, ident.size, reason=reason, status=st))
    try:
        probe = store.root
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        free = shutil.disk_usage(probe).free
    except OSError:
        free = None
    return Plan(tuple(items), free, tuple(explicit))


def _plan_dataset(asset: Asset, store: Store, settings: Settings, cands, size) -> PlanItem:
    from metro_assets import datasets

    r = datasets.verify_dataset(asset, store)
    if r.status in ("ok", "unverified"):
        return PlanItem(asset, "present", cands, 0, reason=getattr(r, "detail", ""))
    usable = [c for c in cands if c.usable]
    if not usable:
        return PlanItem(asset, "blocked", cands, size, reason=_blocked_reason(asset, cands, settings))
    need = datasets.dataset_disk_needed(asset, store)
    return PlanItem(asset, "download", cands, need if need is not None else size)


def _blocked_reason(asset: Asset, cands: Sequence[Candidate], settings: Settings) -> str:
    dead = [c for c in cands if c.dead_since]
    if settings.offline and any(c.kind == "offline" for c in cands):
        return ("--offline: only file:// mirrors may be used and none was given; "
                f"next: metro-assets fetch {asset.id} --mirror /path/to/mirror")
    if dead:
        c = dead[0]
        return (f"every source is dead: {c.declared or c.url} is known dead since {c.dead_since} ({c.reason}). "
                f"Next: metro-assets fetch {asset.id} --mirror BASE (a server or folder holding {asset.mirror_path}), "
                f"or metro-assets import /path/to/{Path(asset.path).name} if you have a copy")
    return f"no usable source; next: metro-assets fetch {asset.id} --mirror BASE"


def check_disk(p: Plan, *, force: bool = False) -> None:
    if p.free_bytes is not None and p.bytes_needed > p.free_bytes and not force:
        from metro_assets.console import human_bytes

        raise DiskSpaceError(
            "Not enough free disk space for this fetch",
            expected=f"at least {human_bytes(p.bytes_needed)} free", got=f"{human_bytes(p.free_bytes)} free",
            did="Nothing was downloaded",
            next_command="free some space, pick fewer assets, or add --force to start anyway")


# ----------------------------------------------------------------------------- execute

class _Counter:
    def __init__(self) -> None:
        self.n = 0
        self.lock = threading.Lock()
        self.stamps: Dict[Path, str] = {}   # placed files, stamped together at the end

    def add(self, n: int) -> None:
        with self.lock:
            self.n += n

    def placed(self, dest: Path, sha: str) -> None:
        with self.lock:
            self.stamps[dest] = sha


def fetch(catalog: Catalog, names: Sequence[str], settings: Settings, *, progress=None, force: bool = False,
          keep_archive: bool = False, connections: Optional[int] = None, log=None) -> FetchResult:
    """Fetch the selection.  ``log(msg)`` receives one line per event (or None)."""
    t0 = time.monotonic()
    store = Store(settings.root)
    assets = catalog.select(names)
    explicit = tuple(n for n in names if n in catalog.by_id())
    p = plan(assets, store, settings, explicit=explicit, probe=True)
    check_disk(p, force=force)
    settings.root.mkdir(parents=True, exist_ok=True)
    counter = _Counter()
    budget = None
    try:
        from metro_assets.transfer import ConnectionBudget

        budget = ConnectionBudget(max(settings.jobs, 1) * max(connections or settings.connections or 4, 1))
    except ImportError:
        pass
    if progress is not None:
        for it in p.items:
            if it.action in ("download", "resume"):
                progress.add_expected(it.bytes)

    def run(item: PlanItem) -> Outcome:
        try:
            return _execute(item, store, settings, progress=progress, counter=counter, budget=budget,
                            connections=connections, keep_archive=keep_archive, force=force, log=log)
        except MetroAssetsError as exc:
            return _failed(item, exc.paragraph(), exc.next_command or "")

    work = [it for it in p.items if it.action in ("download", "resume")]
    outcomes: Dict[str, Outcome] = {}
    for it in p.items:
        if it.action not in ("download", "resume"):
            outcomes[it.asset.id] = _static_outcome(it, settings.root)
    if work:
        try:
            ex = ThreadPoolExecutor(max_workers=min(settings.jobs, len(work)), thread_name_prefix="metro-fetch")
            try:
                for it, oc in zip(work, ex.map(run, work)):
                    outcomes[it.asset.id] = oc
                    if log:
                        log(_log_line(oc))
            except KeyboardInterrupt:
                # Ctrl-C: stop the transfers now (they keep their bytes and resume state),
                # start nothing new, and wait only for the workers to notice.
                _cancel_transfers()
                ex.shutdown(wait=True, cancel_futures=True)
                raise
            ex.shutdown(wait=True)
        finally:
            # Stamps are a cache: if we die before this, verify simply re-hashes.
            store.commit_placed(counter.stamps)
    ordered = tuple(outcomes[it.asset.id] for it in p.items)
    return FetchResult(ordered, time.monotonic() - t0, counter.n, explicit)


def _cancel_transfers() -> None:
    import sys

    http = sys.modules.get("metro_assets.http")
    if http is not None:
        http.SHUTDOWN.set()          # dataset streams stop at their next chunk
    transfer = sys.modules.get("metro_assets.transfer")
    if transfer is not None:
        transfer.cancel_all()        # file downloads stop at once (blocked reads are woken)


def _log_line(o: Outcome) -> str:
    if o.status == "failed":
        return f"failed      {o.id} (details below)"
    extra = " (identity recorded in metro-assets.lock)" if o.recorded else ""
    return f"{o.action:<11} {o.id} <- {o.source}{extra}"


def _static_outcome(it: PlanItem, root: Optional[Path] = None) -> Outcome:
    a = it.asset
    if it.action == "present":
        st = it.status
        return Outcome(a.id, a.path, "present", st.status if st else "ok", size=st.got_size if st else None,
                       sha256=(st.got_sha256 or st.sha256) if st else None, message=it.reason, optional=a.optional, manual=a.manual)
    if it.action == "manual":
        return Outcome(a.id, a.path, "manual", "action-required", message=manual_message(a, root), next_command=it.reason,
                       optional=a.optional, manual=True)
    return Outcome(a.id, a.path, "blocked", "failed", message=it.reason,
                   next_command=f"metro-assets fetch {a.id} --mirror BASE", optional=a.optional)


def manual_message(asset: Asset, root: Optional[Path] = None) -> str:
    from metro_assets.importer import manual_instructions

    return manual_instructions(asset, root)


def _failed(item: PlanItem, message: str, next_command: str, attempts=()) -> Outcome:
    a = item.asset
    return Outcome(a.id, a.path, "failed", "failed", message=message, next_command=next_command,
                   attempts=tuple(attempts), optional=a.optional)


def _execute(item: PlanItem, store: Store, settings: Settings, *, progress, counter, budget, connections,
             keep_archive, force, log) -> Outcome:
    a = item.asset
    if a.kind == "dataset":
        return _execute_dataset(item, store, settings, progress=progress, counter=counter, keep_archive=keep_archive, force=force)
    dest = store.dest(a)
    part, state = store.part_path(dest), store.state_path(dest)
    t0 = time.monotonic()
    with store.asset_lock(a.id):
        # Another process may have finished it while we waited for the lock (or recorded
        # its identity on first use): look again, reading only what this asset needs.
        entries = store.lock_entries() if a.sha256 is None else {}
        if os.path.lexists(dest):
            st, needs_hash = inspect(a, store, stamps=store.load_stamps(), entries=entries)
        else:
            st, needs_hash = item.status, None
        if st.status == "ok" and needs_hash is not None:
            # placed by another process that has not written its stamps yet
            from metro_assets.hashing import sha256_file

            got = sha256_file(needs_hash)
            if got == store.identity(a, entries).sha256:
                counter.placed(needs_hash, got)
                needs_hash = None
                st = AssetStatus(**{**asdict(st), "got_sha256": got})
            else:
                st = AssetStatus(**{**asdict(st), "status": "corrupt"})
        if st is not None and st.status == "ok" and needs_hash is None:
            return Outcome(a.id, a.path, "present", st.status, size=st.got_size, sha256=st.got_sha256,
                           message="placed by another process", optional=a.optional)
        ident = store.identity(a, entries)
        attempts: List[Dict[str, Any]] = []
        key = a.id
        if progress is not None:
            progress.start(key, a.path, ident.size)

        def prog(n: int) -> None:
            counter.add(n)
            if progress is not None:
                progress.advance(key, n)

        def sniff(head: bytes) -> None:
            checks.sniff(a.kind, head, name=a.path)

        try:
            for cand in item.candidates:
                if not cand.usable:
                    if cand.dead_since:
                        attempts.append({"url": cand.declared or cand.url, "skipped": True,
                                         "error": f"known dead since {cand.dead_since}: {cand.reason}"})
                    continue
                try:
                    if cand.kind == "file":
                        res = copy_local(cand.url, part, expected_size=ident.size, expected_sha256=ident.sha256,
                                         sniff=sniff, progress=prog)
                        state.unlink(missing_ok=True)
                    else:
                        from metro_assets import transfer

                        res = transfer.download(cand.url, part, state, settings=settings, expected_size=ident.size,
                                                expected_sha256=ident.sha256, connections=connections,
                                                budget=budget, sniff=sniff, progress=prog)
                    if a.kind not in checks.SNIFF_ONLY_KINDS:
                        checks.check_file(part, a.kind, name=a.path)
                except (SourceError, VerificationError) as exc:
                    # StructuralError is a VerificationError: the bytes are not this asset
                    detail = exc.what + (f" (expected {exc.expected}, got {exc.got})" if exc.expected and exc.got else "")
                    attempts.append({"url": cand.url, "error": detail, "status": getattr(exc, "status", None),
                                     "kind": type(exc).__name__, "next_command": exc.next_command})
                    if isinstance(exc, VerificationError):
                        part.unlink(missing_ok=True)
                        state.unlink(missing_ok=True)
                    if log:
                        left = any(c.usable for c in item.candidates[item.candidates.index(cand) + 1:])
                        log(f"source failed {a.id}: {exc.what}" + ("; trying the next source" if left else ""))
                    continue
                recorded = False
                if ident.sha256 is None:
                    store.record(a.id, path=a.path, size=res.size, sha256=res.sha256, source=cand.url, how="tofu",
                                 etag=res.etag, last_modified=res.last_modified)
                    recorded = True
                store.place(part, dest, res.sha256, batch=True)
                counter.placed(dest, res.sha256)
                state.unlink(missing_ok=True)
                action = "resumed" if getattr(res, "resumed_bytes", 0) else "downloaded"
                return Outcome(a.id, a.path, action, "ok", source=cand.url, size=res.size, sha256=res.sha256,
                               recorded=recorded, seconds=time.monotonic() - t0, attempts=tuple(attempts),
                               optional=a.optional)
        finally:
            if progress is not None:
                progress.finish(key)
    nxt = next((x["next_command"] for x in attempts if x.get("next_command")), None)
    return _failed(item, _no_source_message(a, attempts), nxt or f"metro-assets fetch {a.id} --mirror BASE", attempts)


def _no_source_message(a: Asset, attempts: Sequence[Dict[str, Any]]) -> str:
    if not attempts:
        return "no usable source"
    lines = "; ".join(f"{x['url']}: {x['error']}" for x in attempts)
    return f"every source failed for {a.path}. {lines}. Nothing was placed; partial downloads are kept for resuming"


def _execute_dataset(item: PlanItem, store: Store, settings: Settings, *, progress, counter, keep_archive, force) -> Outcome:
    from metro_assets import datasets

    a = item.asset
    urls = [c.url for c in item.candidates if c.usable]
    t0 = time.monotonic()
    r = datasets.fetch_dataset(a, urls, store, settings, progress=progress, keep_archive=keep_archive, force=force)
    j = r.to_json() if hasattr(r, "to_json") else {}
    ok = j.get("status", "ok") in ("ok", "present")
    counter.add(int(j.get("bytes_downloaded", 0) or 0))
    return Outcome(a.id, a.path, j.get("action", "downloaded") if ok else "failed", "ok" if ok else "failed",
                   source=j.get("source"), size=j.get("size"), sha256=j.get("sha256"), recorded=bool(j.get("recorded")),
                   seconds=time.monotonic() - t0, message=j.get("message", ""), optional=a.optional)
