"""The one safe checkpoint loader: weights_only, strict, with a load report.

* ``torch.load(weights_only=True)`` always; there is no unsafe fallback.  A
  refused pickle is reported with the offending globals, found by a static
  opcode scan (nothing is executed).
* Both serializations: zip (read with ``mmap=True``) and the legacy pre-1.6
  format of the 2021 release files (torch cannot mmap it).
* Body vs hand and W64 vs W40 are inferred from shapes, so a body checkpoint
  saved under the hand name (upstream issue #3) gets its own message.
* Tensors are assigned into a meta-built network (``assign=True``): no second
  copy of the weights is ever made.
"""
from __future__ import annotations

import io
import pickle
import pickletools
import re
import struct
import time
import zipfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Tuple, Union

import torch

from metro_assets.errors import LoadError
from metro_assets.model.config import VARIANTS, MetroConfig, get_config

ZIP_MAGIC = b"PK\x03\x04"
LEGACY_MAGIC = b"\x80\x02\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19."   # pickle of torch's legacy magic number
KIND_NAMES = {"body": "body (metro_h36m / metro_3dpw)", "hand": "hand (metro_hand)", "hrnet": "ImageNet HRNet"}
_SAFE_GLOBAL_PREFIXES = ("torch.", "collections.OrderedDict", "builtins.", "__builtin__.")

Shape = Tuple[int, ...]


@dataclass(frozen=True)
class KeyMismatch:
    key: str
    expected: str     # e.g. "float32 (445, 49, 1)"
    got: str


@dataclass(frozen=True)
class LoadReport:
    """What loading a checkpoint found.  ``ok`` means a strict load succeeded."""

    path: Optional[str]
    format: str                         # "zip" | "legacy" | "in-memory"
    kind: Optional[str]                 # inferred: "body" | "hand" | "hrnet" | None
    arch: Optional[str]                 # inferred: "w64" | "w40" | "tiny" | None
    variant: Optional[str]              # config name compared against, e.g. "body-w64"
    num_keys: int
    num_expected: int
    tensor_bytes: int
    missing: Tuple[str, ...] = ()
    unexpected: Tuple[str, ...] = ()
    mismatched: Tuple[KeyMismatch, ...] = ()
    stripped_prefix: Optional[str] = None
    seconds: float = 0.0
    unread: Tuple[str, ...] = ()       # dead weights left unread (zeros) to save memory; see is_unused

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched) and self.num_keys == self.num_expected

    def problems(self, limit: int = 3) -> str:
        parts = []
        for label, items in (("missing", self.missing), ("unexpected", self.unexpected)):
            if items:
                parts.append(f"{len(items)} {label} ({', '.join(items[:limit])}{', ...' if len(items) > limit else ''})")
        if self.mismatched:
            shown = "; ".join(f"{m.key}: expected {m.expected}, got {m.got}" for m in self.mismatched[:limit])
            parts.append(f"{len(self.mismatched)} mis-shaped ({shown}{'; ...' if len(self.mismatched) > limit else ''})")
        return ", ".join(parts) or "none"

    def to_json(self) -> dict:
        return {"path": self.path, "format": self.format, "kind": self.kind, "arch": self.arch,
                "variant": self.variant, "ok": self.ok, "keys": self.num_keys, "expected_keys": self.num_expected,
                "tensor_bytes": self.tensor_bytes, "missing": list(self.missing), "unexpected": list(self.unexpected),
                "mismatched": [[m.key, m.expected, m.got] for m in self.mismatched],
                "stripped_prefix": self.stripped_prefix, "load_seconds": round(self.seconds, 3),
                "unread": len(self.unread)}


# --------------------------------------------------------------------------- expected key/shape lists

def _describe(dtype: torch.dtype, shape: Iterable[int]) -> str:
    return f"{str(dtype).replace('torch.', '')} {tuple(shape)}"


