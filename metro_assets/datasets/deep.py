"""Deep verification of METRO TSV datasets (DATASETS.md §7, tiers A-D).

Checks, cheapest first: yamls parse (``safe_load``) and reference existing
files inside ``datasets/``; every img/hw/label TSV has a ``.lineidx`` whose
entries are increasing row starts; img/hw/label of one group agree on row
count and keys; linelists are in range and point at non-empty labels; hw
rows hold positive sizes; label rows are strict JSON (no NaN/Infinity) with
the body or hand fields and shapes; img rows are strict base64 of a JPEG
(``FF D8`` ... ``FF D9``) whose SOF size equals the hw row.

Rows are 0-based (as in a linelist).  ``sample=N`` checks N rows per group
(first, last and a fixed pseudo-random choice); ``None`` checks every row.
A ``.lineidx`` is proven exact for free when the TSV is unchanged since
extraction (the record keeps the digest of the row starts seen while
streaming); otherwise by reading the rows.
"""
from __future__ import annotations

import binascii
import json
import math
import os
import random
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from metro_assets.datasets.tsv import canonical_digest, lineidx_path, read_lineidx, scan_tsv

YAML_KEYS = {"composite", "img", "hw", "label", "linelist"}
B64_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
MAX_FINDINGS_PER_FILE = 5
SMALL_FILE = 64 << 20
SHAPES = {"body": {"joints": 24, "pose": 72}, "hand": {"joints": 21, "pose": 48}}
HAS_KEYS = ("has_2d_joints", "has_3d_joints", "has_smpl")


@dataclass
class DeepReport:
    findings: list = field(default_factory=list)
    rows_checked: int = 0


class _Reject(ValueError):
    pass


def _no_constants(token: str):
    raise _Reject(f"non-standard JSON token {token}")


def _json(text: bytes):
    return json.loads(text, parse_constant=_no_constants)


# --------------------------------------------------------------------------- TSV access

class Tsv:
    def __init__(self, path: Path, shown: str) -> None:
        self.path = path
        self.shown = shown
        self.size = path.stat().st_size
        self.offsets = array("q")
        self.exact: Optional[bool] = None
        self.lineidx_ok = True
        self._f = None

    def open(self):
        if self._f is None:
            self._f = open(self.path, "rb")
        return self._f

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None

    @property
    def rows(self) -> int:
        return len(self.offsets)

    def row(self, i: int) -> bytes:
        f = self.open()
        start = self.offsets[i]
        end = self.offsets[i + 1] if i + 1 < len(self.offsets) else self.size
        if start < 0 or end < start or start >= self.size:
            return b""
        f.seek(start)
        return f.read(end - start)

    def key(self, i: int) -> bytes:
        f = self.open()
        f.seek(self.offsets[i])
        head = f.read(512)
        tab = head.find(b"\t")
        if tab == -1:
            return head.split(b"\n", 1)[0]
        return head[:tab]


def _fields(row: bytes) -> List[bytes]:
    if row.endswith(b"\n"):
        row = row[:-1]
    return [c.strip() for c in row.split(b"\t")]


# --------------------------------------------------------------------------- the verifier