@lru_cache(maxsize=None)
def expected_signature(name: str) -> Tuple[Tuple[str, Shape, torch.dtype], ...]:
    """Ordered (key, shape, dtype) of a variant's state dict, from a meta-device build (no memory)."""
    from metro_assets.model.metro import build_model

    model = build_model(name, device="meta")
    return tuple((k, tuple(v.shape), v.dtype) for k, v in model.state_dict().items())


@lru_cache(maxsize=None)
def hrnet_signature(width: int) -> Tuple[Tuple[str, Shape, torch.dtype], ...]:
    """The ImageNet HRNet checkpoint: the METRO backbone's keys without ``backbone.``."""
    body = expected_signature(f"body-w{width}")
    return tuple((k[len("backbone."):], s, d) for k, s, d in body if k.startswith("backbone."))


def signature_digest(sig: Iterable[Tuple[str, Shape, torch.dtype]]) -> str:
    """sha256 over ``key shape dtype`` lines; compact enough to pin in tests."""
    import hashlib

    text = "".join(f"{k} {list(s)} {str(d).replace('torch.', '')}\n" for k, s, d in sig)
    return hashlib.sha256(text.encode()).hexdigest()


# --------------------------------------------------------------------------- reading

def is_unused(key: str) -> bool:
    """Weights every checkpoint carries but the forward pass never reads (spec section 6, 11.2)."""
    return key.startswith("backbone.classifier.") or (
        key.startswith("trans_encoder.") and (".bert.embeddings." in key or ".bert.pooler." in key))


def sniff_format(path: Path) -> str:
    """"zip" | "legacy", or a LoadError that says what the file is instead."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(512)
    except FileNotFoundError:
        raise LoadError(f"No checkpoint at {path}", expected="a torch checkpoint file", got="no file") from None
    except OSError as exc:
        raise LoadError(f"Cannot read {path}", got=exc.strerror or str(exc)) from None
    if size == 0:
        raise LoadError(f"{path} is empty (0 bytes)", expected="a torch checkpoint",
                        did="A failed or interrupted download leaves such files",
                        next_command=f"delete it and fetch again: metro-assets fetch {_asset_hint(path)} --mirror BASE")
    text = head.lstrip().lower()
    if text.startswith((b"<!doctype", b"<html", b"<?xml", b"<head", b"<body")) or b"<html" in text[:256]:
        raise LoadError(f"{path} is an HTML/XML page, not a checkpoint", expected="a torch checkpoint (zip or legacy pickle)",
                        got=repr(head[:60].decode("latin1")),
                        did="A download link answered with an error or login page instead of the file",
                        next_command=f"delete it and fetch again: metro-assets fetch {_asset_hint(path)} --mirror BASE")
    if head.startswith(ZIP_MAGIC):
        return "zip"
    if head.startswith(LEGACY_MAGIC):
        return "legacy"
    raise LoadError(f"{path} is not a torch checkpoint", expected="zip magic PK\\x03\\x04 or torch's legacy pickle header",
                    got=repr(head[:16]), next_command=f"metro-assets verify {_asset_hint(path)}")


def _asset_hint(path: Path) -> str:
    name = Path(path).name
    if "hand" in name:
        return "hand"
    if "h36m" in name or "3dpw" in name:
        return "body"
    return "checkpoints"


def _pickle_streams(path: Path, fmt: str) -> List[bytes]:
    if fmt == "zip":
        with zipfile.ZipFile(path) as z:
            return [z.read(n) for n in z.namelist() if n.endswith("data.pkl")]
    with open(path, "rb") as f:
        return [f.read(8 << 20)]   # the object pickle sits at the start; storages follow


def scan_globals(path: Path, fmt: str) -> List[str]:
    """Every global a checkpoint's pickle names, by static opcode scan (executes nothing)."""
    found: List[str] = []
    for data in _pickle_streams(path, fmt):
        stream = io.BytesIO(data)
        for _ in range(8):  # legacy files hold several pickles back to back
            strings: List[str] = []
            try:
                for op, arg, _pos in pickletools.genops(stream):
                    if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE", "BINSTRING", "SHORT_BINSTRING"):
                        strings.append(str(arg))
                    elif op.name == "GLOBAL":
                        found.append(str(arg).replace(" ", "."))
                    elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                        found.append(f"{strings[-2]}.{strings[-1]}")
                    if op.name == "STOP":
                        break
                else:
                    break
            except Exception:  # a scan is best effort: the refusal itself already happened
                break
            if stream.tell() >= len(data):
                break
    return list(dict.fromkeys(found))


def _refusal(path: Path, fmt: str, exc: Exception) -> LoadError:
    names = [g for g in scan_globals(path, fmt) if not g.startswith(_SAFE_GLOBAL_PREFIXES)]
    m = re.search(r"GLOBAL ([\w.]+)", str(exc))
    if m and m.group(1) not in names:
        names.insert(0, m.group(1))
    shown = ", ".join(names) or "an unsupported global"
    return LoadError(f"Refused to load {path}: its pickle references {shown}",
                     expected="a plain state dict of tensors (weights_only=True)", got=shown,
                     did="Nothing from the file was executed; there is no unsafe fallback",
                     next_command=f"delete it and fetch the release file again: metro-assets fetch {_asset_hint(path)} --mirror BASE",
                     globals=names)


def read_state_dict(path: Union[str, Path], *, map_location: Union[str, torch.device] = "cpu", lean: bool = False,
                    skip: Callable[[str], bool] = lambda key: False) -> Tuple[Dict[str, torch.Tensor], str]:
    """Load a checkpoint's tensors safely.  Returns (state dict, "zip" | "legacy").

    Zip files are memory-mapped.  Legacy files are read tensor by tensor into
    their storages (``lean``), and tensors whose key satisfies ``skip`` are left
    unread: allocated but never touched, so they cost no resident memory.
    """
    path = Path(path)
    fmt = sniff_format(path)
    meta = str(map_location) == "meta"
    try:
        if fmt == "legacy" and (meta or lean):
            # the same safe torch.load, but storages are only allocated (untouched pages, no RSS);
            # the data is then read in place by _fill_legacy (meta: not at all)
            with torch.serialization.skip_data():
                obj = torch.load(path, map_location="cpu", weights_only=True)
            sd = _unwrap(obj, path)
            if meta:
                return {k: torch.empty_like(v, device="meta") for k, v in sd.items()}, fmt
            _fill_legacy(path, sd, skip=skip)
            return sd, fmt
        obj = torch.load(path, map_location=map_location, weights_only=True, mmap=(fmt == "zip" and not meta))
    except pickle.UnpicklingError as exc:
        if "Weights only load failed" in str(exc) or "GLOBAL" in str(exc):
            raise _refusal(path, fmt, exc) from None
        raise _corrupt(path, fmt, exc) from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, struct.error) as exc:
        raise _corrupt(path, fmt, exc) from None
    return _unwrap(obj, path), fmt


_STORAGE_DTYPES = {"FloatStorage": torch.float32, "DoubleStorage": torch.float64, "HalfStorage": torch.float16,
                   "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
                   "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
                   "BoolStorage": torch.bool}


class _LayoutUnpickler(pickle.Unpickler):
    """Reads a legacy checkpoint's structure only: every global becomes an inert marker.

    Runs after torch.load(weights_only=True) has accepted the same file, and
    executes nothing either way (only OrderedDict is a real class here).
    """

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("collections", "OrderedDict"):
            import collections

            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return lambda *args: ("tensor", args)
        if module == "torch" and name in _STORAGE_DTYPES:
            return ("storage-type", name)
        raise pickle.UnpicklingError(f"unexpected global {module}.{name}")

    def persistent_load(self, pid: Any) -> Any:
        return pid