class DeepVerifier:
    def __init__(self, ds_dir: Path, *, domain: str, sample: Optional[int], record=None, store=None,
                 dataset_id: str = "") -> None:
        self.ds = ds_dir
        self.top = ds_dir.parent
        self.domain = domain
        self.sample = sample
        self.record = record
        self.store = store
        self.id = dataset_id or ds_dir.name
        self.report = DeepReport()
        self.tsvs: Dict[Path, Optional[Tsv]] = {}
        self.per_file: Dict[str, int] = {}
        self.stamps = store.load_stamps() if store is not None else None
        self.checked_rows: Dict[Path, set] = {}

    # -- findings
    def add(self, file: str, row: Optional[int], message: str, severity: str = "error") -> None:
        from metro_assets.datasets.api import Finding

        n = self.per_file.get(file, 0) + 1
        self.per_file[file] = n
        if n <= MAX_FINDINGS_PER_FILE or severity != "error":
            self.report.findings.append(Finding(file, row, message, severity))
        elif n == MAX_FINDINGS_PER_FILE + 1:
            self.report.findings.append(Finding(file, None, "more errors in this file not shown", "info"))

    def shown(self, p: Path) -> str:
        try:
            return p.relative_to(self.ds).as_posix()
        except ValueError:
            try:
                return "../" + p.relative_to(self.top).as_posix()
            except ValueError:
                return str(p)

    # -- entry
    def run(self) -> DeepReport:
        groups: List[Dict[str, Any]] = []
        composites: List[Dict[str, Any]] = []
        covered: set = set()
        for y in sorted(self.ds.rglob("*.yaml")):
            g = self.load_yaml(y)
            if g is None:
                continue
            if g.get("composite"):
                composites.append(g)
            else:
                groups.append(g)
                covered.update(p for k in ("img", "hw", "label") if (p := g.get(k)))
        for g in self.paired_groups(covered):
            groups.append(g)
        for p in self.ds.rglob("*.lineidx.8b"):
            self.add(self.shown(p), None, "unexpected file (METRO never reads .lineidx.8b)", "warning")
        for g in groups:
            self.check_group(g)
        for c in composites:
            self.check_composite(c)
        for t in self.tsvs.values():
            if t is not None:
                t.close()
        return self.report

    # -- yaml (tier A)
    def resolve(self, yaml_file: Path, value: Any, key: str) -> Optional[Path]:
        shown = self.shown(yaml_file)
        if not isinstance(value, str) or not value:
            self.add(shown, None, f"{key}: expected a relative path string, got {value!r}")
            return None
        if os.path.isabs(value):
            self.add(shown, None, f"{key}: absolute path {value!r} (must be relative to the yaml's folder)")
            return None
        p = Path(os.path.normpath(yaml_file.parent / value))
        try:
            p.relative_to(self.top)
        except ValueError:
            self.add(shown, None, f"{key}: {value!r} leaves the datasets folder")
            return None
        if not p.is_file() or p.is_symlink():
            self.add(shown, None, f"{key}: references {value!r}, which does not exist ({self.shown(p)})")
            return None
        return p

    def load_yaml(self, y: Path) -> Optional[Dict[str, Any]]:
        import yaml

        shown = self.shown(y)
        try:
            data = yaml.safe_load(y.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            self.add(shown, None, f"does not parse as YAML: {str(exc).splitlines()[0]}")
            return None
        if not isinstance(data, dict):
            self.add(shown, None, "is not a mapping (expected keys img, hw, label, linelist)")
            return None
        for k in data:
            if k not in YAML_KEYS:
                self.add(shown, None, f"unknown key {k!r} (METRO reads only {', '.join(sorted(YAML_KEYS))})", "warning")
        g: Dict[str, Any] = {"yaml": y, "name": shown}
        if data.get("composite"):
            g["composite"] = True
            lists = {}
            for k in ("img", "hw", "label"):
                v = data.get(k)
                if not isinstance(v, list):
                    self.add(shown, None, f"composite {k}: expected a list of TSV paths, got {type(v).__name__}")
                    return None
                lists[k] = [self.resolve(y, e, f"{k}[{i}]") for i, e in enumerate(v)]
            lens = {k: len(v) for k, v in lists.items()}
            if len(set(lens.values())) != 1:
                self.add(shown, None, f"composite lists differ in length: {lens}")
                return None
            g.update(lists)
            g["linelist"] = self.resolve(y, data.get("linelist"), "linelist") if "linelist" in data else None
            if "linelist" not in data:
                self.add(shown, None, "composite yaml has no linelist (METRO requires it)")
            return g
        if "img" not in data:
            self.add(shown, None, "missing required key 'img'")
            return None
        for k in ("img", "hw", "label", "linelist"):
            if k in data:
                g[k] = self.resolve(y, data[k], k)
        g["linelists"] = [g.pop("linelist")] if g.get("linelist") else []
        return g

    def paired_groups(self, covered: set) -> List[Dict[str, Any]]:
        """TSVs no yaml references, paired by name (DATASETS.md §7.4)."""
        out = []
        for img in sorted(self.ds.rglob("*.img.tsv")):
            if img in covered:
                continue
            x, d = img.name[:-len(".img.tsv")], img.parent
            hw = d / f"{x}.hw.tsv"
            labels = [p for p in (d / f"{x}.label.tsv", d / "smpl" / f"{x}.label.tsv", d / "smpl" / f"{x}.label.smpl.p1.tsv")
                      if p.is_file()]
            linelists = sorted(set(d.glob(f"{x}.linelist*.tsv")) | set((d / "smpl").glob(f"{x}.linelist*.tsv")))
            out.append({"name": self.shown(img), "img": img, "hw": hw if hw.is_file() else None,
                        "label": labels[0] if labels else None, "linelists": linelists})
            if not hw.is_file():
                self.add(self.shown(img), None, f"no {x}.hw.tsv beside it", "warning")
        return out

    # -- lineidx (tier B)
    def tsv(self, p: Optional[Path]) -> Optional[Tsv]:
        if p is None:
            return None
        if p in self.tsvs:
            return self.tsvs[p]
        t = Tsv(p, self.shown(p))
        li = lineidx_path(p)
        shown_li = self.shown(li)
        if not li.is_file():
            self.add(shown_li, None, f"missing: METRO cannot read {t.shown} without it. "
                     f"Fix: metro-assets datasets reindex {self.id}")
            t.offsets = scan_tsv(p).starts
            t.exact, t.lineidx_ok = True, False
            self.tsvs[p] = t
            return t
        parsed = read_lineidx(li)
        t.offsets = parsed.offsets
        for row, text in parsed.bad_lines:
            self.add(shown_li, row, f"entry {text!r} is not a decimal offset")
        offs = t.offsets
        if len(offs) and offs[0] != 0:
            self.add(shown_li, 0, f"first offset is {offs[0]}, expected 0")
        prev = -1
        for i, v in enumerate(offs):
            if v >= 0 and v <= prev:
                self.add(shown_li, i, f"offset {v} does not increase (previous {prev})")
            if v >= t.size:
                self.add(shown_li, i, f"offset {v} is beyond the end of {t.shown} ({t.size} bytes)")
            prev = max(prev, v)
        if t.size and t.open().seek(t.size - 1) is not None and t.open().read(1) != b"\n":
            self.add(t.shown, len(offs) - 1 if len(offs) else None, "does not end with a newline")
        t.lineidx_ok = not any(f.file == shown_li and f.severity == "error" for f in self.report.findings)
        t.exact = self.exact_from_record(p, offs) if t.lineidx_ok else False
        if t.lineidx_ok and t.exact is None and (self.sample is None or t.size <= SMALL_FILE):
            t.exact = self.exact_by_scan(t, shown_li)
        elif t.lineidx_ok and t.exact is None:
            self.starts_sampled(t, shown_li)
        self.tsvs[p] = t
        return t

    def exact_from_record(self, p: Path, offs) -> Optional[bool]:
        if self.record is None or self.store is None:
            return None
        rel = self.shown(p)
        info = self.record.tsv.get(rel)
        entry = self.record.files.get(rel)
        if not info or not entry:
            return None
        try:
            st = p.stat()
        except OSError:
            return None
        if self.store.stamped_sha(p, st, self.stamps) != entry[1]:
            return None
        return True if canonical_digest(offs) == info.get("starts_sha256") else None

    def exact_by_scan(self, t: Tsv, shown_li: str) -> bool:
        true = scan_tsv(t.path).starts
        offs = t.offsets
        if len(true) != len(offs):
            self.add(shown_li, None, f"has {len(offs)} entries but {t.shown} has {len(true)} rows")
        bad = 0
        starts = set(true) if len(true) != len(offs) else None
        for i, v in enumerate(offs):
            ok = (v in starts) if starts is not None else (i < len(true) and true[i] == v)
            if not ok:
                bad += 1
                self.add(shown_li, i, f"offset {v} is not a row start of {t.shown}")
        t.lineidx_ok = t.lineidx_ok and not bad and len(true) == len(offs)
        return t.lineidx_ok

    def starts_sampled(self, t: Tsv, shown_li: str) -> None:
        f = t.open()
        for i in self.pick(t.rows):
            v = t.offsets[i]
            if v > 0 and v < t.size:
                f.seek(v - 1)
                if f.read(1) != b"\n":
                    self.add(shown_li, i, f"offset {v} is not a row start of {t.shown}")
                    t.lineidx_ok = False

    # -- row choice
    def pick(self, n: int) -> List[int]:
        if self.sample is None or n <= self.sample:
            return list(range(n))
        k = max(self.sample, 2)
        rng = random.Random(n)
        chosen = {0, n - 1, *rng.sample(range(1, n - 1), max(0, k - 2))}
        return sorted(chosen)

    # -- groups (tiers B-D)
    def check_group(self, g: Dict[str, Any]) -> None:
        img, hw, lab = self.tsv(g.get("img")), self.tsv(g.get("hw")), self.tsv(g.get("label"))
        present = [t for t in (img, hw, lab) if t is not None]
        if not present:
            return
        counts = {t.shown: t.rows for t in present}
        if len(set(counts.values())) > 1:
            ref = present[0]
            for t in present[1:]:
                if t.rows != ref.rows:
                    self.add(t.shown, None, f"has {t.rows} rows but {ref.shown} has {ref.rows} (row-count mismatch in {g['name']})")
        n = min(t.rows for t in present)
        for i in self.pick(n):
            self.report.rows_checked += 1
            hw_size = None
            keys = {}
            if hw is not None and hw.lineidx_ok:
                row = hw.row(i)
                cols = _fields(row)
                keys[hw.shown] = cols[0]
                hw_size = self.check_hw(hw, i, cols)
            if lab is not None and lab.lineidx_ok:
                row = lab.row(i)
                cols = _fields(row)
                keys[lab.shown] = cols[0]
                self.check_label(lab, i, cols)
            if img is not None and img.lineidx_ok:
                row = img.row(i)
                cols = _fields(row)
                keys[img.shown] = cols[0]
                self.check_img(img, i, cols, hw_size)
            if len(set(keys.values())) > 1:
                (a, ka), *rest = keys.items()
                for b, kb in rest:
                    if kb != ka:
                        self.add(b, i, f"key {kb.decode('ascii', 'replace')!r} differs from {a}'s {ka.decode('ascii', 'replace')!r}")
        for ll in g.get("linelists", []):
            self.check_linelist(ll, lab, n)

    def check_hw(self, t: Tsv, i: int, cols: List[bytes]) -> Optional[Tuple[int, int]]:
        if len(cols) < 2:
            self.add(t.shown, i, "expected 2 columns (key, size)")
            return None
        try:
            v = _json(cols[1])
        except (ValueError, _Reject):
            parts = cols[1].split()
            if len(parts) == 2 and all(p.isdigit() for p in parts):
                self.add(t.shown, i, "size in the old 'H W' form (METRO accepts it)", "warning")
                return int(parts[0]), int(parts[1])
            self.add(t.shown, i, f"size is not JSON: {cols[1][:60].decode('ascii', 'replace')!r}")
            return None
        if not (isinstance(v, list) and len(v) == 1 and isinstance(v[0], dict)):
            self.add(t.shown, i, "expected a list with one {height, width} object")
            return None
        h, w = v[0].get("height"), v[0].get("width")
        if not all(isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in (h, w)):
            self.add(t.shown, i, f"height/width must be positive ints, got {h!r}/{w!r}")
            return None
        return h, w

    def check_label(self, t: Tsv, i: int, cols: List[bytes]) -> Optional[bool]:
        """Returns whether the row holds a non-empty annotation list (None: broken)."""
        if len(cols) < 2:
            self.add(t.shown, i, "expected 2 columns (key, JSON annotations)")
            return None
        try:
            v = _json(cols[-1])
        except _Reject as exc:
            self.add(t.shown, i, f"label JSON uses {exc} (NaN/Infinity are not valid)")
            return None
        except ValueError as exc:
            self.add(t.shown, i, f"label is not valid JSON: {exc}")
            return None
        if not isinstance(v, list):
            self.add(t.shown, i, f"label must be a JSON list, got {type(v).__name__}")
            return None
        if not v:
            return False
        msg = label_problem(v[0], self.domain)
        if msg:
            self.add(t.shown, i, msg)
        return True

    def check_img(self, t: Tsv, i: int, cols: List[bytes], hw_size) -> None:
        if len(cols) < 2:
            self.add(t.shown, i, "expected at least 2 columns (key, base64 JPEG)")
            return
        msg, size = jpeg_b64_problem(cols[-1])
        if msg:
            self.add(t.shown, i, msg)
        elif hw_size is not None and size is not None and size != hw_size:
            self.add(t.shown, i, f"JPEG is {size[0]}x{size[1]} (HxW) but the hw row says {hw_size[0]}x{hw_size[1]}")

    def check_linelist(self, p: Path, lab: Optional[Tsv], rows: int) -> None:
        shown = self.shown(p)
        values = []
        for i, line in enumerate(p.read_bytes().splitlines()):
            s = line.strip()
            if not s.isdigit():
                self.add(shown, i, f"expected one non-negative integer, got {line[:40].decode('ascii', 'replace')!r}")
                continue
            v = int(s)
            if v >= rows:
                self.add(shown, i, f"row {v} is out of range (the group has {rows} rows)")
            values.append((i, v))
        if any(b[1] <= a[1] for a, b in zip(values, values[1:])):
            self.add(shown, None, "entries do not strictly increase (unusual for METRO's builders)", "warning")
        if lab is not None and lab.lineidx_ok:
            for k in self.pick(len(values)):
                i, v = values[k]
                if v < rows and self.check_label(lab, v, _fields(lab.row(v))) is False:
                    self.add(shown, i, f"points at row {v} of {lab.shown}, whose annotation list is empty")

    def check_composite(self, c: Dict[str, Any]) -> None:
        p = c.get("linelist")
        n_src = len(c["img"])
        src_rows: List[Optional[int]] = []
        for s in range(n_src):
            ts = [self.tsv(c[k][s]) for k in ("img", "hw", "label")]
            src_rows.append(min(t.rows for t in ts) if all(t is not None for t in ts) else None)
            rows = {t.shown: t.rows for t in ts if t is not None}
            if len(set(rows.values())) > 1:
                self.add(c["name"], None, f"source {s}: row counts differ: {rows}")
        if p is None:
            return
        shown = self.shown(p)
        entries = []
        for i, line in enumerate(p.read_bytes().splitlines()):
            parts = line.split(b"\t")
            if len(parts) != 2 or not all(x.strip().isdigit() for x in parts):
                self.add(shown, i, f"expected 'source<TAB>row', got {line[:40].decode('ascii', 'replace')!r}")
                continue
            s, r = int(parts[0]), int(parts[1])
            if s >= n_src:
                self.add(shown, i, f"source {s} is out of range (the yaml lists {n_src})")
            elif src_rows[s] is not None and r >= src_rows[s]:
                self.add(shown, i, f"row {r} is out of range for source {s} ({src_rows[s]} rows)")
            else:
                entries.append((i, s, r))
        for k in self.pick(len(entries)):
            i, s, r = entries[k]
            lab = self.tsv(c["label"][s])
            if lab is not None and lab.lineidx_ok and src_rows[s] is not None:
                self.report.rows_checked += 1
                if self.check_label(lab, r, _fields(lab.row(r))) is False:
                    self.add(shown, i, f"points at row {r} of {lab.shown}, whose annotation list is empty")


# --------------------------------------------------------------------------- row checks

def _shape(v) -> Tuple[int, ...]:
    shape = []
    while isinstance(v, list):
        shape.append(len(v))
        if not v:
            break
        v = v[0]
    return tuple(shape)


def _all_finite(v) -> bool:
    if isinstance(v, list):
        return all(_all_finite(x) for x in v)
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def label_problem(a: Any, domain: str) -> Optional[str]:
    """What is wrong with annotation object ``a`` (element 0 of a label row), or None."""
    if not isinstance(a, dict):
        return f"annotation must be a JSON object, got {type(a).__name__}"
    need = ("center", "scale", "2d_joints", "has_2d_joints", "3d_joints", "has_3d_joints", "pose", "betas", "has_smpl")
    missing = [k for k in need if k not in a]
    if missing:
        return f"missing field(s) {', '.join(missing)}"
    sh = SHAPES[domain]
    j = sh["joints"]
    for k, width in (("2d_joints", 3), ("3d_joints", 4)):
        s = _shape(a[k])
        if s not in ((j, width), (1, j, width)):
            return f"{k} has shape {s}, expected ({j}, {width}) or (1, {j}, {width}) for a {domain} dataset"
    for k, n in (("pose", sh["pose"]), ("betas", 10)):
        if _shape(a[k]) != (n,):
            return f"{k} has shape {_shape(a[k])}, expected ({n},) for a {domain} dataset"
    if _shape(a["center"]) != (2,):
        return f"center has shape {_shape(a['center'])}, expected (2,)"
    for k in ("center", "scale", "2d_joints", "3d_joints", "pose", "betas"):
        if not _all_finite(a[k]):
            return f"{k} holds a value that is not a finite number"
    if not a["scale"] > 0:
        return f"scale must be > 0, got {a['scale']!r}"
    for k in HAS_KEYS:
        if a[k] not in (0, 1) or isinstance(a[k], bool):
            return f"{k} must be 0 or 1, got {a[k]!r}"
    return None


_TAIL = 8


def jpeg_b64_problem(text: bytes) -> Tuple[Optional[str], Optional[Tuple[int, int]]]:
    """Strict base64 of a JPEG?  Returns (problem or None, (height, width) from SOF or None).

    Validates the whole alphabet at C speed, then decodes only the head (markers,
    SOF) and the last quantum, so a full pass costs about one memory scan.
    """
    n = len(text)
    if n == 0:
        return "empty image column", None
    if n % 4:
        return f"base64 length {n} is not a multiple of 4", None
    body = text.rstrip(b"=")
    if n - len(body) > 2:
        return "base64 has more than two '=' pads", None
    stray = body.translate(None, B64_ALPHABET)
    if stray:
        col = body.find(stray[:1])
        return f"not base64: byte {stray[:1]!r} at column {col}", None
    try:
        head = binascii.a2b_base64(text[:min(n, 1 << 16)])
        tail = binascii.a2b_base64(text[-_TAIL:]) if n >= _TAIL else head
    except binascii.Error as exc:
        return f"bad base64: {exc}", None
    if head[:2] != b"\xff\xd8":
        return f"not a JPEG: starts with {head[:2].hex(' ')} instead of ff d8", None
    if tail[-2:] != b"\xff\xd9":
        return f"JPEG is truncated: ends with {tail[-2:].hex(' ')} instead of ff d9", None
    return None, _sof_size(head)


def _sof_size(data: bytes) -> Optional[Tuple[int, int]]:
    i = 2
    n = len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:
            i += 1
            continue
        seglen = int.from_bytes(data[i + 2:i + 4], "big")
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if i + 9 > n:
                return None
            return int.from_bytes(data[i + 5:i + 7], "big"), int.from_bytes(data[i + 7:i + 9], "big")
        if marker == 0xDA:
            return None
        i += 2 + seglen
    return None


def deep_verify(ds_dir: Path, *, domain: str = "body", sample: Optional[int] = None, record=None, store=None,
                dataset_id: str = "") -> DeepReport:
    return DeepVerifier(ds_dir, domain=domain, sample=sample, record=record, store=store, dataset_id=dataset_id).run()