def _legacy_layout(f) -> Tuple[Dict[str, Tuple[str, int]], Dict[str, Tuple[int, int]]]:
    """(root storage key and byte offset of each tensor, file offset and nbytes of each storage)."""
    for _ in range(3):  # magic number, protocol version, sys info
        pickle.load(f)
    result = _LayoutUnpickler(f).load()
    storage_keys = pickle.load(f)
    if isinstance(result, Mapping) and "state_dict" in result and isinstance(result["state_dict"], Mapping):
        result = result["state_dict"]
    tensors: Dict[str, Tuple[str, int]] = {}
    elsize: Dict[str, int] = {}
    for key, value in result.items():
        if not (isinstance(value, tuple) and value and value[0] == "tensor"):
            raise ValueError(f"{key} is not a tensor")
        pid = value[1][0]
        _, stype, root, _location, _numel, view = pid
        if view is not None:
            raise ValueError("storage views are not supported")
        size = torch.empty((), dtype=_STORAGE_DTYPES[stype[1]]).element_size()
        elsize[root] = size
        tensors[key] = (root, int(value[1][1]) * size)
    storages: Dict[str, Tuple[int, int]] = {}
    pos = f.tell()
    end = f.seek(0, 2)
    for root in storage_keys:
        f.seek(pos)
        header = f.read(8)
        if len(header) < 8:
            raise EOFError("file ends inside the storage table")
        numel = struct.unpack("<q", header)[0]
        nbytes = numel * elsize.get(root, 1)
        storages[root] = (pos + 8, nbytes)
        pos += 8 + nbytes
        if pos > end:
            raise EOFError(f"storage {root} runs past the end of the file ({pos} > {end} bytes)")
    return tensors, storages


def _fill_legacy(path: Path, sd: Dict[str, torch.Tensor], *, skip: Callable[[str], bool]) -> None:
    """Read each needed storage straight into the memory torch allocated for it (one copy, no more)."""
    try:
        with open(path, "rb") as f:
            tensors, storages = _legacy_layout(f)
            done = set()
            for key, t in list(sd.items()):
                if skip(key):
                    # never read: zeros of the right shape and dtype, one element of memory
                    sd[key] = torch.zeros((), dtype=t.dtype).expand(t.shape)
                    continue
                root, _ = tensors[key]
                if root in done:
                    continue
                offset, nbytes = storages[root]
                storage = t.untyped_storage()
                if storage.nbytes() != nbytes:
                    raise ValueError(f"storage of {key} holds {storage.nbytes()} bytes, file says {nbytes}")
                view = torch.empty(0, dtype=torch.uint8).set_(storage).numpy()
                f.seek(offset)
                if nbytes and f.readinto(memoryview(view)) != nbytes:
                    raise EOFError(f"file ends inside {key}")
                done.add(root)
    except (EOFError, ValueError, KeyError, TypeError, IndexError, struct.error, pickle.UnpicklingError) as exc:
        raise _corrupt(path, "legacy", exc) from None


def _corrupt(path: Path, fmt: str, exc: Exception) -> LoadError:
    return LoadError(f"{path} is truncated or corrupt ({fmt} serialization)", expected="a complete torch checkpoint",
                     got=f"{type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}",
                     did="An interrupted download or a full disk leaves such files",
                     next_command=f"metro-assets fetch {_asset_hint(path)} --mirror BASE (re-downloads it after verify fails)")


def _unwrap(obj: object, path: Optional[Path]) -> Dict[str, torch.Tensor]:
    if isinstance(obj, Mapping) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
        for wrapper in ("state_dict", "model", "module"):
            if isinstance(obj.get(wrapper), Mapping):
                obj = obj[wrapper]
                break
    if not isinstance(obj, Mapping):
        raise LoadError(f"{path} does not hold a state dict", expected="a mapping of names to tensors",
                        got=type(obj).__name__)
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise LoadError(f"{path} holds non-tensor entries", expected="only tensors", got=", ".join(map(str, bad[:3])))
    return dict(obj)


def strip_prefix(sd: Dict[str, torch.Tensor], prefix: str = "module.") -> Tuple[Dict[str, torch.Tensor], Optional[str]]:
    if sd and all(k.startswith(prefix) for k in sd):
        return {k[len(prefix):]: v for k, v in sd.items()}, prefix
    return sd, None


# --------------------------------------------------------------------------- inference of kind / arch

def infer_kind(sd: Mapping[str, torch.Tensor]) -> Optional[str]:
    if "upsampling2.weight" in sd:      # exists only in body checkpoints (spec section 11.5)
        return "body"
    if "cam_param_fc2.weight" in sd or "upsampling.weight" in sd:
        w = sd.get("upsampling.weight")
        if w is not None and tuple(w.shape) == (1723, 431):
            return "body"
        return "hand"
    if "conv1.weight" in sd and "final_layer.0.weight" in sd:
        return "hrnet"
    return None


def infer_arch(sd: Mapping[str, torch.Tensor], prefix: str = "backbone.") -> Optional[str]:
    w = sd.get(f"{prefix}transition1.0.0.weight")
    if w is None or w.dim() != 4:
        return None
    width = int(w.shape[0])
    for cfg in VARIANTS.values():
        if cfg.backbone.width == width:
            return cfg.arch
    return f"w{width}?"


def _compare(sd: Mapping[str, torch.Tensor], sig) -> Tuple[Tuple[str, ...], Tuple[str, ...], Tuple[KeyMismatch, ...]]:
    expected = {k: (s, d) for k, s, d in sig}
    missing = tuple(k for k, _, _ in sig if k not in sd)
    unexpected = tuple(k for k in sd if k not in expected)
    mismatched = tuple(
        KeyMismatch(k, _describe(expected[k][1], expected[k][0]), _describe(v.dtype, v.shape))
        for k, v in sd.items()
        if k in expected and (tuple(v.shape) != expected[k][0] or v.dtype != expected[k][1]))
    return missing, unexpected, mismatched


def _bytes(sd: Mapping[str, torch.Tensor]) -> int:
    return sum(v.numel() * v.element_size() for v in sd.values())


def _wrong_kind(path: Optional[Path], found: str, expected: str, arch: Optional[str]) -> LoadError:
    name = path.name if path else "the checkpoint"
    hint = ""
    if found == "body" and expected == "hand":
        hint = ("This is the 2021 download_models.sh typo (upstream issue #3) that saved metro_h36m_state_dict.bin "
                "under the hand name")
    return LoadError(f"{name} holds a {KIND_NAMES.get(found, found)} checkpoint, but it is used as the {expected} checkpoint",
                     expected=f"{expected} weights", got=f"{found} weights ({arch or '?'})",
                     did=hint or None, kind_found=found, kind_expected=expected,
                     next_command=f"delete {name} and fetch it again: metro-assets fetch {expected} --mirror BASE")


def check_state_dict(sd: Mapping[str, torch.Tensor], *, expect_kind: Optional[str] = None,
                     variant: Optional[str] = None, path: Optional[Path] = None, fmt: str = "in-memory",
                     stripped: Optional[str] = None, seconds: float = 0.0) -> LoadReport:
    """Infer kind/arch, compare against the spec key/shape list; raise on any drift."""
    kind = infer_kind(sd)
    prefix = "" if kind == "hrnet" else "backbone."
    arch = infer_arch(sd, prefix)
    if expect_kind and kind and kind != expect_kind:
        raise _wrong_kind(path, kind, expect_kind, arch)
    if kind is None:
        kind = expect_kind
    if kind is None:
        raise LoadError(f"{path or 'state dict'} is not a METRO or HRNet checkpoint",
                        expected="keys such as upsampling.weight, cam_param_fc2.weight or backbone.*",
                        got=", ".join(list(sd)[:3]) or "no keys")
    if kind == "hrnet":
        width = int(arch[1:]) if arch in ("w64", "w40") else 64
        sig = hrnet_signature(width)
        variant = f"hrnet-w{width}"
    else:
        if variant is None:
            cands = [c for c in VARIANTS.values() if c.kind == kind and c.arch == arch]
            variant = cands[0].name if cands else f"{kind}-w64"
        sig = expected_signature(variant)
    missing, unexpected, mismatched = _compare(sd, sig)
    report = LoadReport(str(path) if path else None, fmt, kind, arch, variant, len(sd), len(sig), _bytes(sd),
                        missing, unexpected, mismatched, stripped, seconds)
    if not report.ok:
        what = []
        if missing:
            what.append("missing keys")
        if unexpected:
            what.append("unexpected keys")
        if mismatched:
            what.append("wrong shapes")
        raise LoadError(f"{path.name if path else 'The state dict'} does not match the {variant} network: "
                        + " and ".join(what),
                        expected=f"exactly the {len(sig)} keys of the released {variant} state dict",
                        got=report.problems(),
                        did="Upstream loads with strict=False and would hide this",
                        next_command=f"metro-assets fetch {expect_kind or kind} --mirror BASE (or check that the file is a METRO release checkpoint)",
                        report=report.to_json())
    return report


# --------------------------------------------------------------------------- the loader

@dataclass(frozen=True)
class LoadedModel:
    model: torch.nn.Module
    config: MetroConfig
    report: LoadReport


def load_checkpoint(path: Union[str, Path], *, expect_kind: Optional[str] = None, variant: Optional[str] = None,
                    device: Union[str, torch.device] = "cpu", read_unused: Optional[bool] = None) -> LoadedModel:
    """Load a METRO checkpoint strictly into a fresh network on ``device`` (eval mode).

    ``read_unused`` (default: only when ``device`` is not the CPU): also read the
    23 weights the forward pass never uses; otherwise a legacy file leaves them
    unread (zeros, listed in ``report.unread``) to save a fifth of the memory.
    """
    path = Path(path)
    t0 = time.perf_counter()
    if read_unused is None:
        read_unused = torch.device(device).type != "cpu"
    skip = (lambda key: False) if read_unused else is_unused
    sd, fmt = read_state_dict(path, map_location="cpu", lean=True, skip=skip)
    unread = tuple(k for k in sd if skip(k)) if fmt == "legacy" else ()
    loaded = load_state_dict(sd, expect_kind=expect_kind, variant=variant, device=device, path=path, fmt=fmt, t0=t0)
    if unread:
        from dataclasses import replace

        loaded = LoadedModel(loaded.model, loaded.config, replace(loaded.report, unread=unread))
    return loaded


def load_state_dict(sd: Dict[str, torch.Tensor], *, expect_kind: Optional[str] = None, variant: Optional[str] = None,
                    device: Union[str, torch.device] = "cpu", path: Optional[Path] = None, fmt: str = "in-memory",
                    t0: Optional[float] = None) -> LoadedModel:
    from metro_assets.model.metro import build_model

    t0 = time.perf_counter() if t0 is None else t0
    sd, stripped = strip_prefix(sd)
    report = check_state_dict(sd, expect_kind=expect_kind, variant=variant, path=path, fmt=fmt, stripped=stripped)
    if report.kind == "hrnet":
        raise LoadError(f"{path} is an ImageNet HRNet checkpoint, not a METRO network",
                        expected="metro_{h36m,3dpw,hand}_state_dict.bin", got="HRNet backbone weights")
    cfg = get_config(report.variant)
    model = build_model(cfg, device="meta")
    result = model.load_state_dict(sd, strict=True, assign=True)   # tensors move in, no copy
    assert not result.missing_keys and not result.unexpected_keys
    del sd
    model.eval()
    dev = torch.device(device)
    if dev.type != "cpu":
        model.to(dev)
    report = _with_seconds(report, time.perf_counter() - t0)
    return LoadedModel(model, cfg, report)


def _with_seconds(report: LoadReport, seconds: float) -> LoadReport:
    from dataclasses import replace

    return replace(report, seconds=seconds)
